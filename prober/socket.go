package prober

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"syscall"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// Conn is one ICMP echo transport for one device and address family: a
// socket here, a fake network in tests (prober/probertest). The engine owns it.
type Conn interface {
	// Send writes one echo request.
	Send(dst netip.Addr, id, seq uint16, payload []byte) error
	// Recv blocks for the next echo reply; it returns ErrClosed once closed.
	Recv(buf []byte) (Reply, error)
	// EchoID is the ICMP id to put in requests and expect in replies; 0
	// means the kernel chooses and demultiplexes it (ping sockets).
	EchoID() uint16
	// Privileged says whether the transport is a raw socket (pro-bing's
	// PMTU probes then use one too).
	Privileged() bool
	Close() error
}

// Reply is one echo reply, stamped by the kernel when it arrived.
type Reply struct {
	Src     netip.Addr
	ID, Seq uint16
	Payload []byte
	At      time.Time
}

// ErrNoICMPSocket says what to grant when neither socket kind can be opened.
var ErrNoICMPSocket = errors.New("cannot open an ICMP socket: grant CAP_NET_RAW (systemd: AmbientCapabilities=CAP_NET_RAW) or allow unprivileged ping sockets (sysctl net.ipv4.ping_group_range=\"0 2147483647\")")

type sockConn struct {
	f       *os.File
	rc      syscall.RawConn
	v6      bool
	raw     bool
	id      uint16
	oob     []byte
	device  string
	ifindex int // of device when the socket was bound to it (0: unbound)
}

// openSocket opens an ICMP socket bound to device: raw when the process has
// CAP_NET_RAW, the unprivileged ping socket otherwise.
func openSocket(device string, v6 bool) (Conn, error) {
	family, proto := unix.AF_INET, unix.IPPROTO_ICMP
	if v6 {
		family, proto = unix.AF_INET6, unix.IPPROTO_ICMPV6
	}
	raw := true
	fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		raw = false
		fd, err = unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
			return nil, ErrNoICMPSocket
		}
	}
	if err != nil {
		return nil, fmt.Errorf("opening ICMP socket: %w", err)
	}
	fail := func(what string, err error) (Conn, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	// An empty device is an underlay target: the routing table picks the
	// interface, as it would for any other traffic.
	ifindex := 0
	if device != "" {
		if err := unix.SetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE, device); err != nil {
			if errors.Is(err, unix.ENODEV) {
				return fail(fmt.Sprintf("binding ICMP socket to device %q (no such device in this network namespace)", device), err)
			}
			return fail(fmt.Sprintf("binding ICMP socket to device %q", device), err)
		}
		// SO_BINDTODEVICE binds to the index: a device recreated under the
		// same name (wg-quick down/up) gets another, and the socket is dead.
		if ifindex, err = ifIndex(fd, device); err != nil {
			return fail(fmt.Sprintf("reading the index of device %q", device), err)
		}
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
		return fail("enabling kernel receive timestamps", err)
	}
	if raw {
		// Only echo replies reach this socket; everything else ICMP on the
		// device (the peer's own probes of us, errors) is filtered in the kernel.
		if v6 {
			var f unix.ICMPv6Filter
			for i := range f.Data {
				f.Data[i] = 0xffffffff
			}
			f.Data[ipv6.ICMPTypeEchoReply>>5] &^= 1 << (uint(ipv6.ICMPTypeEchoReply) & 31)
			_ = unix.SetsockoptICMPv6Filter(fd, unix.SOL_ICMPV6, unix.ICMPV6_FILTER, &f)
		} else {
			_ = unix.SetsockoptInt(fd, unix.SOL_RAW, 1 /* ICMP_FILTER */, ^(1 << 0 /* echo reply */))
		}
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20)
	f := os.NewFile(uintptr(fd), "icmp-"+device) // non-blocking: served by the runtime poller
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	c := &sockConn{f: f, rc: rc, v6: v6, raw: raw, oob: make([]byte, 128), device: device, ifindex: ifindex}
	if raw {
		var b [2]byte
		_, _ = rand.Read(b[:])
		c.id = binary.BigEndian.Uint16(b[:]) | 1 // never 0: 0 means "kernel chooses"
	}
	return c, nil
}

// ifIndex is a device's index by name (SIOCGIFINDEX: one ioctl, no dump).
func ifIndex(fd int, name string) (int, error) {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		return 0, err
	}
	return int(ifr.Uint32()), nil
}

// Stale says the device the socket is bound to is gone or was recreated.
func (c *sockConn) Stale() bool {
	if c.ifindex == 0 {
		return false
	}
	stale := false
	_ = c.rc.Control(func(fd uintptr) {
		idx, err := ifIndex(int(fd), c.device)
		stale = (err != nil && errors.Is(err, unix.ENODEV)) || (err == nil && idx != c.ifindex)
	})
	return stale
}

func (c *sockConn) EchoID() uint16   { return c.id }
func (c *sockConn) Privileged() bool { return c.raw }
func (c *sockConn) Close() error     { return c.f.Close() }

func (c *sockConn) Send(dst netip.Addr, id, seq uint16, payload []byte) error {
	var (
		typ icmp.Type
		sa  unix.Sockaddr
	)
	if c.v6 {
		typ, sa = ipv6.ICMPTypeEchoRequest, &unix.SockaddrInet6{Addr: dst.As16()}
	} else {
		typ, sa = ipv4.ICMPTypeEcho, &unix.SockaddrInet4{Addr: dst.As4()}
	}
	// IPv6: the kernel computes the checksum (and, for ping sockets, both
	// families' id and checksum).
	msg, err := (&icmp.Message{Type: typ, Body: &icmp.Echo{ID: int(id), Seq: int(seq), Data: payload}}).Marshal(nil)
	if err != nil {
		return err
	}
	var serr error
	err = c.rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), msg, 0, sa)
		return serr != unix.EAGAIN
	})
	if err != nil {
		return err
	}
	return serr
}

func (c *sockConn) Recv(buf []byte) (Reply, error) {
	for {
		var (
			n, oobn int
			from    unix.Sockaddr
			rerr    error
		)
		err := c.rc.Read(func(fd uintptr) bool {
			n, oobn, _, from, rerr = unix.Recvmsg(int(fd), buf, c.oob, 0)
			return rerr != unix.EAGAIN
		})
		if err != nil {
			return Reply{}, err
		}
		if rerr != nil {
			return Reply{}, rerr
		}
		r, ok := c.parse(buf[:n], from)
		if !ok {
			continue
		}
		r.At = rxTimestamp(c.oob[:oobn])
		return r, nil
	}
}

func (c *sockConn) parse(b []byte, from unix.Sockaddr) (Reply, bool) {
	var r Reply
	switch sa := from.(type) {
	case *unix.SockaddrInet4:
		r.Src = netip.AddrFrom4(sa.Addr)
	case *unix.SockaddrInet6:
		r.Src = netip.AddrFrom16(sa.Addr)
	default:
		return r, false
	}
	if c.raw && !c.v6 { // raw IPv4 sockets see the IP header
		if len(b) < 20 || len(b) < int(b[0]&0x0f)*4 {
			return r, false // truncated, or a header length beyond the packet
		}
		b = b[int(b[0]&0x0f)*4:]
	}
	want := byte(ipv4.ICMPTypeEchoReply)
	if c.v6 {
		want = byte(ipv6.ICMPTypeEchoReply)
	}
	if len(b) < 8 || b[0] != want || b[1] != 0 {
		return r, false
	}
	r.ID = binary.BigEndian.Uint16(b[4:6])
	r.Seq = binary.BigEndian.Uint16(b[6:8])
	r.Payload = b[8:]
	return r, true
}

// rxTimestamp extracts SCM_TIMESTAMPNS; without one it falls back to now.
func rxTimestamp(oob []byte) time.Time {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err == nil {
		for _, m := range msgs {
			if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS && len(m.Data) >= 16 {
				sec := int64(binary.NativeEndian.Uint64(m.Data[0:8]))
				nsec := int64(binary.NativeEndian.Uint64(m.Data[8:16]))
				return time.Unix(sec, nsec)
			}
		}
	}
	return time.Now()
}

package prober

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// Conn is one ICMP echo transport for one device and address family: a
// socket here, a fake network in tests (prober/probertest). The engine owns it.
type Conn interface {
	// Send writes one echo request. payload is the caller's buffer, reused
	// after Send returns: a transport that keeps it copies it.
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
	f   *os.File
	rc  syscall.RawConn
	v6  bool
	raw bool
	id  uint16
	rx  rxState
	tx  struct {
		mu sync.Mutex
		// fd sends, when it is not the receiving socket (-1): see sendSocket.
		fd  int
		msg []byte
		sa4 unix.RawSockaddrInet4
		sa6 unix.RawSockaddrInet6
	}
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
	c := &sockConn{f: f, rc: rc, v6: v6, raw: raw, device: device, ifindex: ifindex}
	c.rx.read = c.recvmmsg
	c.tx.fd = -1
	if raw {
		if c.tx.fd, err = sendSocket(family, proto, device); err != nil {
			f.Close()
			return nil, err
		}
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

func (c *sockConn) Close() error {
	c.tx.mu.Lock()
	if c.tx.fd >= 0 {
		unix.Close(c.tx.fd)
		c.tx.fd = -1
	}
	c.tx.mu.Unlock()
	return c.f.Close()
}

// sendSocket opens the raw socket a raw sockConn sends on, bound to the same
// device, that receives nothing (a filter drops every packet).
//
// Why not send on the receiving socket: that one is in the runtime's epoll
// set, edge-triggered for writing as well as reading, and every send frees
// its packet (on loopback inside sendto; through a tunnel when the device
// takes it), which raises a write-space event and wakes a thread out of
// epoll_wait, though nothing waits to write: at 1,000 loopback probes a
// second, 58 % of the agent's wake-ups (perf sched:sched_wakeup: sock_wfree
// -> ep_poll_callback). On loopback the reply, queued inside the same
// sendto, now wakes that thread instead; through a tunnel the reply comes
// later and the send's wake-up is saved. A raw socket sees every ICMP packet
// of its device, so the replies still reach the receiving socket. Ping
// sockets cannot do this (the kernel hands a reply to the socket whose echo
// id it carries: the one that sent), so they send on their one socket.
func sendSocket(family, proto int, device string) (int, error) {
	fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return -1, fmt.Errorf("opening the sending ICMP socket: %w", err)
	}
	drop := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: uint16(len(drop)), Filter: &drop[0]}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("filtering the sending ICMP socket's input: %w", err)
	}
	// What arrived before the filter was attached: read once, never again.
	var b [1]byte
	for {
		if _, _, err := unix.Recvfrom(fd, b[:], unix.MSG_DONTWAIT|unix.MSG_TRUNC); err != nil {
			break
		}
	}
	if device != "" {
		if err := unix.SetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE, device); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("binding the sending ICMP socket to device %q: %w", device, err)
		}
	}
	return fd, nil
}

func (c *sockConn) Send(dst netip.Addr, id, seq uint16, payload []byte) error {
	c.tx.mu.Lock()
	defer c.tx.mu.Unlock()
	typ := byte(ipv4.ICMPTypeEcho)
	if c.v6 {
		typ = byte(ipv6.ICMPTypeEchoRequest)
	}
	msg := append(c.tx.msg[:0], typ, 0, 0, 0, byte(id>>8), byte(id), byte(seq>>8), byte(seq))
	msg = append(msg, payload...)
	c.tx.msg = msg
	// IPv6: the kernel computes the checksum (and, for ping sockets, both
	// families' id and checksum).
	if !c.v6 {
		binary.BigEndian.PutUint16(msg[2:4], icmpChecksum(msg))
	}
	// The address and message live in the connection, and the system call
	// is made directly: unix.Sendto allocates the address on every send.
	var (
		sa    unsafe.Pointer
		salen uintptr
	)
	if c.v6 {
		c.tx.sa6 = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: dst.As16()}
		sa, salen = unsafe.Pointer(&c.tx.sa6), unix.SizeofSockaddrInet6
	} else {
		c.tx.sa4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: dst.As4()}
		sa, salen = unsafe.Pointer(&c.tx.sa4), unix.SizeofSockaddrInet4
	}
	if c.tx.fd < 0 { // a ping socket, or closed (the write then fails)
		var serr error
		err := c.rc.Write(func(fd uintptr) bool {
			serr = c.sendto(fd, sa, salen)
			return serr != unix.EAGAIN
		})
		if err != nil {
			return err
		}
		return serr
	}
	err := c.sendto(uintptr(c.tx.fd), sa, salen)
	if err == unix.EAGAIN {
		// The send buffer is full (a device not draining its queue): wait
		// for room, as a blocking send would, but not forever.
		pfd := []unix.PollFd{{Fd: int32(c.tx.fd), Events: unix.POLLOUT}}
		if _, perr := unix.Poll(pfd, int(sendWait/time.Millisecond)); perr == nil && pfd[0].Revents&unix.POLLOUT != 0 {
			err = c.sendto(uintptr(c.tx.fd), sa, salen)
		}
	}
	return err
}

// sendto writes c.tx.msg to the address at sa on fd; c.tx.mu is held.
// MSG_DONTWAIT: the call never sleeps, so it is made raw, keeping this
// goroutine's P (entersyscall let the runtime's monitor see a P held in a
// system call, on loopback ~50 µs for the whole echo, hand it off and start
// polling every 20 µs again). A method, not a closure: a closure over the
// message escaped, one allocation per probe.
func (c *sockConn) sendto(fd uintptr, sa unsafe.Pointer, salen uintptr) error {
	msg := c.tx.msg
	_, _, errno := unix.RawSyscall6(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&msg[0])), uintptr(len(msg)), unix.MSG_DONTWAIT, uintptr(sa), salen)
	if errno != 0 {
		return errno
	}
	return nil
}

// sendWait is how long a send waits for room in a full send buffer before
// it fails (and the probe with it).
const sendWait = time.Second

// icmpChecksum is the Internet checksum (RFC 1071) of an ICMP message whose
// checksum field is zero.
func icmpChecksum(b []byte) uint16 {
	var sum uint32
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum>>16 != 0 {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// Recv returns the next echo reply. Replies are read up to rxBatch at a
// time with one recvmmsg into slices of buf (the engine's 64 KB), so the
// replies to a burst of probes cost one wake-up and one system call, not one
// each; each is truncated to rxSlot bytes, more than the IP and ICMP headers
// and the payload header that identify it. (x/sys's Recvmsg also asked the
// kernel for the socket's protocol on every read, a second system call.)
func (c *sockConn) Recv(buf []byte) (Reply, error) {
	for {
		for c.rx.next < c.rx.n {
			i := c.rx.next
			c.rx.next++
			h := &c.rx.hdrs[i]
			n := min(int(h.Len), rxSlot)
			r, ok := c.parse(c.rx.bufs[i][:n], &c.rx.names[i])
			if !ok {
				continue
			}
			r.At = rxTimestamp(c.rx.oobs[i][:h.Hdr.Controllen])
			return r, nil
		}
		if err := c.readBatch(buf); err != nil {
			return Reply{}, err
		}
	}
}

// rxBatch replies are read at once, each into rxSlot bytes of the buffer.
const (
	rxBatch = 32
	rxSlot  = 2048
)

// rxState is the last batch read; guarded by the one receiving goroutine.
type rxState struct {
	hdrs  [rxBatch]unix.Mmsghdr
	iovs  [rxBatch]unix.Iovec
	names [rxBatch]unix.RawSockaddrAny
	oobs  [rxBatch][64]byte
	bufs  [rxBatch][]byte
	n     int
	next  int
	// One recvmmsg: slots in, n and err out. read is c.recvmmsg, made once
	// when the socket opens: a closure over these escaped to the RawConn,
	// one allocation per batch.
	slots int
	err   error
	read  func(fd uintptr) bool
}

func (c *sockConn) readBatch(buf []byte) error {
	slots := min(rxBatch, len(buf)/rxSlot)
	if slots == 0 {
		return fmt.Errorf("receive buffer of %d bytes: want at least %d", len(buf), rxSlot)
	}
	rx := &c.rx
	for i := range slots {
		rx.bufs[i] = buf[i*rxSlot : (i+1)*rxSlot]
		rx.iovs[i].Base = &rx.bufs[i][0]
		rx.iovs[i].SetLen(rxSlot)
		rx.hdrs[i] = unix.Mmsghdr{}
		h := &rx.hdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&rx.names[i]))
		h.Namelen = unix.SizeofSockaddrAny
		h.Iov = &rx.iovs[i]
		h.SetIovlen(1)
		h.Control = &rx.oobs[i][0]
		h.SetControllen(len(rx.oobs[i]))
	}
	rx.slots, rx.n, rx.next, rx.err = slots, 0, 0, nil
	if err := c.rc.Read(rx.read); err != nil {
		return err
	}
	return rx.err
}

// recvmmsg reads up to c.rx.slots replies into c.rx; MSG_DONTWAIT never
// sleeps, so the call is raw, as in sendto.
func (c *sockConn) recvmmsg(fd uintptr) bool {
	rx := &c.rx
	r, _, errno := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&rx.hdrs[0])), uintptr(rx.slots), unix.MSG_DONTWAIT, 0, 0)
	rx.n, rx.err = int(r), nil
	if errno != 0 {
		rx.n, rx.err = 0, errno
	}
	return rx.err != unix.EAGAIN
}

func (c *sockConn) parse(b []byte, from *unix.RawSockaddrAny) (Reply, bool) {
	var r Reply
	switch from.Addr.Family {
	case unix.AF_INET:
		r.Src = netip.AddrFrom4((*unix.RawSockaddrInet4)(unsafe.Pointer(from)).Addr)
	case unix.AF_INET6:
		r.Src = netip.AddrFrom16((*unix.RawSockaddrInet6)(unsafe.Pointer(from)).Addr)
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
// It walks the control messages in place (unix.ParseSocketControlMessage
// allocates a slice for every reply).
func rxTimestamp(oob []byte) time.Time {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(oob) {
			break
		}
		if h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_TIMESTAMPNS && l >= unix.SizeofCmsghdr+16 {
			d := oob[unix.SizeofCmsghdr:l]
			sec := int64(binary.NativeEndian.Uint64(d[0:8]))
			nsec := int64(binary.NativeEndian.Uint64(d[8:16]))
			return time.Unix(sec, nsec)
		}
		next := unix.CmsgSpace(l - unix.SizeofCmsghdr)
		if next > len(oob) {
			break
		}
		oob = oob[next:]
	}
	return time.Now()
}

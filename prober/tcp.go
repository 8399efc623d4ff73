package prober

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// tcpConn is the TCP liveness transport: each Send is one connect to
// dst:port from a socket bound to the device (SO_BINDTODEVICE), so it
// leaves through the tunnel whatever the routing table says. A handshake
// that completes, or a refusal (the far host's RST), proves the path
// carries TCP both ways: the connect time is the RTT. Anything else (a
// timeout, an ICMP error) is no reply, and the probe is lost when its
// timeout ends, as for ICMP. A connection that completes is reset at once
// (SO_LINGER 0), so probing leaves no TIME_WAIT behind.
type tcpConn struct {
	device  string
	ifindex int // of the device when opened; 0: no device
	port    uint16
	id      uint16
	timeout time.Duration
	replies chan Reply
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// tcpDialTimeout bounds one connect; the probe's own timeout (shorter,
// usually) already counts it lost, this only frees the socket.
const tcpDialTimeout = 30 * time.Second

func openTCP(device string, _ bool, port uint16) (Conn, error) {
	idx, err := ifindexOf(device)
	if err != nil {
		return nil, err
	}
	var b [2]byte
	_, _ = rand.Read(b[:])
	id := binary.BigEndian.Uint16(b[:]) | 1
	ctx, cancel := context.WithCancel(context.Background())
	return &tcpConn{device: device, ifindex: idx, port: port, id: id, timeout: tcpDialTimeout, replies: make(chan Reply, 64), ctx: ctx, cancel: cancel}, nil
}

// Send implements Conn: the connect runs on its own goroutine, and its
// reply (a completed or refused handshake) carries the probe's id, seq and
// payload back to the engine like an echo reply.
func (c *tcpConn) Send(dst netip.Addr, id, seq uint16, payload []byte) error {
	if c.ctx.Err() != nil {
		return ErrClosed
	}
	p := append([]byte(nil), payload...)
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		ok, at := c.connect(dst)
		if !ok {
			return
		}
		select {
		case c.replies <- Reply{Src: dst, ID: id, Seq: seq, Payload: p, At: at}:
		case <-c.ctx.Done():
		}
	}()
	return nil
}

func (c *tcpConn) connect(dst netip.Addr) (bool, time.Time) {
	d := net.Dialer{Timeout: c.timeout, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			if c.device != "" {
				serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, c.device)
			}
		})
		return errors.Join(err, serr)
	}}
	conn, err := d.DialContext(c.ctx, "tcp", netip.AddrPortFrom(dst, c.port).String())
	at := time.Now()
	switch {
	case err == nil:
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		_ = conn.Close()
		return true, at
	case errors.Is(err, unix.ECONNREFUSED):
		return true, at // the far host answered: the path works
	}
	return false, at
}

// ifindexOf is the device's index, ENODEV when it is not there (a TCP
// connect bound to it would only fail after its timeout, and look like a
// dead path); 0 for no device.
func ifindexOf(device string) (int, error) {
	if device == "" {
		return 0, nil
	}
	ifi, err := net.InterfaceByName(device)
	if err != nil {
		return 0, fmt.Errorf("device %s: %w", device, unix.ENODEV)
	}
	return ifi.Index, nil
}

// Stale implements the prober's staler, checked once a second: the device
// is gone or was recreated, so the engine makes its targets unknown and
// reopens, as for an ICMP socket. Sends do not look the device up.
func (c *tcpConn) Stale() bool {
	if c.ifindex == 0 {
		return false
	}
	idx, err := ifindexOf(c.device)
	return err != nil || idx != c.ifindex
}

// Recv implements Conn.
func (c *tcpConn) Recv([]byte) (Reply, error) {
	select {
	case r := <-c.replies:
		return r, nil
	case <-c.ctx.Done():
		return Reply{}, ErrClosed
	}
}

// EchoID implements Conn: the id the engine matches replies by.
func (c *tcpConn) EchoID() uint16 { return c.id }

// Privileged implements Conn: no raw socket.
func (c *tcpConn) Privileged() bool { return false }

// Close implements Conn: connects in flight are abandoned.
func (c *tcpConn) Close() error {
	c.cancel()
	c.wg.Wait()
	return nil
}

package lab

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// Pinger sends an ICMP echo every interval from a fixed source address in a
// namespace (a LAN address, so the flow is the one failover must keep) and
// records which were answered, for outages measured to the interval.
type Pinger struct {
	interval time.Duration
	conn     *icmp.PacketConn
	dst      *net.IPAddr
	id       uint16
	stop     chan struct{}
	done     sync.WaitGroup

	mu      sync.Mutex
	sent    []time.Time // by sequence number
	replied []bool
}

// StartPinger starts pinging dst from src (an address of ns) every interval.
func StartPinger(ns, src, dst string, interval time.Duration) (*Pinger, error) {
	p := &Pinger{interval: interval, dst: &net.IPAddr{IP: net.ParseIP(dst)}, stop: make(chan struct{})}
	var b [2]byte
	_, _ = rand.Read(b[:])
	p.id = binary.BigEndian.Uint16(b[:])
	err := InNetns(ns, func() (err error) {
		p.conn, err = icmp.ListenPacket("ip4:icmp", src)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("pinger in %s from %s: %w", ns, src, err)
	}
	p.done.Add(2)
	go p.send()
	go p.receive()
	return p, nil
}

func (p *Pinger) send() {
	defer p.done.Done()
	t := time.NewTicker(p.interval)
	defer t.Stop()
	for seq := 0; ; seq++ {
		msg, _ := (&icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: int(p.id), Seq: seq & 0xffff, Data: []byte("wgpulse-lab")}}).Marshal(nil)
		p.mu.Lock()
		p.sent = append(p.sent, time.Now())
		p.replied = append(p.replied, false)
		p.mu.Unlock()
		_, _ = p.conn.WriteTo(msg, p.dst)
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
	}
}

func (p *Pinger) receive() {
	defer p.done.Done()
	buf := make([]byte, 1500)
	for {
		n, from, err := p.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		m, err := icmp.ParseMessage(1, buf[:n])
		if err != nil || m.Type != ipv4.ICMPTypeEchoReply || from.String() != p.dst.String() {
			continue
		}
		e, ok := m.Body.(*icmp.Echo)
		if !ok || e.ID != int(p.id) {
			continue
		}
		p.mu.Lock()
		// Sequence numbers wrap at 65,536 (11 minutes at 10 ms): take the newest.
		for i := len(p.sent) - 1; i >= 0 && i >= len(p.sent)-70000; i-- {
			if i&0xffff == e.Seq {
				p.replied[i] = true
				break
			}
		}
		p.mu.Unlock()
	}
}

// Stop ends the pinger; replies still in flight get a second to arrive.
func (p *Pinger) Stop() {
	select {
	case <-p.stop:
		return
	default:
	}
	close(p.stop)
	time.Sleep(time.Second)
	p.conn.Close()
	p.done.Wait()
}

// Outage is a run of unanswered pings.
type Outage struct {
	Start time.Time     // send time of the first unanswered ping
	Lost  int           // pings in the run
	Took  time.Duration // Lost x interval
}

// Outages returns every run of unanswered pings sent between from and to
// (zero: unbounded), leaving out the last second (replies may be in flight).
func (p *Pinger) Outages(from, to time.Time) []Outage {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []Outage
	var cur *Outage
	cutoff := time.Now().Add(-time.Second)
	for i, at := range p.sent {
		if at.Before(from) || (!to.IsZero() && at.After(to)) || at.After(cutoff) {
			continue
		}
		if p.replied[i] {
			cur = nil
			continue
		}
		if cur == nil {
			out = append(out, Outage{Start: at})
			cur = &out[len(out)-1]
		}
		cur.Lost++
		cur.Took = time.Duration(cur.Lost) * p.interval
	}
	return out
}

// Longest is the longest outage between from and to (zero: unbounded).
func (p *Pinger) Longest(from, to time.Time) Outage {
	var best Outage
	for _, o := range p.Outages(from, to) {
		if o.Lost > best.Lost {
			best = o
		}
	}
	return best
}

// Counts returns pings sent and answered so far.
func (p *Pinger) Counts() (sent, answered int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.replied {
		if r {
			answered++
		}
	}
	return len(p.sent), answered
}

// TCPStream is one long-lived TCP connection between two namespaces that
// carries a numbered message every 10 ms and checks every echo: the session
// a failover must not break.
type TCPStream struct {
	ln, conn net.Conn
	lst      net.Listener
	stop     chan struct{}
	wg       sync.WaitGroup

	mu       sync.Mutex
	sent     int
	echoed   int
	err      error
	lastEcho time.Time
	maxStall time.Duration
}

// StartTCPStream listens on serverAddr (host:port, an address of serverNS)
// and connects from clientSrc (an address of clientNS).
func StartTCPStream(serverNS, serverAddr, clientNS, clientSrc string) (*TCPStream, error) {
	s := &TCPStream{stop: make(chan struct{})}
	err := InNetns(serverNS, func() (err error) { s.lst, err = net.Listen("tcp4", serverAddr); return err })
	if err != nil {
		return nil, fmt.Errorf("TCP server in %s: %w", serverNS, err)
	}
	s.wg.Add(1)
	go func() { // echo server
		defer s.wg.Done()
		c, err := s.lst.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.ln = c
		s.mu.Unlock()
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
	}()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(clientSrc)}, Timeout: 5 * time.Second}
	err = InNetns(clientNS, func() (err error) { s.conn, err = d.Dial("tcp4", serverAddr); return err })
	if err != nil {
		s.lst.Close()
		return nil, fmt.Errorf("TCP client in %s from %s: %w", clientNS, clientSrc, err)
	}
	s.lastEcho = time.Now()
	s.wg.Add(2)
	go s.write()
	go s.read()
	return s, nil
}

func (s *TCPStream) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.stop:
		return // closing
	default:
	}
	if s.err == nil {
		s.err = err
	}
}

func (s *TCPStream) write() {
	defer s.wg.Done()
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	var msg [8]byte
	for n := uint64(0); ; n++ {
		binary.BigEndian.PutUint64(msg[:], n)
		if _, err := s.conn.Write(msg[:]); err != nil {
			s.fail(fmt.Errorf("write: %w", err))
			return
		}
		s.mu.Lock()
		s.sent++
		s.mu.Unlock()
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
	}
}

func (s *TCPStream) read() {
	defer s.wg.Done()
	var msg [8]byte
	for want := uint64(0); ; want++ {
		if _, err := ioReadFull(s.conn, msg[:]); err != nil {
			s.fail(fmt.Errorf("read: %w", err))
			return
		}
		if got := binary.BigEndian.Uint64(msg[:]); got != want {
			s.fail(fmt.Errorf("echo %d, want %d: the stream lost or reordered data", got, want))
			return
		}
		now := time.Now()
		s.mu.Lock()
		s.echoed++
		s.maxStall = max(s.maxStall, now.Sub(s.lastEcho))
		s.lastEcho = now
		s.mu.Unlock()
	}
}

func ioReadFull(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := c.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Check reports the first error (a reset, lost data) and the longest gap
// between two echoes so far.
func (s *TCPStream) Check() (sent, echoed int, maxStall time.Duration, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sent, s.echoed, s.maxStall, s.err
}

// Stop closes the connection.
func (s *TCPStream) Stop() error {
	s.mu.Lock()
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	err := s.err
	ln := s.ln
	s.mu.Unlock()
	s.conn.Close()
	s.lst.Close()
	if ln != nil {
		ln.Close()
	}
	s.wg.Wait()
	return err
}

// TCPTransfer sends size bytes over a new TCP connection from clientSrc (an
// address of clientNS) to serverAddr (an address of serverNS) and returns how
// long until the server had them all, or an error after timeout (a stall).
func TCPTransfer(serverNS, serverAddr, clientNS, clientSrc string, size int, timeout time.Duration) (time.Duration, error) {
	var lst net.Listener
	if err := InNetns(serverNS, func() (err error) { lst, err = net.Listen("tcp4", serverAddr); return err }); err != nil {
		return 0, fmt.Errorf("TCP server in %s: %w", serverNS, err)
	}
	defer lst.Close()
	got := make(chan int, 1)
	go func() {
		c, err := lst.Accept()
		if err != nil {
			got <- 0
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(timeout))
		n, _ := io.Copy(io.Discard, c)
		if n == int64(size) {
			_, _ = c.Write([]byte{1}) // all here
		}
		got <- int(n)
	}()
	var conn net.Conn
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(clientSrc)}, Timeout: timeout}
	if err := InNetns(clientNS, func() (err error) { conn, err = d.Dial("tcp4", serverAddr); return err }); err != nil {
		return 0, fmt.Errorf("TCP client in %s: %w", clientNS, err)
	}
	defer conn.Close()
	start := time.Now()
	_ = conn.SetDeadline(start.Add(timeout))
	if _, err := conn.Write(make([]byte, size)); err != nil {
		return time.Since(start), fmt.Errorf("sending %d bytes: %w", size, err)
	}
	_ = conn.(*net.TCPConn).CloseWrite()
	var ack [1]byte
	if _, err := conn.Read(ack[:]); err != nil {
		return time.Since(start), fmt.Errorf("%d of %d bytes arrived within %s: %w", <-got, size, timeout, err)
	}
	return time.Since(start), nil
}

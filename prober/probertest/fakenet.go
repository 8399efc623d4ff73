// Package probertest is a fake of the prober's ICMP transport: a network
// whose every destination answers (or not) as a test says, after a delay, on
// the clock of a testing/synctest bubble. The prober's tests and the
// remediator's use it to drive the real prober with no sockets.
package probertest

import (
	"fmt"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/wgpulse/wgpulse/prober"
)

// Reply says what happens to one echo request.
type Reply struct {
	Drop  bool          // no reply
	Delay time.Duration // until the reply arrives
	Dups  int           // extra copies of the reply
	From  netip.Addr    // reply source if set (a spoofed or misrouted reply)
	// Seq, when SeqSet, replaces the reply's sequence number.
	Seq    uint16
	SeqSet bool
	// Err fails the send itself (the probe did not leave this host).
	Err error
}

// Behave decides the fate of the nth request (from 0) to dst via device.
type Behave func(device string, dst netip.Addr, n int) Reply

// Net is the fake network. Its zero value is not usable; call New.
type Net struct {
	mu      sync.Mutex
	behave  Behave
	sent    map[netip.Addr]int
	conns   []*conn
	openErr map[string]error
	gen     map[string]int // a device's incarnation: bumped when it is deleted
}

// New returns a network that answers as behave says.
func New(behave Behave) *Net {
	return &Net{behave: behave, sent: map[netip.Addr]int{}}
}

// SetBehave changes how the network answers from now on.
func (f *Net) SetBehave(b Behave) {
	f.mu.Lock()
	f.behave = b
	f.mu.Unlock()
}

// SetOpenError makes opening a transport on device fail (nil: succeed), as
// a missing device or missing privileges do.
func (f *Net) SetOpenError(device string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.openErr == nil {
		f.openErr = map[string]error{}
	}
	f.openErr[device] = err
}

// DeleteDevice deletes device as `ip link del` or a stopped wireguard-go
// does: transports bound to it fail every send with ENODEV from now on, and
// opening one fails until RecreateDevice.
func (f *Net) DeleteDevice(device string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.gen == nil {
		f.gen = map[string]int{}
	}
	f.gen[device]++
	if f.openErr == nil {
		f.openErr = map[string]error{}
	}
	f.openErr[device] = fmt.Errorf("binding ICMP socket to device %q (no such device in this network namespace): %w", device, syscall.ENODEV)
}

// RecreateDevice brings device back under the same name (a new ifindex):
// new transports work, the old ones stay dead.
func (f *Net) RecreateDevice(device string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.openErr, device)
}

// Open is the prober's Options.Open.
func (f *Net) Open(device string, v6 bool) (prober.Conn, error) {
	c := &conn{net: f, device: device, replies: make(chan prober.Reply, 1024), done: make(chan struct{})}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.openErr[device]; err != nil {
		return nil, err
	}
	c.gen = f.gen[device]
	f.conns = append(f.conns, c)
	return c, nil
}

// Sent returns how many echo requests went to a.
func (f *Net) Sent(a netip.Addr) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sent[a]
}

type conn struct {
	net     *Net
	device  string
	gen     int // the device's incarnation it is bound to
	replies chan prober.Reply
	done    chan struct{}
	once    sync.Once
}

func (c *conn) Send(dst netip.Addr, id, seq uint16, payload []byte) error {
	c.net.mu.Lock()
	if c.gen != c.net.gen[c.device] {
		c.net.mu.Unlock()
		return fmt.Errorf("sendto: %w", syscall.ENODEV) // the device it was bound to is gone
	}
	n := c.net.sent[dst]
	c.net.sent[dst]++
	behave := c.net.behave
	c.net.mu.Unlock()
	b := behave(c.device, dst, n)
	if b.Err != nil {
		return b.Err
	}
	if b.Drop {
		return nil
	}
	src := dst
	if b.From.IsValid() {
		src = b.From
	}
	if b.SeqSet {
		seq = b.Seq
	}
	p := append([]byte(nil), payload...)
	for range 1 + b.Dups {
		time.AfterFunc(b.Delay, func() {
			select {
			case c.replies <- prober.Reply{Src: src, ID: id, Seq: seq, Payload: p, At: time.Now()}:
			case <-c.done:
			}
		})
	}
	return nil
}

func (c *conn) Recv([]byte) (prober.Reply, error) {
	select {
	case r := <-c.replies:
		return r, nil
	case <-c.done:
		return prober.Reply{}, prober.ErrClosed
	}
}

func (c *conn) EchoID() uint16   { return 0x4242 }
func (c *conn) Privileged() bool { return true }
func (c *conn) Close() error     { c.once.Do(func() { close(c.done) }); return nil }

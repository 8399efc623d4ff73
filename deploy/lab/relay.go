package lab

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The relay sits on every underlay path between a site and the hub, in the
// lab's "wan" namespace. Towards the site it is the hub's endpoint; towards
// the hub it is a NAT: site datagrams leave from a mapped source port, and
// replies to that port go back to the site. Faults change while it runs.

const envRelayConfig = "WGPULSE_LAB_RELAY_CONFIG"

// RelayConfig is what the relay child reads at start.
type RelayConfig struct {
	Control string      `json:"control"` // unix socket for fault changes
	Paths   []RelayPath `json:"paths"`
}

// RelayPath is one underlay path.
type RelayPath struct {
	Name   string `json:"name"`   // tunnel name, e.g. dc1-primary
	Listen string `json:"listen"` // site-facing address:port (the site's endpoint for the hub)
	Out    string `json:"out"`    // hub-facing local IP the NAT mappings bind to
	Hub    string `json:"hub"`    // hub WireGuard address:port
}

// relayRequest and relayResponse are the control protocol, one JSON line each.
type relayRequest struct {
	Path   string  `json:"path,omitempty"`
	Faults *Faults `json:"faults,omitempty"` // nil = only read
	Rebind bool    `json:"rebind,omitempty"`
}

type relayResponse struct {
	Paths map[string]Faults `json:"paths"`
	Error string            `json:"error,omitempty"`
}

func runRelayChild() error {
	b, err := os.ReadFile(os.Getenv(envRelayConfig))
	if err != nil {
		return err
	}
	var cfg RelayConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return err
	}
	r, err := newRelay(cfg)
	if err != nil {
		return err
	}
	defer r.close()
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM, os.Interrupt)
	<-term
	return nil
}

type relay struct {
	paths   map[string]*relayPath
	control net.Listener
}

func newRelay(cfg RelayConfig) (*relay, error) {
	r := &relay{paths: map[string]*relayPath{}}
	for _, pc := range cfg.Paths {
		p, err := newRelayPath(pc)
		if err != nil {
			r.close()
			return nil, fmt.Errorf("path %s: %w", pc.Name, err)
		}
		r.paths[pc.Name] = p
	}
	_ = os.Remove(cfg.Control)
	l, err := net.Listen("unix", cfg.Control)
	if err != nil {
		r.close()
		return nil, err
	}
	r.control = l
	go r.serve()
	return r, nil
}

func (r *relay) close() {
	if r.control != nil {
		r.control.Close()
	}
	for _, p := range r.paths {
		p.close()
	}
}

func (r *relay) serve() {
	for {
		c, err := r.control.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			var req relayRequest
			if err := json.NewDecoder(bufio.NewReader(c)).Decode(&req); err != nil {
				_ = json.NewEncoder(c).Encode(relayResponse{Error: err.Error()})
				return
			}
			_ = json.NewEncoder(c).Encode(r.handle(req))
		}()
	}
}

func (r *relay) handle(req relayRequest) relayResponse {
	if req.Path != "" {
		p, ok := r.paths[req.Path]
		if !ok {
			return relayResponse{Error: fmt.Sprintf("unknown path %q", req.Path)}
		}
		if req.Faults != nil {
			p.setFaults(*req.Faults)
		}
		if req.Rebind {
			p.rebind()
		}
	}
	resp := relayResponse{Paths: map[string]Faults{}}
	for name, p := range r.paths {
		resp.Paths[name] = p.snapshot()
	}
	return resp
}

// relayPath is one site<->hub path: a site-facing socket and the current NAT
// mapping towards the hub.
type relayPath struct {
	name    string
	site    *net.UDPConn
	hub     *net.UDPAddr
	outIP   net.IP
	mu      sync.Mutex
	faults  Faults
	siteSrc *net.UDPAddr // where the site's WireGuard sends from
	mapping *natMapping
	old     []*natMapping // expired mappings: kept open, everything sent to them is dropped
	created int           // mappings made so far

	rebinds, dropped, forwarded atomic.Uint64
}

type natMapping struct {
	conn *net.UDPConn
	last atomic.Int64 // unix nanos of the last datagram either way
	dead atomic.Bool
}

func newRelayPath(pc RelayPath) (*relayPath, error) {
	la, err := net.ResolveUDPAddr("udp4", pc.Listen)
	if err != nil {
		return nil, err
	}
	hub, err := net.ResolveUDPAddr("udp4", pc.Hub)
	if err != nil {
		return nil, err
	}
	site, err := net.ListenUDP("udp4", la)
	if err != nil {
		return nil, err
	}
	p := &relayPath{name: pc.Name, site: site, hub: hub, outIP: net.ParseIP(pc.Out)}
	go p.fromSite()
	return p, nil
}

func (p *relayPath) close() {
	p.site.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mapping != nil {
		p.mapping.conn.Close()
	}
	for _, m := range p.old {
		m.conn.Close()
	}
}

func (p *relayPath) setFaults(f Faults) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults.Loss, p.faults.Delay, p.faults.Jitter = f.Loss, f.Delay, f.Jitter
	p.faults.MTU, p.faults.Down, p.faults.NATTimeout = f.MTU, f.Down, f.NATTimeout
}

func (p *relayPath) snapshot() Faults {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := p.faults
	f.Rebinds, f.Dropped, f.Forwarded = p.rebinds.Load(), p.dropped.Load(), p.forwarded.Load()
	if p.mapping != nil {
		f.Endpoint = p.mapping.conn.LocalAddr().String()
	}
	return f
}

// rebind expires the current mapping now: the next site datagram leaves from
// a new source port.
func (p *relayPath) rebind() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.retire()
}

func (p *relayPath) retire() {
	if p.mapping == nil {
		return
	}
	p.mapping.dead.Store(true)
	p.old = append(p.old, p.mapping)
	p.mapping = nil
	if len(p.old) > 8 { // keep a few black-holing old ports, not all of them
		p.old[0].conn.Close()
		p.old = p.old[1:]
	}
}

// expired reports whether a mapping is dead: retired, or idle past the NAT
// timeout (then it is retired now: an expired mapping drops inbound packets
// at once, not only when the site sends again).
func (p *relayPath) expired(m *natMapping, now time.Time) bool {
	if m.dead.Load() {
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if t := p.faults.NATTimeout; t > 0 && now.UnixNano()-m.last.Load() > int64(t) {
		if p.mapping == m {
			p.retire()
		} else {
			m.dead.Store(true)
		}
		return true
	}
	return false
}

// outbound returns the mapping for a site datagram, replacing an idle one
// past the NAT timeout as a real NAT does.
func (p *relayPath) outbound(now time.Time) (*natMapping, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if m := p.mapping; m != nil && p.faults.NATTimeout > 0 && now.UnixNano()-m.last.Load() > int64(p.faults.NATTimeout) {
		p.retire()
	}
	if p.mapping == nil {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: p.outIP})
		if err != nil {
			return nil, err
		}
		m := &natMapping{conn: c}
		m.last.Store(now.UnixNano())
		if p.created > 0 {
			p.rebinds.Add(1)
		}
		p.created++
		p.mapping = m
		go p.fromHub(m)
	}
	return p.mapping, nil
}

func (p *relayPath) fromSite() {
	buf := make([]byte, 65535)
	for {
		n, src, err := p.site.ReadFromUDP(buf)
		if err != nil {
			return
		}
		now := time.Now()
		p.mu.Lock()
		p.siteSrc = src
		p.mu.Unlock()
		m, err := p.outbound(now)
		if err != nil {
			p.dropped.Add(1)
			continue
		}
		m.last.Store(now.UnixNano())
		pkt := append([]byte(nil), buf[:n]...)
		p.impair(n, func() { _, _ = m.conn.WriteToUDP(pkt, p.hub) })
	}
}

func (p *relayPath) fromHub(m *natMapping) {
	buf := make([]byte, 65535)
	for {
		n, _, err := m.conn.ReadFromUDP(buf)
		if err != nil {
			return
		}
		now := time.Now()
		if p.expired(m, now) { // sent to an expired mapping: a real NAT drops it
			p.dropped.Add(1)
			continue
		}
		m.last.Store(now.UnixNano())
		p.mu.Lock()
		dst := p.siteSrc
		p.mu.Unlock()
		pkt := append([]byte(nil), buf[:n]...)
		p.impair(n, func() { _, _ = p.site.WriteToUDP(pkt, dst) })
	}
}

// impair applies the path's faults to one datagram of payload size n in one
// direction, then sends it (now or later) or drops it.
func (p *relayPath) impair(n int, send func()) {
	p.mu.Lock()
	f := p.faults
	p.mu.Unlock()
	const ipv4UDP = 28
	switch {
	case f.Down, f.MTU > 0 && n+ipv4UDP > f.MTU:
		p.dropped.Add(1)
		return
	case f.Loss > 0 && rand.Float64() < 1-math.Sqrt(1-f.Loss/100):
		p.dropped.Add(1)
		return
	}
	p.forwarded.Add(1)
	d := time.Duration(f.Delay) / 2
	if f.Jitter > 0 {
		d += time.Duration((rand.Float64() - 0.5) * float64(f.Jitter))
	}
	if d <= 0 {
		send()
		return
	}
	time.AfterFunc(d, send)
}

// RelayControl asks the relay at sock to change path's faults (nil = only
// read) and returns every path's current faults.
func RelayControl(sock, path string, f *Faults, rebind bool) (map[string]Faults, error) {
	c, err := net.DialTimeout("unix", sock, 3*time.Second)
	if err != nil {
		return nil, fmt.Errorf("relay control socket %s: %w (is the lab up? try wgpulse-lab status)", sock, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := json.NewEncoder(c).Encode(relayRequest{Path: path, Faults: f, Rebind: rebind}); err != nil {
		return nil, err
	}
	var resp relayResponse
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		return nil, err
	}
	if resp.Error != "" {
		return nil, errors.New(resp.Error)
	}
	return resp.Paths, nil
}

package reresolve

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// Answer is one resolution of a hostname: its addresses in the order the
// resolver prefers them (RFC 6724), and how long the answer may be kept.
type Answer struct {
	Addrs []netip.Addr
	// TTL is the lowest TTL of the answer's records; 0 when unknown (an
	// /etc/hosts entry, a resolver that did not say).
	TTL time.Duration
}

// Resolver resolves a hostname to its A and AAAA addresses. System is the
// real one; tests use a fake.
type Resolver interface {
	Resolve(ctx context.Context, host string) (Answer, error)
}

// System is the system resolver as Go reads it (/etc/resolv.conf with its
// search list and options, /etc/hosts, nsswitch's hosts order), which also
// reads the TTL of the DNS answers it receives: a resolver that follows
// /etc/resolv.conf the way glibc's does, not one of wgpulse's own making.
type System struct {
	// Server, when set, replaces every nameserver of resolv.conf (host:port;
	// tests run a DNS server on loopback).
	Server string
}

// Resolve implements Resolver.
func (s System) Resolve(ctx context.Context, host string) (Answer, error) {
	rec := &ttlRecorder{}
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		if s.Server != "" {
			addr = s.Server
		}
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if pc, ok := c.(net.PacketConn); ok {
			return &ttlPacketConn{Conn: c, PacketConn: pc, rec: rec}, nil
		}
		return &ttlStreamConn{Conn: c, rec: rec}, nil
	}}
	addrs, err := r.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return Answer{}, err
	}
	out := Answer{TTL: rec.ttl()}
	for _, a := range addrs {
		out.Addrs = append(out.Addrs, a.Unmap())
	}
	return out, nil
}

// ttlRecorder keeps the lowest TTL of the A, AAAA and CNAME records in the
// DNS responses of one lookup (the A and AAAA queries run in parallel).
type ttlRecorder struct {
	mu  sync.Mutex
	min uint32
	set bool
}

func (r *ttlRecorder) ttl() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.set {
		return 0
	}
	return time.Duration(r.min) * time.Second
}

// observe reads one DNS message; what it cannot parse it ignores (the
// resolver reports the error).
func (r *ttlRecorder) observe(msg []byte) {
	var p dnsmessage.Parser
	if _, err := p.Start(msg); err != nil {
		return
	}
	if err := p.SkipAllQuestions(); err != nil {
		return
	}
	for {
		h, err := p.AnswerHeader()
		if err != nil {
			return // dnsmessage.ErrSectionDone, or a malformed answer
		}
		if err := p.SkipAnswer(); err != nil {
			return
		}
		switch h.Type {
		case dnsmessage.TypeA, dnsmessage.TypeAAAA, dnsmessage.TypeCNAME:
			r.mu.Lock()
			if !r.set || h.TTL < r.min {
				r.min, r.set = h.TTL, true
			}
			r.mu.Unlock()
		}
	}
}

// ttlPacketConn is a UDP connection to a nameserver whose responses the
// recorder reads (one message per datagram). It stays a net.PacketConn, so
// the resolver speaks UDP over it.
type ttlPacketConn struct {
	net.Conn
	net.PacketConn
	rec *ttlRecorder
}

func (c *ttlPacketConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.rec.observe(b[:n])
	}
	return n, err
}

// The methods both embedded interfaces have go to the connection.
func (c *ttlPacketConn) Close() error                       { return c.Conn.Close() }
func (c *ttlPacketConn) LocalAddr() net.Addr                { return c.Conn.LocalAddr() }
func (c *ttlPacketConn) SetDeadline(t time.Time) error      { return c.Conn.SetDeadline(t) }
func (c *ttlPacketConn) SetReadDeadline(t time.Time) error  { return c.Conn.SetReadDeadline(t) }
func (c *ttlPacketConn) SetWriteDeadline(t time.Time) error { return c.Conn.SetWriteDeadline(t) }

// ttlStreamConn is a TCP connection to a nameserver (a truncated UDP
// answer): messages come length-prefixed, in as many reads as they take.
type ttlStreamConn struct {
	net.Conn
	rec *ttlRecorder
	buf []byte
}

func (c *ttlStreamConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.buf = append(c.buf, b[:n]...)
	for len(c.buf) >= 2 {
		l := int(c.buf[0])<<8 | int(c.buf[1])
		if len(c.buf) < 2+l {
			break
		}
		c.rec.observe(c.buf[2 : 2+l])
		c.buf = c.buf[2+l:]
	}
	return n, err
}

// lookupError is the bounded kind of a failed lookup (the metric's label
// is result="error"; the log line says which).
func lookupError(err error) string {
	var de *net.DNSError
	switch {
	case errors.As(err, &de) && de.IsNotFound:
		return "no such host"
	case errors.As(err, &de) && de.IsTimeout, errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	return "lookup failed"
}

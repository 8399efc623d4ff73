package reresolve

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// dnsServer answers A and AAAA queries on loopback over UDP and TCP: the
// transport System reads TTLs from. truncate makes every UDP answer
// truncated, so the resolver retries over TCP.
type dnsServer struct {
	addr     string
	records  map[string][]dnsmessage.Resource // by lower-case FQDN
	truncate bool
}

func startDNS(t *testing.T, s *dnsServer) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	s.addr = pc.LocalAddr().String()
	t.Cleanup(func() { pc.Close(); ln.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if out := s.answer(buf[:n], s.truncate); out != nil {
				_, _ = pc.WriteTo(out, from)
			}
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var l [2]byte
				for {
					if _, err := readFull(c, l[:]); err != nil {
						return
					}
					q := make([]byte, binary.BigEndian.Uint16(l[:]))
					if _, err := readFull(c, q); err != nil {
						return
					}
					out := s.answer(q, false)
					msg := binary.BigEndian.AppendUint16(nil, uint16(len(out)))
					// In two writes, so a read may end inside the message.
					_, _ = c.Write(append(msg, out[:3]...))
					time.Sleep(time.Millisecond)
					_, _ = c.Write(out[3:])
				}
			}()
		}
	}()
}

func readFull(c net.Conn, b []byte) (int, error) {
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

func (s *dnsServer) answer(q []byte, truncate bool) []byte {
	var m dnsmessage.Message
	if err := m.Unpack(q); err != nil || len(m.Questions) != 1 {
		return nil
	}
	qq := m.Questions[0]
	resp := dnsmessage.Message{Header: dnsmessage.Header{ID: m.ID, Response: true, Authoritative: true, RecursionDesired: m.RecursionDesired},
		Questions: m.Questions}
	rrs, ok := s.records[qq.Name.String()]
	switch {
	case !ok:
		resp.RCode = dnsmessage.RCodeNameError
	case truncate:
		resp.Truncated = true
	default:
		for _, rr := range rrs {
			if rr.Header.Type == qq.Type || rr.Header.Type == dnsmessage.TypeCNAME {
				resp.Answers = append(resp.Answers, rr)
			}
		}
	}
	out, err := resp.Pack()
	if err != nil {
		return nil
	}
	return out
}

func a(name string, ttl uint32, addr string) dnsmessage.Resource {
	ip := netip.MustParseAddr(addr)
	h := dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName(name), Class: dnsmessage.ClassINET, TTL: ttl}
	if ip.Is4() {
		h.Type = dnsmessage.TypeA
		return dnsmessage.Resource{Header: h, Body: &dnsmessage.AResource{A: ip.As4()}}
	}
	h.Type = dnsmessage.TypeAAAA
	return dnsmessage.Resource{Header: h, Body: &dnsmessage.AAAAResource{AAAA: ip.As16()}}
}

// The system resolver's answer with the lowest TTL of its records, over
// UDP and over TCP after a truncated answer; a missing name is NXDOMAIN.
func TestSystemResolverReadsTTL(t *testing.T) {
	for _, truncate := range []bool{false, true} {
		s := &dnsServer{truncate: truncate, records: map[string][]dnsmessage.Resource{
			"hub.lab.test.": {a("hub.lab.test.", 30, "198.51.100.7"), a("hub.lab.test.", 20, "2001:db8::7")},
		}}
		startDNS(t, s)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ans, err := System{Server: s.addr}.Resolve(ctx, "hub.lab.test")
		cancel()
		if err != nil {
			t.Fatalf("truncate=%v: %v", truncate, err)
		}
		got := slices.Clone(ans.Addrs)
		slices.SortFunc(got, func(x, y netip.Addr) int { return x.Compare(y) })
		want := []netip.Addr{netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("2001:db8::7")}
		if !slices.Equal(got, want) || ans.TTL != 20*time.Second {
			t.Errorf("truncate=%v: answer %v TTL %s, want %v TTL 20s", truncate, ans.Addrs, ans.TTL, want)
		}
		ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
		_, err = System{Server: s.addr}.Resolve(ctx, "nowhere.lab.test")
		cancel()
		var de *net.DNSError
		if !errors.As(err, &de) || !de.IsNotFound || lookupError(err) != "no such host" {
			t.Errorf("truncate=%v: missing name: %v, want a not-found DNS error", truncate, err)
		}
	}
}

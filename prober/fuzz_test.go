package prober

import (
	"encoding/binary"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Echo replies come from any host that can reach the node: a truncated,
// spoofed or foreign packet must never crash the receiver, and what parse
// accepts is an echo reply whose id and seq are the packet's own bytes.
func FuzzParseEchoReply(f *testing.F) {
	reply := func(typ byte, id, seq uint16, payload ...byte) []byte {
		b := []byte{typ, 0, 0, 0, 0, 0, 0, 0}
		binary.BigEndian.PutUint16(b[4:], id)
		binary.BigEndian.PutUint16(b[6:], seq)
		return append(b, payload...)
	}
	ip4 := func(body []byte) []byte { // a 20-byte IPv4 header, then body
		return append([]byte{0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1}, body...)
	}
	f.Add(ip4(reply(0, 0x4243, 7, make([]byte, 12)...)), byte(0)) // raw IPv4 echo reply
	f.Add(reply(129, 0x4243, 7, make([]byte, 12)...), byte(1))    // raw IPv6 echo reply
	f.Add(reply(0, 0, 9, 1, 2, 3), byte(2))                       // ping socket, IPv4
	f.Add(ip4(reply(8, 1, 1)), byte(0))                           // an echo request, not a reply
	f.Add([]byte{0x4f, 0, 0}, byte(0))                            // truncated, header length 60
	f.Add(ip4([]byte{0, 0, 0}), byte(0))                          // truncated ICMP
	f.Add(append([]byte{0x46}, make([]byte, 30)...), byte(0))     // IP options
	f.Fuzz(func(t *testing.T, b []byte, kind byte) {
		c := &sockConn{raw: kind%3 != 2, v6: kind%3 == 1}
		var from unix.RawSockaddrAny
		from.Addr.Family = unix.AF_INET
		if c.v6 {
			from.Addr.Family = unix.AF_INET6
		}
		r, ok := c.parse(b, &from)
		if !ok {
			return
		}
		icmp := b
		if c.raw && !c.v6 {
			icmp = b[int(b[0]&0x0f)*4:]
		}
		if len(icmp) < 8 || r.ID != binary.BigEndian.Uint16(icmp[4:6]) || r.Seq != binary.BigEndian.Uint16(icmp[6:8]) || len(r.Payload) != len(icmp)-8 {
			t.Fatalf("parse(%x) = %+v: id, seq or payload not the packet's", b, r)
		}
		if want := map[bool]byte{false: 0, true: 129}[c.v6]; icmp[0] != want || icmp[1] != 0 {
			t.Fatalf("parse accepted ICMP type %d code %d as an echo reply", icmp[0], icmp[1])
		}
	})
}

// TestRxTimestamp: the kernel's receive time is read from the control
// messages in place, past another message before it; without one, now.
func TestRxTimestamp(t *testing.T) {
	cmsg := func(level, typ int32, data []byte) []byte {
		b := make([]byte, unix.CmsgSpace(len(data)))
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
		h.Level, h.Type = level, typ
		h.SetLen(unix.CmsgLen(len(data)))
		copy(b[unix.CmsgLen(0):], data)
		return b
	}
	ts := make([]byte, 16)
	binary.NativeEndian.PutUint64(ts[0:8], 1700000000)
	binary.NativeEndian.PutUint64(ts[8:16], 123456789)
	oob := append(cmsg(unix.SOL_IP, unix.IP_TTL, []byte{64, 0, 0, 0}), cmsg(unix.SOL_SOCKET, unix.SCM_TIMESTAMPNS, ts)...)
	if got, want := rxTimestamp(oob), time.Unix(1700000000, 123456789); !got.Equal(want) {
		t.Errorf("rxTimestamp = %v, want %v", got, want)
	}
	before := time.Now()
	if got := rxTimestamp(oob[:unix.CmsgSpace(4)]); got.Before(before) {
		t.Errorf("without a timestamp: %v, want now", got)
	}
	if got := rxTimestamp(oob[:len(oob)-3]); got.Before(before) { // truncated: not read past the end
		t.Errorf("truncated: %v, want now", got)
	}
}

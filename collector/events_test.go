package collector_test

import (
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/wgpulse/wgpulse/collector"
)

// Every kind of connection event between two snapshots, with its fields;
// the first snapshot and unchanged peers give none.
func TestEventsBetweenSnapshots(t *testing.T) {
	t1 := time.Unix(1_700_000_000, 0)
	t2 := t1.Add(5 * time.Second)
	ep := netip.MustParseAddrPort
	pfx := func(s ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, p := range s {
			out = append(out, netip.MustParsePrefix(p))
		}
		return out
	}
	quiet := collector.Peer{PublicKey: "quiet", Endpoint: ep("192.0.2.9:51820"), Handshake: collector.HandshakeFresh, AllowedIPs: pfx("10.9.0.0/16")}
	prev := &collector.Snapshot{Time: t1, Devices: []collector.Device{{Name: "wg0", PublicKey: "dev-old", Peers: []collector.Peer{
		quiet,
		{PublicKey: "gone", Name: "old-site"},
		{PublicKey: "new-hs", Handshake: collector.HandshakeNever},
		{PublicKey: "lost", Name: "dc1", Handshake: collector.HandshakeFresh, LastHandshake: t1.Add(-179 * time.Second)},
		{PublicKey: "back", Handshake: collector.HandshakeStale, LastHandshake: t1.Add(-10 * time.Minute)},
		{PublicKey: "nat", Endpoint: ep("198.51.100.1:40000"), Handshake: collector.HandshakeFresh, AllowedIPs: pfx("10.1.0.0/16")},
	}}, {Name: "wg1", Stale: true}}}
	cur := &collector.Snapshot{Time: t2, Devices: []collector.Device{{Name: "wg0", PublicKey: "dev-new", Peers: []collector.Peer{
		quiet,
		{PublicKey: "new-hs", Handshake: collector.HandshakeFresh, Endpoint: ep("192.0.2.2:51820")},
		{PublicKey: "lost", Name: "dc1", Handshake: collector.HandshakeStale, LastHandshake: t1.Add(-179 * time.Second)},
		{PublicKey: "back", Handshake: collector.HandshakeFresh, LastHandshake: t2},
		{PublicKey: "nat", Endpoint: ep("198.51.100.1:40001"), Handshake: collector.HandshakeFresh, AllowedIPs: pfx("10.1.0.0/16", "10.2.0.0/16")},
		{PublicKey: "added", Name: "dc9", Endpoint: ep("192.0.2.3:51820"), AllowedIPs: pfx("10.3.0.0/16")},
		{PublicKey: "added-up", Endpoint: ep("192.0.2.4:51820"), Handshake: collector.HandshakeFresh}, // and handshaked within the poll
	}}, {Name: "wg2", PublicKey: "first-seen"}}}

	if evs := collector.Events(nil, cur); len(evs) != 0 {
		t.Errorf("the first snapshot is the baseline: %v", evs)
	}
	var got []string
	for _, e := range collector.Events(prev, cur) {
		if !e.Time.Equal(t2) {
			t.Errorf("%s at %v, want the poll's time", e.Kind, e.Time)
		}
		var b strings.Builder
		h := slog.NewTextHandler(&b, &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == "time" || a.Key == "level" || a.Key == "msg" {
				return slog.Attr{}
			}
			return a
		}})
		slog.New(h).LogAttrs(t.Context(), slog.LevelInfo, "", e.Attrs()...)
		got = append(got, strings.TrimSpace(b.String()))
	}
	want := []string{
		"event=device_key_changed device=wg0 old_public_key=dev-old new_public_key=dev-new",
		"event=handshake_established device=wg0 public_key=new-hs endpoint=192.0.2.2:51820",
		"event=handshake_lost device=wg0 public_key=lost name=dc1 last_handshake=" + t1.Add(-179*time.Second).UTC().Format("2006-01-02T15:04:05.000Z07:00"),
		"event=handshake_regained device=wg0 public_key=back last_handshake=" + t1.Add(-10*time.Minute).UTC().Format("2006-01-02T15:04:05.000Z07:00"),
		"event=endpoint_changed device=wg0 public_key=nat old=198.51.100.1:40000 new=198.51.100.1:40001",
		"event=allowed_ips_changed device=wg0 public_key=nat old=10.1.0.0/16 new=10.1.0.0/16,10.2.0.0/16",
		"event=peer_added device=wg0 public_key=added name=dc9 endpoint=192.0.2.3:51820 new=10.3.0.0/16",
		"event=peer_added device=wg0 public_key=added-up endpoint=192.0.2.4:51820",
		"event=handshake_established device=wg0 public_key=added-up endpoint=192.0.2.4:51820",
		"event=peer_removed device=wg0 public_key=gone name=old-site",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

package diagnose_test

import (
	"os"
	"testing"

	"github.com/wgpulse/wgpulse/collector/diagnose"
)

// `nft -j list ruleset` comes from whatever nft version and rules a node
// has: any JSON must parse or fail cleanly, and evaluating it always ends
// (jumps that loop included) with a verdict that names where it dropped.
func FuzzNftRuleset(f *testing.F) {
	if b, err := os.ReadFile("testdata/ruleset.json"); err == nil {
		f.Add(b, uint16(51820), false)
	}
	f.Add([]byte(`{"nftables":[{"chain":{"family":"inet","table":"f","name":"in","type":"filter","hook":"input","prio":0,"policy":"drop"}}]}`), uint16(51820), false)
	f.Add([]byte(`{"nftables":[{"chain":{"family":"inet","table":"f","name":"in","hook":"input","prio":0}},{"chain":{"family":"inet","table":"f","name":"a"}},`+
		`{"rule":{"family":"inet","table":"f","chain":"in","expr":[{"jump":{"target":"a"}}]}},{"rule":{"family":"inet","table":"f","chain":"a","expr":[{"jump":{"target":"a"}}]}}]}`), uint16(1), true)
	f.Add([]byte(`{"nftables":[{"rule":{"family":"ip","table":"t","chain":"c","expr":[{"match":{"op":"==","left":{"payload":{"protocol":"udp","field":"dport"}},"right":{"set":[51820,{"range":[1,2]}]}}},{"drop":null}]}}]}`), uint16(51820), false)
	f.Add([]byte(`{"nftables":[{"rule":{"expr":[{"match":{"right":{"range":["a",{}]}}}]}}]}`), uint16(0), true)
	f.Add([]byte(`[]`), uint16(0), false)
	f.Fuzz(func(t *testing.T, b []byte, port uint16, v6 bool) {
		rs, err := diagnose.ParseRuleset(b)
		if err != nil {
			return
		}
		v := rs.UDPInput(int(port), v6)
		if v.Drop && v.Chain == "" {
			t.Fatalf("a drop that names no chain: %+v", v)
		}
	})
}

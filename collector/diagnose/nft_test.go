package diagnose_test

import (
	"os"
	"strings"
	"testing"

	"github.com/wgpulse/wgpulse/collector/diagnose"
)

// testdata/ruleset.json is real `nft -j list ruleset` output (nftables
// 1.0.6) of this ruleset:
//
//	table inet filter: chain input (hook input, priority 0, policy drop):
//	  ct state established,related accept; iifname lo accept; iifname "eth9" accept
//	  udp dport {51820, 51821} accept; udp dport 52000-52100 counter accept
//	  jump wg (chain wg: udp dport 51900 drop; return); meta l4proto udp th dport 51901 accept
//	table ip legacy: chain input (hook input, priority -10, policy accept):
//	  udp dport 51950 reject; ip saddr 192.0.2.0/24 udp dport 51960 drop
func TestUDPInputThroughARealRuleset(t *testing.T) {
	b, err := os.ReadFile("testdata/ruleset.json")
	if err != nil {
		t.Fatal(err)
	}
	rs, err := diagnose.ParseRuleset(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		port   int
		v6     bool
		drop   bool
		unless bool   // an iifname "eth9" accept might take it first
		where  string // part of Where
	}{
		{port: 51820},
		{port: 51821, v6: true},
		{port: 52050},
		{port: 51901},
		{port: 51822, drop: true, unless: true, where: "policy drop of chain inet filter input"},
		{port: 51822, v6: true, drop: true, unless: true, where: "policy drop"},
		{port: 51900, drop: true, unless: true, where: "in chain inet filter wg"},
		// The ip table runs first (priority -10) and has no accept before
		// its reject; it does not see IPv6.
		{port: 51950, drop: true, where: "in chain ip legacy input"},
		{port: 51950, v6: true, drop: true, unless: true, where: "policy drop of chain inet filter input"},
	} {
		v := rs.UDPInput(tc.port, tc.v6)
		if v.Drop != tc.drop || v.Unless != tc.unless || !strings.Contains(v.Where, tc.where) {
			t.Errorf("port %d v6=%v: %+v, want drop=%v unless=%v where ~ %q", tc.port, tc.v6, v, tc.drop, tc.unless, tc.where)
		}
		if tc.unless && !strings.Contains(v.UnlessWhere, "inet filter input") {
			t.Errorf("port %d: unless at %q, want the iifname rule", tc.port, v.UnlessWhere)
		}
	}
}

// No ruleset, or one without input hooks, accepts everything.
func TestUDPInputEmptyRuleset(t *testing.T) {
	rs, err := diagnose.ParseRuleset([]byte(`{"nftables": [{"metainfo": {"version": "1.0.6"}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if v := rs.UDPInput(51820, false); v.Drop {
		t.Errorf("empty ruleset: %+v", v)
	}
	if _, err := diagnose.ParseRuleset([]byte(`not json`)); err == nil {
		t.Error("garbage parsed")
	}
}

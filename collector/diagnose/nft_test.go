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

// A gateway's forward hook: policy drop, established traffic and the LAN
// into the tunnel accepted. New packets from the tunnel are dropped for
// certain; those to it only unless the LAN rule (an interface the check
// cannot know for a packet to the tunnel) accepts them; IPv6 goes through
// the same inet chain; a drop of TCP alone is no certain drop.
func TestForwardThroughAGatewayRuleset(t *testing.T) {
	rs, err := diagnose.ParseRuleset([]byte(`{"nftables": [
		{"chain": {"family": "inet", "table": "gw", "name": "forward", "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
		{"rule": {"family": "inet", "table": "gw", "chain": "forward", "handle": 2, "expr": [
			{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}},
		{"rule": {"family": "inet", "table": "gw", "chain": "forward", "handle": 3, "expr": [
			{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "lan0"}},
			{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "wg0"}}, {"accept": null}]}},
		{"chain": {"family": "ip", "table": "t", "name": "fwd", "type": "filter", "hook": "forward", "prio": -5, "policy": "accept"}},
		{"rule": {"family": "ip", "table": "t", "chain": "fwd", "handle": 9, "expr": [
			{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "wg1"}},
			{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}, {"drop": null}]}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		dev          string
		from, v6     bool
		drop, unless bool
	}{
		{"wg0", true, false, true, false},
		{"wg0", true, true, true, false},
		{"wg0", false, false, true, true},
		{"wg1", false, false, true, false}, // the tcp/22 drop is not certain; the inet policy is
	} {
		v := rs.Forward(tc.dev, tc.from, tc.v6)
		if v.Drop != tc.drop || v.Unless != tc.unless {
			t.Errorf("%s from=%v v6=%v: %+v, want drop=%v unless=%v", tc.dev, tc.from, tc.v6, v, tc.drop, tc.unless)
		}
		if tc.drop && !tc.unless && !strings.Contains(v.Where, "policy drop of chain inet gw forward") {
			t.Errorf("%s from=%v: decided at %q, want the inet policy", tc.dev, tc.from, v.Where)
		}
	}
	// Input evaluation does not see the forward hook.
	if v := rs.UDPInput(51820, false); v.Drop {
		t.Errorf("a forward chain dropped input: %+v", v)
	}
}

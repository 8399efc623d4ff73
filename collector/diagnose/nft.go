package diagnose

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// Ruleset is the part of an nftables ruleset (`nft -j list ruleset`) that
// decides whether a new UDP packet reaches a local port, and whether a new
// packet is forwarded from or to a device: the base chains on the
// prerouting, input and forward hooks of the ip, ip6 and inet families, and
// the chains they jump to.
type Ruleset struct {
	chains map[string]*nftChain // by "family table name"
	base   []*nftChain
}

type nftChain struct {
	family, table, name string
	hook, policy        string
	prio                int
	rules               []nftRule
}

func (c *nftChain) id() string { return c.family + " " + c.table + " " + c.name }

type nftRule struct {
	handle int
	expr   []map[string]json.RawMessage
}

// ClampsMSS says whether a rule of the ruleset sets the TCP MSS (nft's
// `tcp option maxseg size set`, or iptables-nft's TCPMSS target) for
// packets through device: one that names no interface, or names it.
func (rs *Ruleset) ClampsMSS(device string) bool {
	for _, ch := range rs.chains {
		for _, r := range ch.rules {
			b, _ := json.Marshal(r.expr)
			js := string(b)
			if !(strings.Contains(js, `"maxseg"`) && strings.Contains(js, `"mangle"`)) && !strings.Contains(js, `"TCPMSS"`) {
				continue
			}
			if !strings.Contains(js, `"iifname"`) && !strings.Contains(js, `"oifname"`) || strings.Contains(js, fmt.Sprintf("%q", device)) {
				return true
			}
		}
	}
	return false
}

// ParseRuleset reads the JSON output of `nft -j list ruleset`.
func ParseRuleset(b []byte) (*Ruleset, error) {
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("nft -j list ruleset: %w", err)
	}
	rs := &Ruleset{chains: map[string]*nftChain{}}
	for _, obj := range doc.Nftables {
		if raw, ok := obj["chain"]; ok {
			var c struct {
				Family, Table, Name, Hook, Policy, Type string
				Prio                                    int
			}
			if err := json.Unmarshal(raw, &c); err != nil {
				return nil, fmt.Errorf("nft chain: %w", err)
			}
			ch := &nftChain{family: c.Family, table: c.Table, name: c.Name, hook: c.Hook, policy: c.Policy, prio: c.Prio}
			rs.chains[ch.id()] = ch
			if (c.Hook == "input" || c.Hook == "prerouting" || c.Hook == "forward") && (c.Family == "ip" || c.Family == "ip6" || c.Family == "inet") {
				rs.base = append(rs.base, ch)
			}
		}
	}
	// In the order the kernel runs them: prerouting, then input (or
	// forward), by priority.
	order := map[string]int{"prerouting": 0, "input": 1, "forward": 1}
	slices.SortStableFunc(rs.base, func(a, b *nftChain) int {
		return cmp.Or(cmp.Compare(order[a.hook], order[b.hook]), cmp.Compare(a.prio, b.prio))
	})
	for _, obj := range doc.Nftables {
		if raw, ok := obj["rule"]; ok {
			var r struct {
				Family, Table, Chain string
				Handle               int
				Expr                 []map[string]json.RawMessage
			}
			if err := json.Unmarshal(raw, &r); err != nil {
				return nil, fmt.Errorf("nft rule: %w", err)
			}
			if ch := rs.chains[r.Family+" "+r.Table+" "+r.Chain]; ch != nil {
				ch.rules = append(ch.rules, nftRule{r.Handle, r.Expr})
			}
		}
	}
	return rs, nil
}

// Verdict is what the ruleset does to a new UDP packet to a local port.
type Verdict struct {
	// Drop is set when some base chain drops or rejects it, at Where (in
	// Chain, as nft names it: "inet filter input").
	Drop         bool
	Where, Chain string
	// Unless is set when an earlier rule that this check cannot evaluate
	// (a source address, an interface, a named set) might accept it first.
	Unless      bool
	UnlessWhere string
}

// packet is what the evaluation knows of the packet: a new UDP datagram to
// port, from a peer on the network (not loopback); or, forwarded, a new
// packet of any protocol from device iif or to device oif.
type packet struct {
	port     int
	v6       bool
	forward  bool
	iif, oif string // "" = not known
}

type outcome int

const (
	fallThrough outcome = iota // end of a non-base chain, or return
	accepted
	dropped
)

// UDPInput evaluates a new UDP packet to port (IPv4 or IPv6) through every
// base chain on the prerouting and input hooks; the first that drops it
// decides.
func (rs *Ruleset) UDPInput(port int, v6 bool) Verdict {
	return rs.verdict(packet{port: port, v6: v6}, "prerouting", "input")
}

// Forward evaluates a new packet of any protocol forwarded from device
// (from = true) or to it, IPv4 or IPv6, through every base chain on the
// forward hook; the first that drops it for certain decides (a drop that
// depends on the protocol, a port or an address is not one).
func (rs *Ruleset) Forward(device string, from, v6 bool) Verdict {
	pk := packet{v6: v6, forward: true}
	if from {
		pk.iif = device
	} else {
		pk.oif = device
	}
	return rs.verdict(pk, "forward")
}

func (rs *Ruleset) verdict(pk packet, hooks ...string) Verdict {
	for _, ch := range rs.base {
		if (ch.family == "ip" && pk.v6) || (ch.family == "ip6" && !pk.v6) || !slices.Contains(hooks, ch.hook) {
			continue
		}
		var e eval
		out := e.chain(rs, ch, pk, 0)
		if out == fallThrough && ch.policy == "drop" {
			out, e.where = dropped, fmt.Sprintf("the policy drop of chain %s", ch.id())
		}
		if out == dropped {
			return Verdict{Drop: true, Where: e.where, Chain: ch.id(), Unless: e.unless != "", UnlessWhere: e.unless}
		}
	}
	return Verdict{}
}

type eval struct {
	where  string // the rule that decided
	unless string // the first rule with a verdict that might have matched
}

func (e *eval) chain(rs *Ruleset, ch *nftChain, pk packet, depth int) outcome {
	if depth > 16 {
		return fallThrough
	}
	for _, r := range ch.rules {
		m, verdict, target := matches(r, pk)
		if m == no || verdict == "" {
			continue
		}
		where := fmt.Sprintf("rule handle %d in chain %s", r.handle, ch.id())
		if m == maybe {
			if verdict == "accept" && e.unless == "" {
				e.unless = where
			}
			continue
		}
		switch verdict {
		case "accept":
			return accepted
		case "drop", "reject":
			e.where = where
			return dropped
		case "return":
			return fallThrough
		case "jump", "goto":
			sub := rs.chains[ch.family+" "+ch.table+" "+target]
			if sub == nil {
				continue
			}
			if out := e.chain(rs, sub, pk, depth+1); out != fallThrough || verdict == "goto" {
				return out
			}
		}
	}
	return fallThrough
}

// tri is a three-valued match result.
type tri int

const (
	yes tri = iota
	no
	maybe
)

// matches evaluates a rule's match expressions on the packet and returns
// its verdict ("" when it has none) and a jump or goto target.
func matches(r nftRule, pk packet) (m tri, verdict, target string) {
	m = yes
	for _, st := range r.expr {
		for kind, raw := range st {
			switch kind {
			case "match":
				switch matchExpr(raw, pk) {
				case no:
					return no, "", ""
				case maybe:
					m = maybe
				}
			case "accept", "drop", "return":
				verdict = kind
			case "reject":
				verdict = "reject"
			case "jump", "goto":
				var t struct{ Target string }
				_ = json.Unmarshal(raw, &t)
				verdict, target = kind, t.Target
			case "counter", "log", "mangle", "notrack", "ct helper", "comment":
				// no effect on the packet's fate
			default:
				m = maybe // limit, quota, set updates, meta set ...: cannot tell
			}
		}
	}
	return m, verdict, target
}

// matchExpr evaluates one {"op", "left", "right"} match.
func matchExpr(raw json.RawMessage, pk packet) tri {
	var mt struct {
		Op    string
		Left  map[string]json.RawMessage
		Right json.RawMessage
	}
	if json.Unmarshal(raw, &mt) != nil {
		return maybe
	}
	var value any // what the packet has for the left side
	switch {
	case mt.Left["payload"] != nil:
		var p struct{ Protocol, Field string }
		_ = json.Unmarshal(mt.Left["payload"], &p)
		switch {
		case p.Protocol == "ip" && pk.v6, p.Protocol == "ip6" && !pk.v6:
			return no // an ip match never matches an IPv6 packet
		case pk.forward:
			return maybe // any protocol, any port, any address
		case (p.Protocol == "udp" || p.Protocol == "th") && p.Field == "dport":
			value = float64(pk.port)
		case p.Protocol == "ip" && p.Field == "protocol", p.Protocol == "ip6" && p.Field == "nexthdr":
			value = "udp"
		case p.Protocol == "tcp", p.Protocol == "sctp", p.Protocol == "dccp", p.Protocol == "icmp", p.Protocol == "icmpv6", p.Protocol == "udplite":
			return no // another protocol's header
		default:
			return maybe // addresses, source port, ...
		}
	case mt.Left["meta"] != nil:
		var k struct{ Key string }
		_ = json.Unmarshal(mt.Left["meta"], &k)
		switch k.Key {
		case "l4proto":
			if pk.forward {
				return maybe
			}
			value = "udp"
		case "nfproto":
			value = map[bool]string{false: "ipv4", true: "ipv6"}[pk.v6]
		case "iif", "iifname", "oif", "oifname":
			if name := map[bool]string{true: pk.iif, false: pk.oif}[k.Key[0] == 'i']; name != "" {
				value = name
				break
			}
			if pk.forward || k.Key[0] == 'o' {
				return maybe
			}
			// From a peer, never on loopback; any other interface: cannot tell.
			var s string
			if json.Unmarshal(mt.Right, &s) == nil && s == "lo" {
				value = "-" // not lo
				break
			}
			return maybe
		default:
			return maybe
		}
	case mt.Left["ct"] != nil:
		var k struct{ Key string }
		_ = json.Unmarshal(mt.Left["ct"], &k)
		if k.Key != "state" {
			return maybe
		}
		value = "new"
	default:
		return maybe
	}
	in, ok := contains(mt.Right, value)
	if !ok {
		return maybe
	}
	switch mt.Op {
	case "==", "in":
	case "!=":
		in = !in
	default:
		return maybe
	}
	if in {
		return yes
	}
	return no
}

// contains says whether value is in right: a value, a list of flags, an
// anonymous set, a range. ok is false for what cannot be evaluated (named
// sets, prefixes, expressions).
func contains(right json.RawMessage, value any) (in, ok bool) {
	var v any
	if json.Unmarshal(right, &v) != nil {
		return false, false
	}
	return element(v, value)
}

func element(v, value any) (in, ok bool) {
	switch r := v.(type) {
	case float64, string:
		if s, isStr := r.(string); isStr && strings.HasPrefix(s, "@") {
			return false, false // named set
		}
		if n, isNum := value.(float64); isNum {
			if _, isStr := r.(string); isStr {
				return false, false // a service name
			}
			return r == n, true
		}
		if s, isStr := value.(string); isStr {
			if n, isNum := r.(float64); isNum { // protocol numbers
				return (s == "udp" && n == 17), true
			}
			return r == s, true
		}
		return false, false
	case []any: // flags (ct state established,related)
		return anyOf(r, value)
	case map[string]any:
		if set, ok := r["set"].([]any); ok {
			return anyOf(set, value)
		}
		if rg, ok := r["range"].([]any); ok && len(rg) == 2 {
			lo, ok1 := rg[0].(float64)
			hi, ok2 := rg[1].(float64)
			n, ok3 := value.(float64)
			if ok1 && ok2 && ok3 {
				return n >= lo && n <= hi, true
			}
		}
	}
	return false, false
}

func anyOf(list []any, value any) (in, ok bool) {
	for _, el := range list {
		in, ok := element(el, value)
		if !ok {
			return false, false
		}
		if in {
			return true, true
		}
	}
	return false, true
}

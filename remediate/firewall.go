package remediate

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// MSSTable is wgpulse's own nftables table (family inet): the only
// nftables object it ever creates, changes or deletes. The operator's
// tables are never touched. Undo by hand: `nft delete table inet wgpulse`.
const MSSTable = "wgpulse"

// MSSClamp is the clamp of one tunnel device: the TCP MSS of SYN and
// SYN-ACK segments forwarded into or out of it is lowered to V4 (IPv4) and
// V6 (IPv6), never raised (the kernel only lowers an MSS).
type MSSClamp struct {
	Device string `json:"device"`
	V4     int    `json:"v4"`
	V6     int    `json:"v6"`
}

// FirewallHandle is the nftables transport of the MSS actuator: the
// google/nftables connection in production, a fake in tests.
type FirewallHandle interface {
	// SetMSSClamps replaces the content of wgpulse's table with these
	// clamps in one netlink batch (empty: the table is deleted).
	SetMSSClamps(clamps []MSSClamp) error
	// MSSClamps reads back the clamps in wgpulse's table (nil: no table).
	MSSClamps() ([]MSSClamp, error)
}

// nft is the real FirewallHandle, on the namespace of the agent.
type nft struct {
	mu sync.Mutex
}

// NewFirewall returns the nftables transport (connections are opened per
// call; nothing is opened until the MSS policy acts).
func NewFirewall() FirewallHandle { return &nft{} }

func (n *nft) conn() (*nftables.Conn, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w%s", err, firewallHint(err))
	}
	return c, nil
}

func firewallHint(err error) string {
	if errors.Is(err, os.ErrPermission) || errors.Is(err, unix.EPERM) {
		return " (changing nftables needs CAP_NET_ADMIN)"
	}
	return ""
}

const mssChain = "mss-clamp"

// SetMSSClamps implements FirewallHandle. The batch deletes the table (if
// there) and creates it anew, so what is in it is exactly the clamps.
func (n *nft) SetMSSClamps(clamps []MSSClamp) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	c, err := n.conn()
	if err != nil {
		return err
	}
	have, err := ourTable(c)
	if err != nil {
		return err
	}
	if have != nil {
		c.DelTable(have)
	}
	if len(clamps) > 0 {
		t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: MSSTable})
		policy := nftables.ChainPolicyAccept
		ch := c.AddChain(&nftables.Chain{Name: mssChain, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityMangle, Policy: &policy})
		for _, cl := range clamps {
			for _, dir := range []expr.MetaKey{expr.MetaKeyOIFNAME, expr.MetaKeyIIFNAME} {
				for _, fam := range []struct {
					name  string
					proto byte
					mss   int
				}{{"ipv4", unix.NFPROTO_IPV4, cl.V4}, {"ipv6", unix.NFPROTO_IPV6, cl.V6}} {
					c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: mssRule(dir, cl.Device, fam.proto, fam.mss),
						UserData: []byte(fmt.Sprintf("wgpulse mss %s %s %d", cl.Device, fam.name, fam.mss))})
				}
			}
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: writing table inet %s: %w%s", MSSTable, err, firewallHint(err))
	}
	return nil
}

// mssRule is `meta {o,i}ifname DEV meta nfproto FAM meta l4proto tcp
// tcp flags & (syn|rst) == syn tcp option maxseg size set MSS`.
func mssRule(dir expr.MetaKey, device string, family byte, mss int) []expr.Any {
	name := make([]byte, unix.IFNAMSIZ)
	copy(name, device)
	return []expr.Any{
		&expr.Meta{Key: dir, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: name},
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{family}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x06}, Xor: []byte{0x00}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x02}},
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(uint16(mss))},
		&expr.Exthdr{Op: expr.ExthdrOpTcpopt, Type: 2, Offset: 2, Len: 2, SourceRegister: 1},
	}
}

// ourTable is wgpulse's table, or nil.
func ourTable(c *nftables.Conn) (*nftables.Table, error) {
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("nftables: listing tables: %w%s", err, firewallHint(err))
	}
	for _, t := range ts {
		if t.Name == MSSTable {
			return t, nil
		}
	}
	return nil, nil
}

// MSSClamps implements FirewallHandle from the rules' user data.
func (n *nft) MSSClamps() ([]MSSClamp, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	c, err := n.conn()
	if err != nil {
		return nil, err
	}
	t, err := ourTable(c)
	if err != nil || t == nil {
		return nil, err // no table: no clamp
	}
	rules, err := c.GetRules(t, &nftables.Chain{Name: mssChain, Table: t})
	if err != nil {
		return nil, fmt.Errorf("nftables: reading table inet %s: %w", MSSTable, err)
	}
	by := map[string]*MSSClamp{}
	var order []string
	for _, r := range rules {
		var dev, fam string
		var mss int
		if _, err := fmt.Sscanf(string(r.UserData), "wgpulse mss %s %s %d", &dev, &fam, &mss); err != nil {
			continue
		}
		cl := by[dev]
		if cl == nil {
			cl = &MSSClamp{Device: dev}
			by[dev] = cl
			order = append(order, dev)
		}
		if fam == "ipv4" {
			cl.V4 = mss
		} else {
			cl.V6 = mss
		}
	}
	out := []MSSClamp{}
	for _, d := range order {
		out = append(out, *by[d])
	}
	slices.SortFunc(out, func(a, b MSSClamp) int { return strings.Compare(a.Device, b.Device) })
	return out, nil
}

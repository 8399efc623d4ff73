package lab

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// tcpDropTable is the lab's nftables table in the hub namespace: it drops
// TCP arriving over the tunnels named, ICMP and everything else passes (a
// middlebox that blackholes TCP). Written with google/nftables.
const tcpDropTable = "wgpulse_lab_tcpdrop"

// DropTCP makes the hub drop (on) or pass (off) TCP arriving over these
// tunnels' hub devices, to the hub itself or forwarded; ICMP passes either
// way. Off for every tunnel removes the table.
func (l *Lab) DropTCP(on bool, tunnels ...string) error {
	var devs []string
	for _, name := range tunnels {
		t, err := l.Tunnel(name)
		if err != nil {
			return err
		}
		devs = append(devs, t.HubDevice)
	}
	h, err := netns.GetFromName(l.HubNamespace)
	if err != nil {
		return fmt.Errorf("netns %s: %w", l.HubNamespace, err)
	}
	defer h.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		return err
	}
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return err
	}
	for _, t := range ts {
		if t.Name == tcpDropTable {
			c.DelTable(t)
		}
	}
	if on && len(devs) > 0 {
		t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: tcpDropTable})
		policy := nftables.ChainPolicyAccept
		for _, hook := range []*nftables.ChainHook{nftables.ChainHookInput, nftables.ChainHookForward} {
			ch := c.AddChain(&nftables.Chain{Name: fmt.Sprintf("h%d", *hook), Table: t, Type: nftables.ChainTypeFilter,
				Hooknum: hook, Priority: nftables.ChainPriorityFilter, Policy: &policy})
			for _, d := range devs {
				name := make([]byte, unix.IFNAMSIZ)
				copy(name, d)
				c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
					&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: name},
					&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
					&expr.Verdict{Kind: expr.VerdictDrop},
				}})
			}
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables in %s: %w", l.HubNamespace, err)
	}
	return nil
}

package diagnose

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/vishvananda/netlink"
)

// fakeHost is the netlink side of ReadHost: links, rules and one qdisc dump.
type fakeHost struct {
	links  []netlink.Link
	rules  []netlink.Rule
	qdiscs []netlink.Qdisc
}

func (f fakeHost) LinkList() ([]netlink.Link, error) { return f.links, nil }
func (f fakeHost) RuleList(family int) ([]netlink.Rule, error) {
	if family == netlink.FAMILY_V4 {
		return f.rules, nil
	}
	return nil, nil
}
func (f fakeHost) QdiscList(link netlink.Link) ([]netlink.Qdisc, error) {
	if link != nil {
		panic("one dump for every link, not a call per link")
	}
	return f.qdiscs, nil
}

// ReadHost over a fake /proc/sys (IPv6 disabled: no net/ipv6) and netlink:
// the effective rp_filter is the larger of all and the link's, each link's
// root qdisc comes from one dump (noqueue when none is listed), only rules
// with an fwmark are kept, and what cannot be read is named in Unread and
// in the error.
func TestReadHost(t *testing.T) {
	proc := t.TempDir()
	for path, v := range map[string]string{
		"net/ipv4/ip_forward": "1\n", "net/ipv4/conf/all/rp_filter": "2\n", "net/ipv4/conf/all/src_valid_mark": "0\n",
		"net/ipv4/conf/wg0/rp_filter": "1\n", "net/ipv4/conf/wg1/rp_filter": "0\n",
	} {
		if err := os.MkdirAll(filepath.Join(proc, filepath.Dir(path)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(proc, path), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	link := func(name string, index int) netlink.Link {
		return &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: name, Index: index}}
	}
	qdisc := func(index int, parent uint32, kind string) netlink.Qdisc {
		return &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: index, Parent: parent}, QdiscType: kind}
	}
	h, err := ReadHost(fakeHost{
		links:  []netlink.Link{link("wg0", 3), link("wg1", 4)},
		rules:  []netlink.Rule{{Priority: 32764, Mark: 0xca6c, Invert: true, Table: 51820}, {Priority: 32766, Table: 254}},
		qdiscs: []netlink.Qdisc{qdisc(3, netlink.HANDLE_ROOT, "fq_codel"), qdisc(3, 0x10001, "pfifo")},
	}, proc)
	if err == nil || !h.Unread["net.ipv6.conf.all.forwarding"] || len(h.Unread) != 1 {
		t.Errorf("unread %v, err %v: want only IPv6 forwarding, named in the error", h.Unread, err)
	}
	if !h.Forward4 || h.SrcValidMark || h.RPFilterAll != 2 || h.RPFilter["wg0"] != 2 || h.RPFilter["wg1"] != 2 {
		t.Errorf("sysctls %+v", h)
	}
	if h.Qdisc["wg0"] != "fq_codel" || h.Qdisc["wg1"] != "noqueue" {
		t.Errorf("qdiscs %v, want wg0 fq_codel (its root, not the child), wg1 noqueue", h.Qdisc)
	}
	if len(h.MarkRules) != 1 || h.MarkRules[0] != (MarkRule{Priority: 32764, Mark: 0xca6c, Invert: true, Table: 51820}) {
		t.Errorf("mark rules %+v", h.MarkRules)
	}
}

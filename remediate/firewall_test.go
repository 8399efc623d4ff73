package remediate_test

import (
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
	"github.com/wgpulse/wgpulse/remediate"
)

// The MSS actuator on the kernel's nftables, in a namespace of its own:
// the table holds exactly the clamps (as `nft` shows them), reads back,
// changes in one batch, leaves the operator's tables alone, and goes away.
func TestFirewallMSSClampsInTheKernel(t *testing.T) {
	labtest.Require(t)
	nftBin := labtest.Tool(t, "nft", "nftables")
	ns := "wgpmss" + labtest.UniquePrefix()
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	nft := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("ip", append([]string{"netns", "exec", ns, nftBin}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("nft %v: %v: %s", args, err, out)
		}
		return string(out)
	}
	nft("add", "table", "inet", "operator")
	nft("add", "chain", "inet", "operator", "forward_filter", "{ type filter hook forward priority 0; policy accept; }")
	inNS := func(fn func()) {
		t.Helper()
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		orig, err := netns.Get()
		if err != nil {
			t.Fatal(err)
		}
		defer orig.Close()
		h, err := netns.GetFromName(ns)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = netns.Set(orig) }()
		fn()
	}
	fw := remediate.NewFirewall()
	want := []remediate.MSSClamp{{Device: "wg0", V4: 1380, V6: 1360}, {Device: "wg1", V4: 1192, V6: 1172}}
	inNS(func() {
		if err := fw.SetMSSClamps(want); err != nil {
			t.Fatal(err)
		}
	})
	out := nft("list", "table", "inet", "wgpulse")
	for _, s := range []string{`oifname "wg0" meta nfproto ipv4 tcp flags syn / syn,rst tcp option maxseg size set 1380`,
		`iifname "wg0" meta nfproto ipv6 tcp flags syn / syn,rst tcp option maxseg size set 1360`,
		`iifname "wg1" meta nfproto ipv6 tcp flags syn / syn,rst tcp option maxseg size set 1172`, "hook forward priority mangle"} {
		if !strings.Contains(out, s) {
			t.Errorf("nft list table inet wgpulse has no %q:\n%s", s, out)
		}
	}
	inNS(func() {
		got, err := fw.MSSClamps()
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("read back %v (%v), want %v", got, err, want)
		}
		if err := fw.SetMSSClamps(want[:1]); err != nil {
			t.Fatal(err)
		}
		if got, _ := fw.MSSClamps(); !slices.Equal(got, want[:1]) {
			t.Errorf("after the change: %v, want %v", got, want[:1])
		}
		if err := fw.SetMSSClamps(nil); err != nil {
			t.Fatal(err)
		}
		if got, err := fw.MSSClamps(); got != nil || err != nil {
			t.Errorf("after removal: %v %v, want no table", got, err)
		}
	})
	if out := nft("list", "tables"); strings.Contains(out, "wgpulse") || !strings.Contains(out, "table inet operator") {
		t.Errorf("tables after removal:\n%s\nwant the operator's only", out)
	}
}

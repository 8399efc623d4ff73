package prober

import (
	"net/netip"
	"os/exec"
	"testing"

	"github.com/wgpulse/wgpulse/deploy/lab"
	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
)

// The kernel's side of device churn, on a real socket: SO_BINDTODEVICE
// binds to the device's index, so after `ip link del` the socket is stale
// and sends fail with ENODEV; after the same name is added again (a new
// index) it stays stale until reopened. A TUN device that nobody reads, in
// a namespace of the test's own, drops what it is sent.
func TestRealSocketNoticesItsDeviceRecreated(t *testing.T) {
	labtest.Require(t)
	ns := labtest.UniquePrefix() + "-churn"
	if err := lab.AddNetns(ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lab.DelNetns(ns) })
	add := func() {
		t.Helper()
		for _, args := range [][]string{{"tuntap", "add", "dev", "d0", "mode", "tun"}, {"addr", "add", "192.0.2.1/24", "dev", "d0"}, {"link", "set", "d0", "up"}} {
			if out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
				t.Fatalf("ip %v: %v %s", args, err, out)
			}
		}
	}
	add()
	var c Conn
	if err := lab.InNetns(ns, func() (err error) { c, err = openSocket("d0", false); return err }); err != nil {
		t.Fatal(err)
	}
	defer func() { c.Close() }()
	dst := netip.MustParseAddr("192.0.2.2")
	if err := c.Send(dst, 1, 1, make([]byte, 16)); err != nil || c.(staler).Stale() {
		t.Fatalf("fresh socket: send %v, stale %v", err, c.(staler).Stale())
	}
	if out, err := exec.Command("ip", "-n", ns, "link", "del", "d0").CombinedOutput(); err != nil {
		t.Fatalf("ip link del: %v %s", err, out)
	}
	if err := c.Send(dst, 1, 2, make([]byte, 16)); !deviceGone(err) || !c.(staler).Stale() {
		t.Fatalf("device deleted: send %v (want ENODEV), stale %v", err, c.(staler).Stale())
	}
	add() // the same name, a new index
	if err := c.Send(dst, 1, 3, make([]byte, 16)); !deviceGone(err) || !c.(staler).Stale() {
		t.Fatalf("device recreated: send %v (want ENODEV: bound to the old index), stale %v", err, c.(staler).Stale())
	}
	c.Close()
	if err := lab.InNetns(ns, func() (err error) { c, err = openSocket("d0", false); return err }); err != nil {
		t.Fatal(err)
	}
	if err := c.Send(dst, 1, 4, make([]byte, 16)); err != nil || c.(staler).Stale() {
		t.Fatalf("reopened: send %v, stale %v", err, c.(staler).Stale())
	}
}

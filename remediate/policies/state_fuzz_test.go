package policies_test

import (
	"os"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wgpulse/wgpulse/remediate"
)

// The state file is read at every start, and a crash, a full disk or a
// hand edit can leave anything in it. Whatever it holds, the start never
// crashes and never writes the kernel on its word: the kernel here holds
// nothing of ours, so every group is on its primary and nothing is changed.
// `make test` runs its corpus; the fuzz engine stalls on synctest bubbles,
// so `make bench` fuzzes the decoding (FuzzLoadState in remediate) instead.
func FuzzStateFile(f *testing.F) {
	if b, err := os.ReadFile("testdata/state-v1.json"); err == nil {
		f.Add(b)
	}
	f.Add([]byte(`{"version":2,"paused":true,"policies":{"failover":{"groups":{"dc1-to-aws":{"active":"backup","routes":[{"prefix":"10.50.0.0/17","device":"wg-b","metric":10,"protocol":117}]}}},"mtu":{"wg-p/x":{"device":"wg-p","applied":1200,"mechanism":"device","original_device_mtu":9000}},"keepalive":{"wg-p/x":{"device":"wg-p","peer":"x","applied":5}}}}`))
	f.Add([]byte(`{"version":1,"groups":{"dc1-to-aws":{"active":"sideways"}},"mtu":[],"keepalive":7}`))
	f.Add([]byte(`{"version":3}`))
	f.Add([]byte(`{"version":2,"policies":{"failover":"x","mtu":null}}`))
	f.Add([]byte(`{"version":`))
	f.Fuzz(func(t *testing.T, b []byte) {
		synctest.Test(t, func(t *testing.T) {
			cfg := config(t, remediate.ModeAuto, group("fast"))
			cfg.MTU.Enabled, cfg.MTU.Devices = true, []string{primaryDev}
			cfg.Keepalive.Enabled, cfg.Keepalive.Devices = true, []string{primaryDev}
			if err := os.WriteFile(cfg.StateFile, b, 0o600); err != nil {
				t.Fatal(err)
			}
			r := newRig(t, cfg)
			r.start()
			r.run(100 * time.Millisecond)
			if w := r.routes.writes(); len(w) != 0 {
				t.Fatalf("state file %q made the start write routes %v", b, w)
			}
			if w := r.wg.configured(); len(w) != 0 {
				t.Fatalf("state file %q made the start configure peers %v", b, w)
			}
			if g := r.status().Groups[0]; g.Active != "primary" {
				t.Fatalf("state file %q: active %s with no route of ours in the kernel", b, g.Active)
			}
			r.stop()
		})
	})
}

package policies_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wgpulse/wgpulse/prober"
	"github.com/wgpulse/wgpulse/remediate"
	"github.com/wgpulse/wgpulse/remediate/policies"
)

func mssConfig(t *testing.T, mode remediate.Mode) policies.Config {
	cfg := config(t, mode)
	cfg.MSS.Enabled, cfg.MSS.Devices = true, []string{primaryDev}
	return cfg
}

// The clamp follows the MTU in force: the device's 1420 at first (MSS
// 1380/1360), then the 1232 the prober measures (1192/1172), audited with
// what set it; back at 1420 when the path recovers. Only wgpulse's table is
// written.
func TestMSSClampFollowsTheMTUInForce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, mssConfig(t, remediate.ModeAuto))
		r.start()
		want := []remediate.MSSClamp{{Device: primaryDev, V4: 1380, V6: 1360}}
		waitFor(t, 10*time.Second, "a clamp from the device MTU", func() bool { return slices.Equal(r.fw.table(), want) })
		r.pmtu.Store(primaryTarget, 1232)
		r.prober.ResearchPMTU(primaryDev + "|" + primaryTarget)
		var h prober.Health
		waitFor(t, 2*time.Minute, "a clamp from the measured path MTU", func() bool {
			h, _ = r.prober.HealthOf(primaryDev + "|" + primaryTarget)
			c := r.fw.table()
			return h.PathMTU > 0 && h.PathMTU <= 1232 && len(c) == 1 && c[0].V4 == h.PathMTU-40
		})
		if h.PathMTU < 1212 {
			t.Fatalf("path MTU %d, want within 20 bytes below 1232", h.PathMTU)
		}
		// IPv6 never below 1280 - 60: a path that carries less carries no IPv6.
		if c := r.fw.table()[0]; c.V6 != max(h.PathMTU-60, 1220) {
			t.Errorf("IPv6 clamp %d for a path MTU of %d", c.V6, h.PathMTU)
		}
		a := r.taken()
		if len(a) != 2 || a[1].Action != "set_mss_clamp" || a[1].From != "1380/1360" || !strings.Contains(a[1].Reason, "measured to "+primaryTarget) {
			t.Fatalf("audits %+v", a)
		}
		if v := r.metric("wgpulse_remediation_mss_clamp_bytes", map[string]string{"device": primaryDev, "family": "ipv4"}); v != float64(h.PathMTU-40) {
			t.Errorf("clamp metric %v, want %d", v, h.PathMTU-40)
		}
		r.pmtu.Store(primaryTarget, 1420)
		r.prober.ResearchPMTU(primaryDev + "|" + primaryTarget)
		want = []remediate.MSSClamp{{Device: primaryDev, V4: 1380, V6: 1360}}
		waitFor(t, 2*time.Minute, "the clamp back at the device MTU", func() bool { return slices.Equal(r.fw.table(), want) })
	})
}

// Dry-run decides the same and writes no table; leaving auto and
// restore_on_exit remove the table.
func TestMSSClampDryRunOffAndRestore(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, mssConfig(t, remediate.ModeDryRun))
		r.start()
		r.run(10 * time.Second)
		if a := r.taken(); len(a) != 1 || a[0].Mode != "dry-run" || a[0].To != "1380/1360" || r.fw.writes != 0 {
			t.Fatalf("dry-run: audits %+v, %d writes; want one dry-run decision and no write", a, r.fw.writes)
		}
		r.stop()

		cfg := mssConfig(t, remediate.ModeAuto)
		r = newRig(t, cfg)
		r.start()
		waitFor(t, 10*time.Second, "a clamp", func() bool { return len(r.fw.table()) == 1 })
		off := cfg
		off.Mode = remediate.ModeOff
		if err := policies.Apply(context.Background(), r.rem, off); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "no table after off", func() bool { return r.fw.table() == nil })

		cfg.RestoreOnExit = true
		r = newRig(t, cfg)
		r.start()
		waitFor(t, 10*time.Second, "a clamp", func() bool { return len(r.fw.table()) == 1 })
		r.stop()
		if c := r.fw.table(); c != nil {
			t.Errorf("after restore_on_exit the table holds %v, want none", c)
		}
	})
}

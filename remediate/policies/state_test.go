package policies_test

import (
	"encoding/json"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wgpulse/wgpulse/remediate"
)

// v1Node is the node testdata/state-v1.json was written on (by the release
// before the policy packages): the dual-WAN group on its backup uplink, an
// MTU route for wg-b's peer, and a 2 s keepalive for wg-p's.
func v1Node(t *testing.T, mtu bool) *rig {
	cfg := config(t, remediate.ModeAuto)
	cfg.Keepalive.Enabled, cfg.Keepalive.Devices = true, []string{primaryDev, backupDev}
	cfg.Keepalive.Min, cfg.Keepalive.Symptoms = 2*time.Second, 2
	cfg.MTU.Enabled, cfg.MTU.Devices, cfg.MTU.HoldDown, cfg.MTU.Min = mtu, []string{backupDev}, time.Minute, 1200
	b, err := os.ReadFile("testdata/state-v1.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg.StateFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	r := newRig(t, cfg)
	r.cfg.Failover = append(r.cfg.Failover, dualWAN(r, "fast"))
	r.wg.allowed[backupDev] = []string{lan}
	r.routes.operatorRoute(lan, backupDev, 300)
	r.routes.operatorRoute(lan, backupDev, 199)
	r.routes.table[len(r.routes.table)-1].Protocol, r.routes.table[len(r.routes.table)-1].MTU = remediate.DefaultRouteProtocol, 1227
	r.pmtu.Store(backupTarget, 1232)
	r.wg.endpoint[tunnelDev] = uplink2
	r.wg.keepalive[primaryDev] = 2 * time.Second
	var down1, down2 atomic.Bool
	down1.Store(true) // the primary uplink is still down: the group stays on the backup
	r.wan(&down1, &down2)
	return r
}

// A state file written by the previous release (version 1) is read: every
// policy adopts its part against the kernel without touching it, and the
// next write is version 2 with each policy's part its own object.
func TestStateFileVersion1IsMigrated(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := v1Node(t, true)
		r.start()
		r.run(5 * time.Second)
		if w := r.routes.writes(); len(w) != 0 {
			t.Errorf("route writes %v: the adopted MTU route must be kept as it is", w)
		}
		if w := r.wg.configured(); len(w) != 0 {
			t.Errorf("peer writes %v: the adopted endpoint and keepalive must be kept", w)
		}
		g := r.status().Groups[0]
		if g.Active != "backup" || g.Switches != 1 || g.Penalty < 900 {
			t.Errorf("group %+v: want the backup, 1 switch and its damping penalty from the file", g)
		}
		if v := r.metric("wgpulse_remediation_mtu_bytes", map[string]string{"device": backupDev, "mechanism": "route"}); v != 1227 {
			t.Errorf("MTU in force %v, want the adopted 1227", v)
		}
		if v := r.metric("wgpulse_remediation_keepalive_seconds", map[string]string{"device": primaryDev}); v != 2 {
			t.Errorf("keepalive in force %v, want the adopted 2 s", v)
		}
		// The file's times lie ahead of this node's clock (a clock stepped
		// back at boot): the adopted keepalive is still ours, no conflict.
		if v := r.metric("wgpulse_remediation_conflicts_total", map[string]string{"group": primaryDev}); v != 0 {
			t.Errorf("%v conflicts on %s after the restart, want 0: %s", v, primaryDev, r.logs.String())
		}
		var st struct {
			Version  int
			Policies struct {
				Failover struct {
					Groups map[string]struct {
						Active   string `json:"active"`
						Original string `json:"original_endpoint"`
					} `json:"groups"`
				} `json:"failover"`
				MTU       map[string]struct{ Applied int }   `json:"mtu"`
				Keepalive map[string]struct{ Applied int64 } `json:"keepalive"`
			}
		}
		b := readState(t, r)
		if err := json.Unmarshal(b, &st); err != nil {
			t.Fatal(err)
		}
		fg := st.Policies.Failover.Groups["dc1-dual-wan"]
		if st.Version != 2 || fg.Active != "backup" || fg.Original != "198.18.1.1:51821" || len(st.Policies.MTU) != 1 || len(st.Policies.Keepalive) != 1 {
			t.Errorf("state file after the migration:\n%s\nwant version 2 with the failover, mtu and keepalive parts", b)
		}
		for k, u := range st.Policies.MTU {
			if u.Applied != 1227 || !strings.HasPrefix(k, "wg-b/") {
				t.Errorf("mtu part %s: %+v", k, u)
			}
		}
	})
}

// A policy no longer configured keeps its part of the state file until its
// change is undone: here the MTU policy is switched off while the agent is
// stopped. At start its route is undone, audited; while the kernel refuses
// that, the route and its part stay (owned, not a stranger's leftover).
func TestRemovedPolicyKeepsItsPart(t *testing.T) {
	mtuPart := func(t *testing.T, r *rig) map[string]struct {
		Applied int
		Routes  []remediate.Route
	} {
		var st struct {
			Policies struct {
				MTU map[string]struct {
					Applied int
					Routes  []remediate.Route
				} `json:"mtu"`
			}
		}
		if err := json.Unmarshal(readState(t, r), &st); err != nil {
			t.Fatal(err)
		}
		return st.Policies.MTU
	}
	synctest.Test(t, func(t *testing.T) {
		r := v1Node(t, false)
		r.routes.failDel = syscall.EPERM
		r.start()
		r.run(5 * time.Second)
		if strings.Contains(r.logs.String(), "this config does not own") {
			t.Error("the MTU route the state file names is reported as a stranger's leftover")
		}
		a := r.audits()
		if len(a) == 0 || a[0].Action != "raise_mtu" || a[0].Result != "error" || !strings.Contains(a[0].Reason, "no longer covers") {
			t.Errorf("the undo of the out-of-scope MTU route is not audited as failed: %+v", a)
		}
		if part := mtuPart(t, r); len(part) != 1 {
			t.Errorf("MTU part %+v: want it kept while its route is in the kernel", part)
		} else {
			for _, u := range part {
				if u.Applied != 1227 || len(u.Routes) != 1 {
					t.Errorf("mtu part %+v: want the route of 1227 kept", u)
				}
			}
		}
		r.stop()
		r.routes.failDel = nil
		r.start()
		r.run(5 * time.Second)
		a = r.taken()
		if len(a) == 0 || a[len(a)-1].Action != "raise_mtu" || a[len(a)-1].Result != "ok" {
			t.Errorf("the out-of-scope MTU route is not undone at the next start: %+v", r.audits())
		}
		if strings.Contains(strings.Join(r.routes.show(), "\n"), "metric 199 proto 117") {
			t.Errorf("our MTU route is still there: %v", r.routes.show())
		}
		if part := mtuPart(t, r); len(part) != 0 {
			t.Errorf("MTU part %+v after the undo: want it gone", part)
		}
	})
}

func readState(t *testing.T, r *rig) []byte {
	t.Helper()
	b, err := os.ReadFile(r.cfg.StateFile)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A keepalive of ours on a device the config no longer covers is undone at
// start (the original keepalive back), audited.
func TestStartUndoesAnOutOfScopeKeepalive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := v1Node(t, true)
		r.cfg.Keepalive.Enabled = false
		r.start()
		r.run(5 * time.Second)
		r.wg.mu.Lock()
		ka := r.wg.keepalive[primaryDev]
		r.wg.mu.Unlock()
		if ka != 0 {
			t.Errorf("keepalive on %s is %s after the start: want the original 0 back", primaryDev, ka)
		}
		var undone bool
		for _, a := range r.taken() {
			undone = undone || (a.Action == "relax_keepalive" && a.Result == "ok" && strings.Contains(a.Reason, "no longer covers"))
		}
		if !undone {
			t.Errorf("the undo is not audited: %+v", r.audits())
		}
	})
}

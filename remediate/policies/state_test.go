package policies_test

import (
	"encoding/json"
	"os"
	"strings"
	"sync/atomic"
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

// A policy no longer configured keeps its part of the state file while its
// change is in the kernel: here the MTU policy is switched off, its route
// stays (left alone, named in the log), and so does its part.
func TestRemovedPolicyKeepsItsPart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := v1Node(t, false)
		r.start()
		r.run(5 * time.Second)
		if !strings.Contains(r.logs.String(), "outside the MTU policy's scope: left alone") {
			t.Error("the MTU change outside the config's scope is not named in the log")
		}
		if strings.Contains(r.logs.String(), "this config does not own") {
			t.Error("the MTU route the state file names is reported as a stranger's leftover")
		}
		var st struct {
			Policies struct {
				MTU map[string]struct {
					Applied int
					Routes  []remediate.Route
				} `json:"mtu"`
			}
		}
		b := readState(t, r)
		if err := json.Unmarshal(b, &st); err != nil {
			t.Fatal(err)
		}
		if len(st.Policies.MTU) != 1 {
			t.Fatalf("state file:\n%s\nwant the MTU policy's part kept while its route is in the kernel", b)
		}
		for _, u := range st.Policies.MTU {
			if u.Applied != 1227 || len(u.Routes) != 1 {
				t.Errorf("mtu part %+v: want the route of 1227 kept", u)
			}
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

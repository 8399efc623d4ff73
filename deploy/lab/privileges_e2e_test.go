package lab_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wgpulse/wgpulse/deploy/lab"
	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
)

// withoutNetRaw wraps the agent so it runs without CAP_NET_RAW (dropped from
// the bounding set, so root's exec does not get it back).
func withoutNetRaw(t *testing.T, bin string) string {
	t.Helper()
	w := filepath.Join(t.TempDir(), "wgpulse-no-net-raw")
	script := fmt.Sprintf("#!/bin/sh\nexec setpriv --bounding-set=-net_raw --inh-caps=-net_raw %s \"$@\"\n", bin)
	if err := os.WriteFile(w, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return w
}

// TestProberWithoutCapNetRaw: without CAP_NET_RAW the prober uses
// unprivileged ping sockets where the namespace allows them, and otherwise
// says in one log line what to grant while the agent keeps serving.
func TestProberWithoutCapNetRaw(t *testing.T) {
	labtest.Require(t)
	bin := withoutNetRaw(t, labtest.BuildBinary(t, "./cmd/wgpulse"))
	cfg := writeFile(t, t.TempDir(), "p.yml", "prober:\n  interval: 50ms\n  pmtu: {enabled: false}\n  targets:\n    - {address: 127.0.0.1, device: lo}\n    - {address: \"::1\", device: lo}\n")
	for _, tc := range []struct {
		name     string
		pingGIDs string // net.ipv4.ping_group_range in the agent's namespace
		works    bool
	}{
		{"ping sockets allowed", "0 2147483647", true},
		{"neither raw nor ping sockets", "1 0", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := "wgpl-c" + labtest.UniquePrefix()
			if err := lab.AddNetns(ns); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = lab.DelNetns(ns) })
			if out, err := lab.Command(ns, "sysctl", "-w", "net.ipv4.ping_group_range="+tc.pingGIDs).CombinedOutput(); err != nil {
				t.Fatalf("sysctl: %v %s", err, out)
			}
			a := labtest.StartAgent(t, bin, ns, "127.0.0.1:9586", "--config.file="+cfg)
			if tc.works {
				eventually(t, 10*time.Second, func() string {
					s, _ := scrape(t, a)
					for _, target := range []string{"127.0.0.1", "::1"} {
						up, ok := s.get("wgpulse_probe_up", labelsOf("target", target))
						probes, _ := s.get("wgpulse_probes_total", labelsOf("target", target))
						failures, _ := s.get("wgpulse_probe_failures_total", labelsOf("target", target))
						if !ok || up != 1 || probes < 10 || failures != 0 {
							return fmt.Sprintf("%s over ping sockets: up %v probes %v failures %v", target, up, probes, failures)
						}
					}
					return ""
				})
				return
			}
			eventually(t, 10*time.Second, func() string {
				if n := strings.Count(a.Logs(), "grant CAP_NET_RAW"); n == 0 {
					return "no log line saying what to grant"
				}
				return ""
			})
			s, _ := scrape(t, a)
			if v, ok := s.get("wgpulse_prober_errors_total", labelsOf("device", "lo")); !ok || v < 1 {
				t.Errorf("socket failures not counted: %v", s["wgpulse_prober_errors_total"])
			}
			if _, ok := s.get("wgpulse_build_info", nil); !ok {
				t.Error("the agent stopped serving its own metrics")
			}
		})
	}
}

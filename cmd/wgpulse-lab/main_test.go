package main

import (
	"bytes"
	"encoding/json"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/wgpulse/wgpulse/deploy/lab"
	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
)

func TestMain(m *testing.M) {
	lab.RunChild()
	os.Exit(m.Run())
}

func cli(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

type statusJSON struct {
	Tunnels []map[string]any `json:"tunnels"`
}

func TestCLI(t *testing.T) {
	labtest.Require(t)
	p := "c" + labtest.UniquePrefix()
	t.Cleanup(func() { _ = lab.DownPrefix(p, nil) })
	if code, out, errOut := cli(t, "--prefix", p, "up"); code != 0 {
		t.Fatalf("up: exit %d\n%s\n%s", code, out, errOut)
	}
	if code, _, errOut := cli(t, "--prefix", p, "up"); code != 1 || !strings.Contains(errOut, "already up") {
		t.Errorf("second up: exit %d, %q; want a clear refusal", code, errOut)
	}

	status := func() (statusJSON, string) {
		t.Helper()
		code, out, errOut := cli(t, "--prefix", p, "status", "--json")
		if code != 0 {
			t.Fatalf("status: exit %d: %s", code, errOut)
		}
		var s statusJSON
		if err := json.Unmarshal([]byte(out), &s); err != nil {
			t.Fatalf("status JSON: %v\n%s", err, out)
		}
		// Faults without the traffic counters, which move on their own.
		var faults []string
		for _, tn := range s.Tunnels {
			f := tn["faults"].(map[string]any)
			delete(f, "forwarded")
			delete(f, "dropped")
			b, _ := json.Marshal(f)
			faults = append(faults, tn["name"].(string)+string(b))
		}
		return s, strings.Join(faults, "\n")
	}
	s, before := status()
	if len(s.Tunnels) != 4 {
		t.Fatalf("status lists %d tunnels, want 4", len(s.Tunnels))
	}
	for _, key := range []string{"name", "site", "namespace", "device", "hub_device", "local_address", "remote_address", "faults"} {
		if _, ok := s.Tunnels[0][key]; !ok {
			t.Errorf("status tunnel lacks %q: %v", key, s.Tunnels[0])
		}
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"fault", "nope", "loss=5"}, `unknown path "nope"`},
		{[]string{"fault", "dc1-primary", "loss=150"}, "loss must be a percentage from 0 to 100"},
		{[]string{"fault", "dc1-primary", "delay=abc"}, "delay must be a duration"},
		{[]string{"fault", "dc1-primary", "delay=10ms", "loss=-1"}, "loss must be"}, // nothing applied, not even the good part
		{[]string{"fault", "dc1-primary", "warp=9"}, `unknown fault "warp"`},
		{[]string{"exec", "nosite", "--", "true"}, `unknown site "nosite"`},
	} {
		code, _, errOut := cli(t, append([]string{"--prefix", p}, tc.args...)...)
		if code == 0 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want an error containing %q", tc.args, code, errOut, tc.want)
		}
	}
	if _, after := status(); after != before {
		t.Errorf("bad input changed the lab:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	if code, out, _ := cli(t, "--prefix", p, "fault", "dc1-primary", "loss=5", "delay=10ms"); code != 0 || !strings.Contains(out, "loss=5% delay=10ms") {
		t.Errorf("good fault: exit %d, %q", code, out)
	}
	if _, after := status(); after == before {
		t.Error("a good fault did not change the status")
	}
	if code, out, _ := cli(t, "--prefix", p, "exec", "dc1", "--", "ip", "-br", "link"); code != 0 || !strings.Contains(out, p+"dc1p") {
		t.Errorf("exec: exit %d, %q", code, out)
	}
	if code, _, _ := cli(t, "--prefix", p, "exec", "dc1", "--", "false"); code != 1 {
		t.Errorf("exec false: exit %d, want the command's 1", code)
	}
	if code, _, errOut := cli(t, "--prefix", p, "down"); code != 0 {
		t.Fatalf("down: %d %s", code, errOut)
	}
	if code, _, errOut := cli(t, "--prefix", p, "status"); code != 1 || !strings.Contains(errOut, "no lab") {
		t.Errorf("status after down: exit %d, %q", code, errOut)
	}
}

// TestDemo plays the whole timeline fast against real agents and checks that
// what the agents report follows the faults, then that nothing is left.
func TestDemo(t *testing.T) {
	labtest.Require(t)
	agent := labtest.BuildBinary(t, "./cmd/wgpulse")
	p := "m" + labtest.UniquePrefix()
	t.Cleanup(func() { _ = lab.DownPrefix(p, nil) })
	code, out, errOut := cli(t, "--prefix", p, "demo", "--agent", agent, "--step", "3s")
	if code != 0 {
		t.Fatalf("demo: exit %d\n%s\n%s", code, out, errOut)
	}
	for _, st := range timeline {
		if !strings.Contains(out, st.title) {
			t.Errorf("demo output lacks step %q", st.title)
		}
	}
	section := func(from, to string) string {
		i := strings.Index(out, from)
		j := strings.Index(out, to)
		if i < 0 || j < i {
			t.Fatalf("no section %q..%q in:\n%s", from, to, out)
		}
		return out[i:j]
	}
	// After the rebind step the hub agent counts an endpoint change for dc2-primary.
	rebind := section("step 4/9", "step 5/9")
	if !rowHas(rebind, "dc2-primary", " 1 ") {
		t.Errorf("hub agent shows no endpoint change for dc2-primary after the rebind:\n%s", rebind)
	}
	if mtu := section("step 5/9", "step 6/9"); !rowHas(mtu, "dc1-primary", "LOST") || !rowHas(mtu, "dc1-backup", "passes") {
		t.Errorf("MTU step does not show the black hole on dc1-primary only:\n%s", mtu)
	}
	// The failover shows live: both ends move dc1's LAN traffic to the
	// backup with the decision's reason, within a second, and come back.
	down := section("step 6/9", "step 7/9")
	for _, want := range []string{"dc1  agent, group hub  on BACKUP", "hub  agent, group dc1  on BACKUP", "switch_to_backup ok", "7 probes lost in a row"} {
		if !strings.Contains(down, want) {
			t.Errorf("the DOWN step does not show %q:\n%s", want, down)
		}
	}
	m := regexp.MustCompile(`on the backup after (\d+) ms`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no failover summary:\n%s", out)
	}
	if ms, _ := strconv.Atoi(m[1]); ms > 1000 {
		t.Errorf("demo failover outage %d ms, want <= 1000 (fast profile)", ms)
	}
	if !strings.Contains(out, "return_to_primary ok") || !strings.Contains(out, "since then: no ping lost; TCP stream intact") {
		t.Errorf("the return is not shown, or lost pings or broke TCP:\n%s", out[strings.Index(out, "step 7/9"):])
	}
	// A path that passes ICMP and drops TCP: dc2's groups, which probe with
	// TCP connects, move to the backup at both ends, and come back.
	tcp := section("step 8/9", "== failover")
	for _, want := range []string{"dc2  agent, group hub  on BACKUP", "hub  agent, group dc2  on BACKUP"} {
		if !strings.Contains(tcp, want) {
			t.Errorf("the TCP step does not show %q:\n%s", want, tcp)
		}
	}
	if !strings.Contains(tcp, "return_to_primary ok") {
		t.Errorf("dc2 does not return after TCP passes again:\n%s", tcp)
	}
	if !strings.Contains(out, "== cleaning up") {
		t.Error("demo did not clean up")
	}
	if left := leftoverNamespaces(p); left != "" {
		t.Errorf("after the demo: %s", left)
	}
}

func rowHas(section, tunnel, want string) bool {
	for _, line := range strings.Split(section, "\n") {
		if strings.Contains(line, tunnel) && strings.Contains(line, want) {
			return true
		}
	}
	return false
}

func leftoverNamespaces(prefix string) string {
	entries, _ := os.ReadDir(lab.NetnsDir)
	var left []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			left = append(left, e.Name())
		}
	}
	return strings.Join(left, " ")
}

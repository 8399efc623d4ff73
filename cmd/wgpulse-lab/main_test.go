package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

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
	rebind := section("step 4/10", "step 5/10")
	if !rowHas(rebind, "dc2-primary", " 1 ") {
		t.Errorf("hub agent shows no endpoint change for dc2-primary after the rebind:\n%s", rebind)
	}
	mtu := section("step 5/10", "step 6/10")
	if !rowHas(mtu, "dc1-primary", "LOST") || !rowHas(mtu, "dc1-backup", "passes") {
		t.Errorf("MTU step does not show the black hole on dc1-primary only:\n%s", mtu)
	}
	// Every value is in from the first tick on: no column is "-".
	rows := tableRows(t, out)
	if len(rows) < len(timeline)*2*4 {
		t.Fatalf("%d table rows, want at least 2 ticks of 4 tunnels per step", len(rows))
	}
	for _, r := range rows {
		for col, cell := range r {
			if cell == "-" || strings.HasPrefix(cell, "- /") || strings.HasSuffix(cell, "/ -") {
				t.Errorf("column %q is %q: %v", demoColumns[col], cell, r)
			}
		}
	}
	// The black hole as dc1's agent sees it at the end of the step: the
	// measured path MTU (the lab lets 1232 through) and the MTU policy's
	// route MTU in force; dc1-backup keeps 1420.
	last := func(sec, tunnel string) map[string]string {
		var row map[string]string
		for _, r := range tableRows(t, sec) {
			if r[0] == tunnel {
				row = map[string]string{}
				for i, c := range r {
					row[demoColumns[i]] = c
				}
			}
		}
		if row == nil {
			t.Fatalf("no row for %s in:\n%s", tunnel, sec)
		}
		return row
	}
	hole := last(mtu, "dc1-primary")
	var labMTU, agentMTU, inForce int
	if _, err := fmt.Sscanf(hole["path MTU lab/agent"], "%d / %d", &labMTU, &agentMTU); err != nil || labMTU != 1232 || agentMTU > 1300 || agentMTU < 1232-20 {
		t.Errorf("black hole: path MTU lab/agent %q, want 1232 / within 20 bytes below it (and never above 1300)", hole["path MTU lab/agent"])
	}
	if _, err := fmt.Sscanf(hole["MTU in force"], "%d (mtu policy", &inForce); err != nil || inForce != agentMTU {
		t.Errorf("black hole: MTU in force %q, want the measured %d set by the MTU policy", hole["MTU in force"], agentMTU)
	}
	if b := last(mtu, "dc1-backup"); b["path MTU lab/agent"] != "1420 / 1420" || b["MTU in force"] != "1420" {
		t.Errorf("black hole: dc1-backup shows %q and %q, want 1420 / 1420 and 1420", b["path MTU lab/agent"], b["MTU in force"])
	}
	// 30ms ± 20ms of delay on dc2-primary: the agent sees milliseconds of
	// jitter there, where the clean paths have tens of microseconds.
	jitter := last(section("step 3/10", "step 4/10"), "dc2-primary")["jitter lab/agent"]
	if _, seen, _ := strings.Cut(jitter, " / "); func() bool { d, err := time.ParseDuration(seen); return err != nil || d < time.Millisecond }() {
		t.Errorf("jitter step: dc2-primary jitter lab/agent %q, want the agent's above 1ms", jitter)
	}
	if r := last(section("step 6/10", "step 7/10"), "dc1-primary"); r["health lab/agent"] != "down / down" {
		t.Errorf("DOWN step: dc1-primary health lab/agent %q, want down / down", r["health lab/agent"])
	}
	if r := last(section("step 2/10", "step 3/10"), "dc1-primary"); strings.HasSuffix(r["loss lab/agent"], "/ 0%") {
		t.Errorf("20%% loss on dc1-primary: the agent shows loss %q", r["loss lab/agent"])
	}
	// The failover shows live: both ends move dc1's LAN traffic to the
	// backup with the decision's reason, within a second, and come back.
	down := section("step 6/10", "step 7/10")
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
		t.Errorf("the return is not shown, or lost pings or broke TCP:\n%s", out[strings.Index(out, "step 7/10"):])
	}
	// A path that passes ICMP and drops TCP: dc2's groups, which probe with
	// TCP connects, move to the backup at both ends, and come back.
	tcp := section("step 8/10", "== failover") // the return may come in the next steps: they are short here
	for _, want := range []string{"dc2  agent, group hub  on BACKUP", "hub  agent, group dc2  on BACKUP"} {
		if !strings.Contains(tcp, want) {
			t.Errorf("the TCP step does not show %q:\n%s", want, tcp)
		}
	}
	if !strings.Contains(tcp, "return_to_primary ok") {
		t.Errorf("dc2 does not return after TCP passes again:\n%s", tcp)
	}
	// The black hole gone, the MTU policy takes its change back: the next
	// full search measures 1420 and the MTU in force is the device's again.
	if r := last(section("step 10/10", "== failover"), "dc1-primary"); r["path MTU lab/agent"] != "1420 / 1420" || r["MTU in force"] != "1420" {
		t.Errorf("after the black hole: dc1-primary path MTU lab/agent %q, MTU in force %q; want 1420 / 1420 and 1420 (the policy's change taken back)",
			r["path MTU lab/agent"], r["MTU in force"])
	}
	if strings.Contains(out, "did not show") {
		t.Errorf("a step waited for the agents in vain:\n%s", out)
	}
	if !strings.Contains(out, "== cleaning up") {
		t.Error("demo did not clean up")
	}
	if left := leftoverNamespaces(p); left != "" {
		t.Errorf("after the demo: %s", left)
	}
}

// tableRows are the demo table's tunnel rows in out, split into the cells
// of demoColumns (cells are 2 or more spaces apart).
func tableRows(t *testing.T, out string) [][]string {
	t.Helper()
	var rows [][]string
	sep := regexp.MustCompile(`\s{2,}`)
	for _, line := range strings.Split(out, "\n") {
		cells := sep.Split(strings.TrimSpace(line), -1)
		if !strings.HasPrefix(line, "  ") || !regexp.MustCompile(`^dc\d-(primary|backup)$`).MatchString(cells[0]) {
			continue
		}
		if len(cells) != len(demoColumns) {
			t.Fatalf("table row with %d cells, want %d: %q", len(cells), len(demoColumns), line)
		}
		rows = append(rows, cells)
	}
	return rows
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

package agent_test

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/wgpulse/wgpulse/cmd/internal/agent"
)

// The README renders as written: its code fences are balanced, and every
// ```yaml block that starts at a top-level key of the config is a config
// file wgpulse loads (what `wgpulse check-config` runs).
func TestREADMEConfigBlocksLoad(t *testing.T) {
	b, err := os.ReadFile("../../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	fence := regexp.MustCompile("^\\s*```")
	topKey := regexp.MustCompile(`^(collector|prober|alerts|slo|remediate):`)
	var open, checked int
	var block []string
	inYAML := false
	for i, l := range lines {
		if !fence.MatchString(l) {
			if inYAML {
				block = append(block, l)
			}
			continue
		}
		if open == 0 {
			open, inYAML, block = i+1, strings.TrimSpace(l) == "```yaml", nil
			continue
		}
		if inYAML && len(block) > 0 && topKey.MatchString(block[0]) {
			checked++
			if _, err := agent.Parse([]byte(strings.Join(block, "\n")), "README.md block at line "+itoa(open)); err != nil {
				t.Errorf("%v", err)
			}
		}
		open, inYAML = 0, false
	}
	if open != 0 {
		t.Errorf("README.md: the code fence opened at line %d is never closed", open)
	}
	if checked < 4 {
		t.Errorf("only %d config blocks checked: the README's configuration reference is gone?", checked)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

package agent_test

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/wgpulse/wgpulse/cmd/internal/agent"
)

// topLevel is a line that starts a section of the config file.
var topLevel = regexp.MustCompile(`^(collector|prober|alerts|slo|remediate):`)

// The README renders as meant, and its config examples are configs: every
// code fence closes, and every ```yaml block that starts at a top-level key
// of the config file passes the parser `wgpulse check-config` uses (unknown
// keys and bad values are errors there).
func TestREADMEConfigBlocksAreValid(t *testing.T) {
	f, err := os.Open(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	type block struct {
		line int
		lang string
		body strings.Builder
	}
	var (
		open   *block
		blocks []*block
		lineNo int
	)
	s := bufio.NewScanner(f)
	for s.Scan() {
		lineNo++
		line := s.Text()
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "```") {
			if open == nil {
				open = &block{line: lineNo, lang: strings.TrimPrefix(trimmed, "```")}
				continue
			}
			if trimmed != "```" {
				t.Errorf("README.md:%d: fence %q opens inside the block of line %d: close that one first", lineNo, trimmed, open.line)
			}
			blocks = append(blocks, open)
			open = nil
			continue
		}
		if open != nil {
			fmt.Fprintln(&open.body, line)
		}
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	if open != nil {
		t.Fatalf("README.md:%d: the code block opened here never closes", open.line)
	}
	checked := 0
	for _, b := range blocks {
		if b.lang != "yaml" {
			continue
		}
		first := ""
		for _, l := range strings.Split(b.body.String(), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				first = l
				break
			}
		}
		if !topLevel.MatchString(first) {
			continue
		}
		checked++
		if _, err := agent.Parse([]byte(b.body.String()), fmt.Sprintf("README.md block at line %d", b.line)); err != nil {
			t.Errorf("the yaml block at README.md:%d is not a valid config: %v", b.line, err)
		}
	}
	if checked < 5 {
		t.Errorf("only %d config blocks found in the README: the reference lost its fences?", checked)
	}
}

package vm_test

import (
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// The VM tests print minutes of phases, and a test that fails early has
// its message far above the end of the output, where a CI excerpt of the
// tail does not reach (a failure of TestPoliciesOnKernelWireGuard once
// showed only its later, passing phases). So every failure is also
// recorded, and TestMain prints them again after the last test.

// failures are the package's failure messages so far, "Test: message".
var failures struct {
	sync.Mutex
	lines []string
}

// Caps of the summary: the first lines of each message, so a failure that
// carries a journal still leaves room for the next.
const (
	failureLines = 30
	failureChars = 3000
)

func record(t testing.TB, msg string) {
	lines := strings.Split(strings.TrimSpace(msg), "\n")
	if len(lines) > failureLines {
		lines = append(lines[:failureLines], fmt.Sprintf("[%d more lines above, in the test's own output]", len(lines)-failureLines))
	}
	s := strings.Join(lines, "\n    ")
	if len(s) > failureChars {
		s = s[:failureChars] + " [cut]"
	}
	failures.Lock()
	failures.lines = append(failures.lines, t.Name()+": "+s)
	failures.Unlock()
}

// errorf is t.Errorf, recorded for the summary.
func errorf(t testing.TB, format string, args ...any) {
	t.Helper()
	record(t, fmt.Sprintf(format, args...))
	t.Errorf(format, args...)
}

// fatalf is t.Fatalf, recorded for the summary.
func fatalf(t testing.TB, format string, args ...any) {
	t.Helper()
	record(t, fmt.Sprintf(format, args...))
	t.Fatalf(format, args...)
}

// summary is what TestMain prints after the tests ("" when none failed).
func summary() string {
	failures.Lock()
	defer failures.Unlock()
	if len(failures.lines) == 0 {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "=== %d failure(s) in the VM tests, repeated from above:\n", len(failures.lines))
	for i, l := range failures.lines {
		fmt.Fprintf(&b, "  %d. %s\n", i+1, l)
	}
	return b.String()
}

func TestMain(m *testing.M) {
	code := m.Run()
	if s := summary(); s != "" {
		fmt.Print(s)
	}
	os.Exit(code)
}

// The summary holds each failure once, in order, with its test's name;
// a long message is cut to its first lines, and the cut says so.
func TestFailureSummary(t *testing.T) {
	failures.Lock()
	saved := failures.lines
	failures.lines = nil
	failures.Unlock()
	t.Cleanup(func() {
		failures.Lock()
		failures.lines = saved
		failures.Unlock()
	})
	if s := summary(); s != "" {
		t.Fatalf("no failures, summary %q", s)
	}
	record(t, "endpoint failover took 4s, above 3.5s")
	record(t, strings.Repeat("journal line\n", 100))
	s := summary()
	for _, want := range []string{
		"=== 2 failure(s)",
		"1. TestFailureSummary: endpoint failover took 4s, above 3.5s\n",
		"2. TestFailureSummary: journal line\n",
		"[70 more lines above, in the test's own output]",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("summary lacks %q:\n%s", want, s)
		}
	}
	if n := strings.Count(s, "journal line"); n != failureLines {
		t.Errorf("%d journal lines in the summary, want the first %d", n, failureLines)
	}
}

// A decision line of the agent comes out as its time and the fields that
// say why; a line that is not slog text is kept as it is.
func TestCompactLogLine(t *testing.T) {
	var b strings.Builder
	log := slog.New(slog.NewTextHandler(&b, nil))
	log.Info("remediation decision", "audit", true, "policy", "failover", "group", "wan", "action", "return_to_primary",
		"from", "backup", "to", "primary", "reason", "primary up for 5s (hold_down 5s)", "code", "primary_up", "mode", "auto",
		"result", "ok", "duration", 3*time.Millisecond)
	got := compactLogLine(strings.TrimSpace(b.String()))
	want := regexp.MustCompile(`^\d\d:\d\d:\d\d\.\d{3} remediation decision action=return_to_primary from=backup to=primary reason=primary up for 5s \(hold_down 5s\) code=primary_up result=ok$`)
	if !want.MatchString(got) {
		t.Errorf("compact line %q, want it to match %s", got, want)
	}
	if got := compactLogLine("wgsp	abc=	192.168.72.1:51821"); got != "wgsp	abc=	192.168.72.1:51821" {
		t.Errorf("a line with no slog fields came out as %q", got)
	}
}

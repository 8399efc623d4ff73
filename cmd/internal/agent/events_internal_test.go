package agent

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wgpulse/wgpulse/collector"
)

// The key first-seen time survives a restart (a new component reading the
// same file), restarts with a new key, and without a writable file is kept
// in memory with one warning.
func TestKeyFirstSeenSurvivesRestarts(t *testing.T) {
	file := filepath.Join(t.TempDir(), "state", "keys.json")
	newComp := func(path string, logs *bytes.Buffer) *eventsComponent {
		a := &Agent{logger: slog.New(slog.NewTextHandler(logs, nil))}
		cfg := DefaultConfig()
		cfg.Collector.KeyStateFile = path
		return newEventsComponent(a, cfg)
	}
	snap := func(at time.Time, key string) *collector.Snapshot {
		return &collector.Snapshot{Time: at, Devices: []collector.Device{{Name: "wg0", PublicKey: key}}}
	}
	want := func(c *eventsComponent, key string, at time.Time) {
		t.Helper()
		if n := testutil.CollectAndCount(c.keyAge); n != 1 {
			t.Errorf("%d key age series, want 1", n)
		}
		if got := testutil.ToFloat64(c.keyAge.WithLabelValues("wg0", key)); got != float64(at.Unix()) {
			t.Errorf("key %s first seen %v, want %v", key, time.Unix(int64(got), 0).UTC(), at)
		}
	}
	t1 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var logs bytes.Buffer
	c := newComp(file, &logs)
	c.observeKeys(snap(t1, "key-one"))
	want(c, "key-one", t1)
	if b, err := os.ReadFile(file); err != nil || !strings.Contains(string(b), "key-one") {
		t.Fatalf("state file: %s %v", b, err)
	}

	restarted := newComp(file, &logs)
	restarted.observeKeys(snap(t1.Add(24*time.Hour), "key-one"))
	want(restarted, "key-one", t1)

	t3 := t1.Add(48 * time.Hour)
	restarted.observeKeys(snap(t3, "key-two"))
	want(restarted, "key-two", t3)
	again := newComp(file, &logs)
	again.observeKeys(snap(t3.Add(time.Hour), "key-two"))
	want(again, "key-two", t3)

	// Not writable: in memory, one warning however many changes.
	logs.Reset()
	ro := newComp("/proc/wgpulse-no-such-dir/keys.json", &logs)
	ro.observeKeys(snap(t1, "key-one"))
	ro.observeKeys(snap(t3, "key-two"))
	want(ro, "key-two", t3)
	if n := strings.Count(logs.String(), "cannot save the key state file"); n != 1 {
		t.Errorf("%d warnings for an unwritable key state file, want 1:\n%s", n, logs.String())
	}
}

package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestCommands(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yml")
	bad := filepath.Join(dir, "bad.yml")
	if err := os.WriteFile(good, []byte("collector:\n  poll_interval: 10s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("collector:\n  poll_interval: 10ms\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want int
	}{
		{[]string{"check-config", good}, 0},
		{[]string{"check-config", bad}, 1},
		{[]string{"check-config", filepath.Join(dir, "missing.yml")}, 1},
		{[]string{"version"}, 0},
		{[]string{"--no-such-flag"}, 2},
		{[]string{"--runtime.gomaxprocs=-1"}, 1}, // refused before the agent starts
	} {
		if got := run(tc.args); got != tc.want {
			t.Errorf("wgpulse %v: exit %d, want %d", tc.args, got, tc.want)
		}
	}
}

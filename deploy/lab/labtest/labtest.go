// Package labtest runs the lab from Go tests: it skips (or fails, under
// WGPULSE_REQUIRE_LAB=1) where the lab cannot run, builds the binaries under
// test once, and ties labs and agents to the test's cleanup. Everything it
// starts is deploy/lab's product code, the same the CLI and demo use.
package labtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/wgpulse/wgpulse/deploy/lab"
)

// EnvRequire makes lab tests fail instead of skip when the lab cannot run.
const EnvRequire = "WGPULSE_REQUIRE_LAB"

// Require skips the test when the lab cannot run here (not root, no
// /dev/net/tun, no iproute2), or fails it under WGPULSE_REQUIRE_LAB=1.
func Require(t testing.TB) {
	t.Helper()
	if testing.Short() && os.Getenv(EnvRequire) != "1" {
		t.Skip("lab test skipped in -short mode")
	}
	var why string
	switch {
	case os.Geteuid() != 0:
		why = "needs root (network namespaces, TUN devices)"
	case !exists("/dev/net/tun"):
		why = "needs /dev/net/tun"
	default:
		if _, err := exec.LookPath("ip"); err != nil {
			why = "needs iproute2 (the ip command)"
		}
	}
	if why == "" {
		return
	}
	if os.Getenv(EnvRequire) == "1" {
		t.Fatalf("lab test cannot run: %s, and %s=1 forbids skipping", why, EnvRequire)
	}
	t.Skipf("lab test skipped: %s (set %s=1 to make this a failure)", why, EnvRequire)
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// UniquePrefix returns a short random prefix for namespace and device names,
// so tests in different packages can build labs at the same time.
func UniquePrefix() string {
	b := make([]byte, 2)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

var (
	buildMu    sync.Mutex
	buildCache = map[string]string{}
)

// BuildBinary builds a main package of this module (e.g. "./cmd/wgpulse")
// once per test binary and returns the path of the executable.
func BuildBinary(t testing.TB, pkg string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := buildCache[pkg]; ok {
		return p
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(out)) == "" || strings.TrimSpace(string(out)) == os.DevNull {
		t.Fatalf("cannot find the module root to build %s: %v", pkg, err)
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	dir, err := os.MkdirTemp("", "wgpulse-bin-")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", bin, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0") // static, as `make build` ships it
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	buildCache[pkg] = bin
	return bin
}

// Tool returns the path of a program the tests need, or fails naming the
// Debian package that has it (make test installs them).
func Tool(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: install the Debian package %s (make test does)", name, pkg)
	}
	return p
}

// StartAgent runs the wgpulse binary in namespace ns listening on addr
// (inside ns) with extra flags, and waits until it listens. It is stopped at
// test cleanup, and its logs are printed when the test failed.
func StartAgent(t testing.TB, bin, ns, addr string, flags ...string) *lab.Agent {
	t.Helper()
	return StartAgentWith(t, lab.AgentOptions{Bin: bin, NS: ns, Addr: addr, Args: flags})
}

// StartAgentWith is StartAgent with every option.
func StartAgentWith(t testing.TB, o lab.AgentOptions) *lab.Agent {
	t.Helper()
	// Its state (the key first-seen file) in the test's directory, as
	// systemd's StateDirectory= would give it.
	o.Env = append([]string{"STATE_DIRECTORY=" + t.TempDir()}, o.Env...)
	a, err := lab.StartAgent(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.Stop()
		if t.Failed() {
			t.Logf("agent in %s logs:\n%s", o.NS, a.Logs())
		}
	})
	return a
}

// Start builds a lab for a test with a unique prefix and removes it at
// cleanup. It skips (or fails, under WGPULSE_REQUIRE_LAB=1) when the lab
// cannot run here.
func Start(t testing.TB, cfg lab.Config) *lab.Lab {
	t.Helper()
	Require(t)
	if cfg.Prefix == "" {
		cfg.Prefix = "t" + UniquePrefix()
	}
	l, err := lab.Up(context.Background(), cfg, lab.Options{Progress: testWriter{t}})
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Down(); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	return l
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

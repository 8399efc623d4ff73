package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
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
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	buildCache[pkg] = bin
	return bin
}

// Agent is a wgpulse process running inside a namespace.
type Agent struct {
	NS     string
	Addr   string // host:port inside NS
	Scheme string
	Client *http.Client
	cmd    *exec.Cmd
	logMu  sync.Mutex
	log    bytes.Buffer
	done   chan struct{}
}

// Stop interrupts the agent and waits for it (SIGKILL after 5 s). It is
// called at test cleanup; benchmarks that start an agent per iteration call
// it themselves. Stopping twice is harmless.
func (a *Agent) Stop() {
	_ = a.cmd.Process.Signal(os.Interrupt)
	select {
	case <-a.done:
	case <-time.After(5 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.done
	}
}

// Signal sends sig to the agent.
func (a *Agent) Signal(sig os.Signal) error { return a.cmd.Process.Signal(sig) }

// Pid is the agent's process id (`ip netns exec` execs the agent in place).
func (a *Agent) Pid() int { return a.cmd.Process.Pid }

// Logs returns everything the agent wrote to stdout and stderr so far.
func (a *Agent) Logs() string {
	a.logMu.Lock()
	defer a.logMu.Unlock()
	return a.log.String()
}

type lockedWriter struct{ a *Agent }

func (w lockedWriter) Write(p []byte) (int, error) {
	w.a.logMu.Lock()
	defer w.a.logMu.Unlock()
	return w.a.log.Write(p)
}

// StartAgent runs the wgpulse binary in namespace ns listening on addr
// (inside ns) with extra flags, and waits for /-/ready unless the flags set a
// web config (then it waits for the port). It is stopped at test cleanup.
func StartAgent(t testing.TB, bin, ns, addr string, flags ...string) *Agent {
	t.Helper()
	a := &Agent{NS: ns, Addr: addr, Scheme: "http", done: make(chan struct{})}
	a.Client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: DialContextIn(ns)}}
	args := append([]string{"--web.listen-address=" + addr}, flags...)
	if !slices.ContainsFunc(flags, func(f string) bool { return strings.HasPrefix(f, "--log.level") }) {
		args = append(args, "--log.level=debug")
	}
	a.cmd = Command(ns, bin, args...)
	a.cmd.Stdout, a.cmd.Stderr = lockedWriter{a}, lockedWriter{a}
	if err := a.cmd.Start(); err != nil {
		t.Fatalf("starting agent in %s: %v", ns, err)
	}
	go func() { _ = a.cmd.Wait(); close(a.done) }()
	t.Cleanup(func() {
		a.Stop()
		if t.Failed() {
			t.Logf("agent in %s logs:\n%s", ns, a.Logs())
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		conn, err := DialContextIn(ns)(context.Background(), "tcp", addr)
		if err == nil {
			conn.Close()
			break
		}
		select {
		case <-a.done:
			t.Fatalf("agent in %s exited early:\n%s", ns, a.Logs())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent in %s not listening on %s after 15s:\n%s", ns, addr, a.Logs())
		}
	}
	return a
}

// Get fetches path from the agent and returns status and body.
func (a *Agent) Get(path string) (int, string, error) {
	resp, err := a.Client.Get(fmt.Sprintf("%s://%s%s", a.Scheme, a.Addr, path))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// Start builds a lab for a test with a unique prefix and removes it at
// cleanup. It skips (or fails, under WGPULSE_REQUIRE_LAB=1) when the lab
// cannot run here.
func Start(t testing.TB, cfg Config) *Lab {
	t.Helper()
	Require(t)
	if cfg.Prefix == "" {
		cfg.Prefix = "t" + UniquePrefix()
	}
	l, err := Up(context.Background(), cfg, Options{Progress: testWriter{t}})
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

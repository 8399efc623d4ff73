package lab

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// AgentOptions say how to run one wgpulse agent inside a namespace.
type AgentOptions struct {
	Bin  string   // the wgpulse binary
	NS   string   // network namespace
	Addr string   // listen address inside NS (host:port)
	Args []string // more flags; --log.level=debug unless one is given
	Env  []string // added to the environment (e.g. OTEL_* or the lab prefix)
	// Log also receives everything the agent writes (a file for the demo).
	Log io.Writer
	// Ready waits for /-/ready (true) or only for the port (false, e.g.
	// when a web config asks for credentials).
	Ready bool
	// NoUserspaceDevices gives the agent an empty /run/wireguard (a tmpfs
	// in its own mount namespace): UAPI sockets are files, not netns
	// members, so without it an agent in any namespace also watches every
	// userspace device on the machine, a lab's or a concurrent test's. For
	// measurements of the prober alone (it still sees kernel devices in
	// NS).
	NoUserspaceDevices bool
}

// Agent is a wgpulse process running inside a namespace.
type Agent struct {
	NS     string
	Addr   string // host:port inside NS
	Scheme string
	Client *http.Client // dials inside NS
	cmd    *exec.Cmd
	logMu  sync.Mutex
	log    bytes.Buffer
	done   chan struct{}
	stop   sync.Once
}

// StartAgent runs the agent and waits until it listens (or is ready). It
// dies with this process (SIGKILL), so a crashed test or demo leaves none.
func StartAgent(ctx context.Context, o AgentOptions) (*Agent, error) {
	a := &Agent{NS: o.NS, Addr: o.Addr, Scheme: "http", done: make(chan struct{})}
	a.Client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: DialContextIn(o.NS)}}
	args := append([]string{"--web.listen-address=" + o.Addr}, o.Args...)
	if !slices.ContainsFunc(o.Args, func(f string) bool { return strings.HasPrefix(f, "--log.level") }) {
		args = append(args, "--log.level=debug")
	}
	if o.NoUserspaceDevices {
		// unshare execs sh, sh execs the agent: the pid stays the agent's.
		args = append([]string{"-m", "--propagation", "private", "sh", "-c",
			`mkdir -p /run/wireguard && mount -t tmpfs -o size=64k,mode=0755 wgpulse-empty /run/wireguard && exec "$0" "$@"`, o.Bin}, args...)
		a.cmd = Command(o.NS, "unshare", args...)
	} else {
		a.cmd = Command(o.NS, o.Bin, args...)
	}
	a.cmd.Env = append(os.Environ(), o.Env...)
	var w io.Writer = lockedWriter{a}
	if o.Log != nil {
		w = io.MultiWriter(w, o.Log)
	}
	a.cmd.Stdout, a.cmd.Stderr = w, w
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := a.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting agent in %s: %w", o.NS, err)
	}
	go func() { _ = a.cmd.Wait(); close(a.done) }()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ok := false
		if o.Ready {
			code, _, err := a.Get("/-/ready")
			ok = err == nil && code == http.StatusOK
		} else if conn, err := DialContextIn(o.NS)(ctx, "tcp", o.Addr); err == nil {
			conn.Close()
			ok = true
		}
		if ok {
			return a, nil
		}
		select {
		case <-a.done:
			return nil, fmt.Errorf("agent in %s exited early:\n%s", o.NS, a.Logs())
		case <-ctx.Done():
			a.Stop()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			a.Stop()
			return nil, fmt.Errorf("agent in %s not listening on %s after 15s:\n%s", o.NS, o.Addr, a.Logs())
		}
	}
}

// Stop interrupts the agent and waits for it (SIGKILL after 5 s). Stopping
// twice, or a killed agent, is harmless.
func (a *Agent) Stop() {
	a.stop.Do(func() {
		_ = a.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-a.done:
		case <-time.After(5 * time.Second):
			_ = a.cmd.Process.Kill()
			<-a.done
		}
	})
}

// Kill ends the agent with SIGKILL (a crash: no cleanup of its own) and
// waits for it.
func (a *Agent) Kill() {
	a.stop.Do(func() {
		_ = a.cmd.Process.Kill()
		<-a.done
	})
}

// Done is closed when the agent has exited.
func (a *Agent) Done() <-chan struct{} { return a.done }

// ExitCode is the agent's exit code once Done (-1 if killed by a signal).
func (a *Agent) ExitCode() int { return a.cmd.ProcessState.ExitCode() }

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

// Get fetches path from the agent and returns status and body.
func (a *Agent) Get(path string) (int, string, error) {
	return a.Do("GET", path)
}

// Do sends a request without a body (POST /-/remediate/pause, say).
func (a *Agent) Do(method, path string) (int, string, error) {
	req, err := http.NewRequest(method, fmt.Sprintf("%s://%s%s", a.Scheme, a.Addr, path), nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := a.Client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

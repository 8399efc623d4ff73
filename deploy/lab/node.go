package lab

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
)

// The lab re-executes its own binary (the wgpulse-lab CLI, or a test binary)
// to run child processes inside namespaces. These variables select the role.
const (
	envChild  = "WGPULSE_LAB_CHILD"
	envDevice = "WGPULSE_LAB_DEVICE"
	envMTU    = "WGPULSE_LAB_MTU"
)

// RunChild runs the child role this process was started for, if any, and
// exits. Call it first thing in main and in TestMain of packages using the lab:
//
//	func TestMain(m *testing.M) { lab.RunChild(); os.Exit(m.Run()) }
func RunChild() {
	switch os.Getenv(envChild) {
	case "":
		return
	case "wg-node":
		mtu, _ := strconv.Atoi(os.Getenv(envMTU))
		if err := runNode(os.Getenv(envDevice), mtu); err != nil {
			fmt.Fprintf(os.Stderr, "wg-node %s: %v\n", os.Getenv(envDevice), err)
			os.Exit(1)
		}
		os.Exit(0)
	case "relay":
		if err := runRelayChild(); err != nil {
			fmt.Fprintf(os.Stderr, "relay: %v\n", err)
			os.Exit(1)
		}
		os.Exit(0)
	default:
		fmt.Fprintf(os.Stderr, "unknown %s=%q\n", envChild, os.Getenv(envChild))
		os.Exit(2)
	}
}

// runNode is a userspace WireGuard device: TUN plus UAPI socket, exactly what
// wireguard-go does, configured afterwards over UAPI (wgctrl or `wg set`).
func runNode(name string, mtu int) error {
	if name == "" {
		return errors.New(envDevice + " not set")
	}
	if mtu <= 0 {
		mtu = device.DefaultMTU
	}
	tdev, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return fmt.Errorf("creating TUN (needs root and /dev/net/tun): %w", err)
	}
	logger := device.NewLogger(device.LogLevelError, fmt.Sprintf("(%s) ", name))
	dev := device.NewDevice(tdev, conn.NewDefaultBind(), logger)
	defer dev.Close()
	uapiFile, err := ipc.UAPIOpen(name)
	if err != nil {
		return fmt.Errorf("opening UAPI socket: %w", err)
	}
	uapi, err := ipc.UAPIListen(name, uapiFile)
	if err != nil {
		return fmt.Errorf("listening on UAPI socket: %w", err)
	}
	defer uapi.Close()
	errs := make(chan error, 1)
	go func() {
		for {
			c, err := uapi.Accept()
			if err != nil {
				errs <- err
				return
			}
			go dev.IpcHandle(c)
		}
	}()
	term := make(chan os.Signal, 1)
	signal.Notify(term, unix.SIGTERM, os.Interrupt)
	select {
	case <-term:
		return nil
	case err := <-errs:
		return err
	case <-dev.Wait():
		return nil
	}
}

// Proc is a lab child process (a WireGuard node or a relay).
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	Log  string
	done chan struct{} // closed when the process has exited and been reaped
}

// Pid returns the process id.
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// startChild starts this binary in namespace ns with the given child role.
// Detached children outlive the caller (the CLI's `up`); attached ones die
// with it (tests).
func startChild(ns, role string, env []string, logPath string, detached bool) (*Proc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := Command(ns, exe)
	cmd.Env = append(append(os.Environ(), envChild+"="+role), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if !detached {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Proc{Name: role, Cmd: cmd, Log: logPath, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	return p, nil
}

// StartNode starts a userspace WireGuard device named dev in namespace ns and
// waits until its UAPI socket accepts configuration. env is added to the
// child's environment.
func StartNode(ns, dev string, mtu int, logDir string, detached bool, env ...string) (*Proc, error) {
	p, err := startChild(ns, "wg-node", append([]string{envDevice + "=" + dev, envMTU + "=" + strconv.Itoa(mtu)}, env...),
		filepath.Join(logDir, dev+".log"), detached)
	if err != nil {
		return nil, fmt.Errorf("starting WireGuard node %s in %s: %w", dev, ns, err)
	}
	p.Name = dev
	sock := filepath.Join("/var/run/wireguard", dev+".sock")
	deadline := time.Now().Add(10 * time.Second)
	for {
		// Dial, not stat: the socket file exists from bind(2), before
		// listen(2), and a stale one from a killed node refuses until the
		// child replaces it. Either way a caller's configure would fail
		// with "connection refused".
		if c, err := net.DialTimeout("unix", sock, time.Second); err == nil {
			c.Close() // the device reads EOF and drops the connection
			break
		}
		select {
		case <-p.done:
			b, _ := os.ReadFile(p.Log)
			return nil, fmt.Errorf("WireGuard node %s in %s exited: %s", dev, ns, b)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.Stop()
			return nil, fmt.Errorf("WireGuard node %s in %s: no UAPI socket %s after 10s", dev, ns, sock)
		}
	}
	if err := IP("-n", ns, "link", "set", dev, "up"); err != nil {
		p.Stop()
		return nil, err
	}
	return p, nil
}

// Stop terminates the process (SIGTERM, then SIGKILL after 3 s).
func (p *Proc) Stop() {
	if p == nil || p.Cmd.Process == nil {
		return
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(3 * time.Second):
	}
	_ = p.Cmd.Process.Kill()
	<-p.done
}

package vm_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
	"github.com/wgpulse/wgpulse/deploy/lab/vm"
)

// testWriter sends the VM log to the test log, so each phase shows with
// its duration.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// image is the node image and the guest agent for a VM test, which skips
// (or fails under WGPULSE_REQUIRE_LAB=1) without root or the tools.
func image(t *testing.T) (vm.Image, string, *slog.Logger) {
	t.Helper()
	labtest.Require(t)
	if err := vm.CheckTools(); err != nil {
		if os.Getenv(labtest.EnvRequire) == "1" {
			fatalf(t, "%v", err)
		}
		t.Skip(err)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	start := time.Now()
	img, err := vm.Build(vm.DefaultCache, log)
	if err != nil {
		fatalf(t, "%v", err)
	}
	t.Logf("phase image: %s (kernel %s)", time.Since(start).Round(100*time.Millisecond), img.Release)
	return img, labtest.BuildBinary(t, "./cmd/wgpulse-lab"), log
}

// Two Debian nodes booted from the image (Debian's cloud kernel, systemd as
// PID 1), wired by a qemu dgram link on loopback: each loads the kernel's
// WireGuard module and brings up a kernel device to the other with `wg`,
// a file copied in at boot and one put at run time are there, the tunnel
// handshakes and carries pings (`wg show all dump` on both), and both power
// off cleanly. Phases and their durations are in the log.
func TestTwoKernelWireGuardNodes(t *testing.T) {
	img, guest, log := image(t)

	a, b := vm.Wire(47000+os.Getpid()%1000*2, "52:54:00:77:00:01", "52:54:00:77:00:02")
	type end struct {
		name, addr, tunnel string
		link               vm.Link
	}
	ends := []end{{"vma", "192.168.77.1", "10.77.0.1", a}, {"vmb", "192.168.77.2", "10.77.0.2", b}}
	marker := []byte("copied in at boot\n")
	nodes := make([]*vm.Node, len(ends))
	errs := make([]error, len(ends))
	start := time.Now()
	var wg sync.WaitGroup
	for i, e := range ends {
		wg.Go(func() {
			nodes[i], errs[i] = vm.Boot(context.Background(), img, vm.Options{Name: e.name, Guest: guest, Dir: t.TempDir(), Log: log,
				Links: []vm.Link{e.link}, Files: map[string]vm.File{"/root/marker": {Data: marker, Mode: 0o600}}})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			fatalf(t, "booting %s: %v", ends[i].name, err)
		}
		t.Cleanup(nodes[i].Kill)
	}
	t.Logf("phase boot (two nodes at once): %s; %s %s, %s %s", time.Since(start).Round(100*time.Millisecond),
		nodes[0].Name, nodes[0].Booted.Round(100*time.Millisecond), nodes[1].Name, nodes[1].Booted.Round(100*time.Millisecond))

	start = time.Now()
	keys := make([]string, len(ends))
	for i, e := range ends {
		n := nodes[i]
		if out, err := n.Run("cat", "/root/marker"); err != nil || out != string(marker) {
			fatalf(t, "%s: the file copied in at boot reads %q (%v)", e.name, out, err)
		}
		priv, err := n.Run("wg", "genkey")
		if err != nil {
			fatalf(t, "%v", err)
		}
		if err := n.Put("/etc/wireguard/wg0.key", []byte(priv), 0o600); err != nil {
			fatalf(t, "%v", err)
		}
		for _, c := range [][]string{
			{"modprobe", "wireguard"},
			{"ip", "addr", "add", e.addr + "/24", "dev", "eth0"},
			{"ip", "link", "set", "eth0", "up"},
			{"ip", "link", "add", "wg0", "type", "wireguard"},
			{"wg", "set", "wg0", "private-key", "/etc/wireguard/wg0.key", "listen-port", "51820"},
			{"ip", "addr", "add", e.tunnel + "/24", "dev", "wg0"},
			{"ip", "link", "set", "wg0", "up"},
		} {
			if _, err := n.Run(c...); err != nil {
				fatalf(t, "%v", err)
			}
		}
		pub, err := n.Run("wg", "show", "wg0", "public-key")
		if err != nil {
			fatalf(t, "%v", err)
		}
		keys[i] = strings.TrimSpace(pub)
	}
	for i, e := range ends {
		o := ends[1-i]
		if _, err := nodes[i].Run("wg", "set", "wg0", "peer", keys[1-i], "endpoint", o.addr+":51820", "allowed-ips", o.tunnel+"/32"); err != nil {
			fatalf(t, "%s: %v", e.name, err)
		}
	}
	if out, err := nodes[0].Run("ping", "-c", "3", "-W", "5", ends[1].tunnel); err != nil {
		fatalf(t, "ping through the kernel tunnel: %v\n%s", err, out)
	}
	for i, n := range nodes {
		dump, err := n.Run("wg", "show", "all", "dump")
		if err != nil {
			fatalf(t, "%v", err)
		}
		var handshake bool
		for _, l := range strings.Split(strings.TrimSpace(dump), "\n") {
			f := strings.Split(l, "\t")
			if len(f) == 9 && f[1] == keys[1-i] && f[5] != "0" {
				handshake = true
			}
		}
		if !handshake {
			errorf(t, "%s: no handshake with the other node in wg show all dump:\n%s", n.Name, dump)
		}
		if _, err := n.Run("sh", "-c", "lsmod | grep -q '^wireguard '"); err != nil {
			errorf(t, "%s: the wireguard module is not loaded: %v", n.Name, err)
		}
	}
	t.Logf("phase tests: %s (kernel WireGuard between the nodes: handshake and pings)", time.Since(start).Round(100*time.Millisecond))

	start = time.Now()
	for _, n := range nodes {
		took, err := n.Shutdown()
		if err != nil {
			errorf(t, "%v", err)
		}
		t.Logf("%s powered off in %s", n.Name, took.Round(10*time.Millisecond))
	}
	t.Logf("phase shutdown: %s", time.Since(start).Round(100*time.Millisecond))
	if b, err := os.ReadFile(filepath.Join(img.Dir, "release")); err != nil || strings.TrimSpace(string(b)) != img.Release {
		errorf(t, "the image cache has no release file (%v): it would be rebuilt every time", err)
	}
}

package deploy_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
)

// make runs a target of the top-level Makefile.
func makeTarget(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("make", append([]string{"-C", "..", "--no-print-directory"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("make %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// The unit installed by `make install` (PREFIX, SYSTEMDDIR and SYSCONFDIR in
// a temporary tree, so ExecStart names a binary that exists) passes
// systemd-analyze verify, is hardened as the README says, and uninstalls
// without touching the config.
func TestSystemdUnitInstallAndVerify(t *testing.T) {
	analyze := labtest.Tool(t, "systemd-analyze", "systemd")
	root := t.TempDir()
	vars := []string{"PREFIX=" + root, "SYSTEMDDIR=" + filepath.Join(root, "systemd"), "SYSCONFDIR=" + filepath.Join(root, "etc")}
	makeTarget(t, append([]string{"install"}, vars...)...)
	unitPath := filepath.Join(root, "systemd", "wgpulse.service")
	b, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	unit := string(b)
	if out, err := exec.Command(analyze, "verify", unitPath).CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	for _, want := range []string{
		"ExecStart=" + filepath.Join(root, "bin", "wgpulse") + " --config.file=/etc/wgpulse/wgpulse.yml",
		"ExecReload=/bin/kill -HUP $MAINPID",
		"DynamicUser=yes",
		"AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW\n",
		"CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW\n",
		"ProtectSystem=strict",
		"StateDirectory=wgpulse",
		"ReadWritePaths=-/var/run/wireguard",
		"NoNewPrivileges=yes",
	} {
		if !strings.Contains(unit, want) {
			t.Errorf("the installed unit lacks %q", want)
		}
	}
	out, _ := exec.Command(analyze, "security", "--offline=yes", unitPath).CombinedOutput()
	m := regexp.MustCompile(`Overall exposure level for wgpulse.service: ([0-9.]+)`).FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("no exposure level from systemd-analyze security:\n%s", out)
	}
	if v, _ := strconv.ParseFloat(m[1], 64); v > 3 {
		t.Errorf("systemd-analyze security exposure %s, want <= 3.0 (the unit lost hardening)", m[1])
	}
	t.Logf("systemd-analyze security --offline: exposure %s", m[1])

	conf := filepath.Join(root, "etc", "wgpulse", "wgpulse.yml")
	if out, err := exec.Command(filepath.Join(root, "bin", "wgpulse"), "check-config", conf).CombinedOutput(); err != nil {
		t.Fatalf("the installed example config: %v\n%s", err, out)
	}
	if err := os.WriteFile(conf, []byte("collector:\n  poll_interval: 2s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	makeTarget(t, append([]string{"install"}, vars...)...) // an upgrade keeps the config
	if b, _ := os.ReadFile(conf); string(b) != "collector:\n  poll_interval: 2s\n" {
		t.Error("make install overwrote an existing config")
	}
	makeTarget(t, append([]string{"uninstall"}, vars...)...)
	for _, gone := range []string{filepath.Join(root, "bin", "wgpulse"), unitPath} {
		if _, err := os.Stat(gone); !os.IsNotExist(err) {
			t.Errorf("%s still there after make uninstall", gone)
		}
	}
	if _, err := os.Stat(conf); err != nil {
		t.Error("make uninstall removed the config")
	}
}

// Package collector reads WireGuard device state (wgctrl for devices and
// peers, netlink for link MTU), keeps the latest typed Snapshot, and exports
// it as Prometheus metrics.
package collector

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Config is the `collector:` section of the agent's configuration file.
type Config struct {
	// Devices limits polling to these devices; empty means every WireGuard
	// device visible on the node (kernel devices via netlink, userspace
	// devices via their UAPI sockets).
	Devices []string `yaml:"devices"`
	// PollInterval is how often devices are read. Endpoint changes (NAT
	// rebinds, roaming) are detected by comparing consecutive polls.
	PollInterval time.Duration `yaml:"poll_interval"`
	// PeerNames maps a peer public key (base64) to a friendly name.
	PeerNames map[string]string `yaml:"peer_names"`
	// PeerNamesFiles is a glob of wg-quick style files; a `# Name = x`
	// comment inside a [Peer] block names that peer. PeerNames wins.
	PeerNamesFiles string `yaml:"peer_names_files"`
	// KeyStateFile records when each device's public key was first seen
	// (wireguard_device_key_first_seen_seconds), across restarts. Empty:
	// $STATE_DIRECTORY/keys.json under systemd, else
	// /var/lib/wgpulse/keys.json.
	KeyStateFile string `yaml:"key_state_file"`
}

// KeyStatePath is the key state file in force for this configuration.
func (c Config) KeyStatePath() string {
	switch {
	case c.KeyStateFile != "":
		return c.KeyStateFile
	case os.Getenv("STATE_DIRECTORY") != "":
		// systemd's StateDirectory= (the first, if several).
		dir, _, _ := strings.Cut(os.Getenv("STATE_DIRECTORY"), ":")
		return filepath.Join(dir, "keys.json")
	}
	return "/var/lib/wgpulse/keys.json"
}

// DefaultConfig returns the configuration used when the file omits the section.
func DefaultConfig() Config {
	return Config{PollInterval: 5 * time.Second}
}

// MinPollInterval is the shortest poll interval accepted: polling faster only
// burns CPU in the kernel and in wireguard-go.
const MinPollInterval = 100 * time.Millisecond

// fieldError is a configuration problem at a YAML path relative to the
// section ("poll_interval", "devices[1]"). The agent's config loader finds it
// through FieldPath, prefixes the section and points at the file's line.
type fieldError struct{ path, problem string }

func (e *fieldError) Error() string        { return e.path + ": " + e.problem }
func (e *fieldError) FieldPath() string    { return e.path }
func (e *fieldError) FieldProblem() string { return e.problem }

// Validate checks the configuration and names the offending field.
func (c Config) Validate() error {
	var errs []error
	fe := func(path, format string, a ...any) {
		errs = append(errs, &fieldError{path, fmt.Sprintf(format, a...)})
	}
	if c.PollInterval < MinPollInterval {
		fe("poll_interval", "must be at least %s, got %s", MinPollInterval, c.PollInterval)
	}
	seen := make(map[string]bool, len(c.Devices))
	for i, d := range c.Devices {
		field := fmt.Sprintf("devices[%d]", i)
		switch {
		case d == "":
			fe(field, "device name must not be empty")
		case len(d) > 15:
			fe(field, "device name %q is longer than 15 bytes (IFNAMSIZ)", d)
		case seen[d]:
			fe(field, "device %q listed twice", d)
		}
		seen[d] = true
	}
	for _, k := range slices.Sorted(maps.Keys(c.PeerNames)) {
		if _, err := wgtypes.ParseKey(k); err != nil {
			// The key is not echoed: a mangled private key must not reach a log.
			fe("peer_names", "a key of %d characters (named %q) is not a base64 WireGuard public key of 44 characters", len(k), c.PeerNames[k])
		}
	}
	if c.PeerNamesFiles != "" {
		if _, err := filepath.Match(c.PeerNamesFiles, ""); err != nil {
			fe("peer_names_files", "bad glob %q: %v", c.PeerNamesFiles, err)
		}
	}
	return errors.Join(errs...)
}

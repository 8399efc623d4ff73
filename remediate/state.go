package remediate

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/wgpulse/wgpulse/collector/statefile"
)

// persisted is the state file: what the remediator must not forget across
// a restart. The kernel stays the truth for routes: on start the file is
// reconciled with what `ip route show proto N` shows.
type persisted struct {
	Version int                   `json:"version"`
	Written time.Time             `json:"written"`
	Paused  bool                  `json:"paused"`
	Groups  map[string]groupState `json:"groups"`
	// MTU is the MTU policy's per-peer state, by device/public key.
	MTU map[string]mtuState `json:"mtu,omitempty"`
	// Keepalive is the keepalive policy's per-peer state, by device/public key.
	Keepalive map[string]kaState `json:"keepalive,omitempty"`
	// Routes are the routes the remediator owns, for a human reading the
	// file: `ip route del PREFIX dev DEVICE metric METRIC proto PROTOCOL`
	// undoes one.
	Routes []ownedRoute `json:"owned_routes"`
}

type ownedRoute struct {
	Group string `json:"group"`
	Route
}

const stateVersion = 1

// errCorrupt marks a state file that exists but cannot be used.
var errCorrupt = errors.New("corrupt state file")

// loadState reads the state file; a missing file is an empty state.
func loadState(path string) (persisted, error) {
	st := persisted{Version: stateVersion, Groups: map[string]groupState{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("reading state file %s: %w", path, err)
	}
	var got persisted
	if err := json.Unmarshal(b, &got); err != nil {
		return st, fmt.Errorf("%w %s: %v", errCorrupt, path, err)
	}
	if got.Version != stateVersion {
		return st, fmt.Errorf("%w %s: version %d, this wgpulse writes %d", errCorrupt, path, got.Version, stateVersion)
	}
	if got.Groups == nil {
		got.Groups = map[string]groupState{}
	}
	for name, g := range got.Groups {
		if g.Active != Primary && g.Active != Backup {
			return st, fmt.Errorf("%w %s: group %q has active path %q", errCorrupt, path, name, g.Active)
		}
	}
	return got, nil
}

// setAside renames a corrupt state file out of the way, keeping it for a
// human, and returns its new name.
func setAside(path string, now time.Time) (string, error) {
	aside := fmt.Sprintf("%s.corrupt-%s", path, now.UTC().Format("20060102T150405Z"))
	if err := os.Rename(path, aside); err != nil {
		return "", err
	}
	return aside, nil
}

// saveState writes the state file atomically: a temporary file in the same
// directory, synced, renamed over the old one, and the directory synced, so
// a crash leaves either the old file or the new one.
func saveState(path string, st persisted) error {
	st.Version = stateVersion
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return statefile.Write(path, append(b, '\n'))
}

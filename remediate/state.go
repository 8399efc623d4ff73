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
// a restart. The kernel stays the truth: on start each policy reconciles
// its part with what the kernel shows.
type persisted struct {
	Version int       `json:"version"`
	Written time.Time `json:"written"`
	Paused  bool      `json:"paused"`
	// Policies holds each policy's part by name, as the policy wrote it. A
	// part whose policy is not running is kept as it is.
	Policies map[string]json.RawMessage `json:"policies"`
}

// stateVersion 2: each policy's part is its own object under "policies".
// Version 1 (up to the release with the four policies on one type) had the
// parts at the top level; policies that implement V1Migrator take theirs.
const stateVersion = 2

// V1Migrator is a policy that can read its part of a version 1 state file.
type V1Migrator interface {
	// MigrateV1 returns the policy's part from the version 1 file's
	// top-level objects (nil: nothing of it there).
	MigrateV1(v1 map[string]json.RawMessage) (json.RawMessage, error)
}

// errCorrupt marks a state file that exists but cannot be used.
var errCorrupt = errors.New("corrupt state file")

// loadState reads the state file; a missing file is an empty state.
func loadState(path string, policies []Policy) (persisted, error) {
	st := persisted{Version: stateVersion, Policies: map[string]json.RawMessage{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("reading state file %s: %w", path, err)
	}
	var head struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return st, fmt.Errorf("%w %s: %v", errCorrupt, path, err)
	}
	switch head.Version {
	case stateVersion:
		var got persisted
		if err := json.Unmarshal(b, &got); err != nil {
			return st, fmt.Errorf("%w %s: %v", errCorrupt, path, err)
		}
		if got.Policies == nil {
			got.Policies = map[string]json.RawMessage{}
		}
		return got, nil
	case 1:
		return migrateV1(path, b, policies)
	}
	return st, fmt.Errorf("%w %s: version %d, this wgpulse reads 1 and writes %d", errCorrupt, path, head.Version, stateVersion)
}

func migrateV1(path string, b []byte, policies []Policy) (persisted, error) {
	st := persisted{Version: stateVersion, Policies: map[string]json.RawMessage{}}
	var v1 map[string]json.RawMessage
	if err := json.Unmarshal(b, &v1); err != nil {
		return st, fmt.Errorf("%w %s: %v", errCorrupt, path, err)
	}
	if raw, ok := v1["paused"]; ok {
		if err := json.Unmarshal(raw, &st.Paused); err != nil {
			return st, fmt.Errorf("%w %s: paused: %v", errCorrupt, path, err)
		}
	}
	for _, p := range policies {
		m, ok := p.(V1Migrator)
		if !ok {
			continue
		}
		part, err := m.MigrateV1(v1)
		if err != nil {
			return st, fmt.Errorf("%w %s: version 1 part of policy %s: %v", errCorrupt, path, p.Name(), err)
		}
		if part != nil {
			st.Policies[p.Name()] = part
		}
	}
	return st, nil
}

// setAside renames a corrupt state file out of the way, keeping it for a
// human, and says where it is.
func setAside(path string, now time.Time) string {
	aside := fmt.Sprintf("%s.corrupt-%s", path, now.UTC().Format("20060102T150405Z"))
	if err := os.Rename(path, aside); err != nil {
		return fmt.Sprintf("nothing: it could not be renamed: %v", err)
	}
	return aside
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

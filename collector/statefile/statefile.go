// Package statefile writes the agent's small state files (the remediator's
// state, the key first-seen record) so that a crash leaves either the old
// file or the new one, never a torn one.
package statefile

import (
	"fmt"
	"os"
	"path/filepath"
)

// Write replaces path with b: a temporary file in the same directory
// (created 0700 if missing), synced, renamed over path, then the directory
// synced.
func Write(path string, b []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating state directory %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("writing state file in %s: %w", dir, err)
	}
	tmp := f.Name()
	_, werr := f.Write(b)
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp, path)
	}
	if werr != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing state file %s: %w", path, werr)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

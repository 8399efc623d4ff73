package statefile_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wgpulse/wgpulse/collector/statefile"
)

// Write creates the directory, replaces the file whole and leaves no
// temporary file behind; a failure names the path.
func TestWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "keys.json")
	for _, content := range []string{"first\n", "second, longer than the first\n", "3\n"} {
		if err := statefile.Write(path, []byte(content)); err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(path); err != nil || string(b) != content {
			t.Fatalf("read back %q, %v; want %q", b, err, content)
		}
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("%d files in the state directory, want only the state file", len(entries))
	}
	if err := statefile.Write("/proc/no-such-dir/keys.json", []byte("x")); err == nil || !strings.Contains(err.Error(), "/proc/no-such-dir") {
		t.Errorf("unwritable: %v, want an error naming the directory", err)
	}
}

package remediate

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// stateLock is an exclusive lock on the state file (a `.lock` file beside
// it, since the state file itself is replaced on every write), held while
// the remediator runs in auto: two agents sharing a state file would undo
// and redo each other's changes. The kernel drops it when the process ends,
// however it ends. The holder's PID is written into it for the error.
type stateLock struct{ f *os.File }

func lockState(stateFile string) (*stateLock, error) {
	path := stateFile + ".lock"
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("locking the state file: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("locking the state file: %w (remediate.state_file's directory must be writable)", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		b, _ := os.ReadFile(path)
		f.Close()
		holder := "another process"
		if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
			holder = fmt.Sprintf("another wgpulse (pid %d)", pid)
		}
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("the state file %s is locked by %s: two agents in auto on one node would fight over "+
				"its changes; stop the other, or give this one its own remediate.state_file and route_protocol, or run it in dry-run", stateFile, holder)
		}
		return nil, fmt.Errorf("locking the state file %s: %w", stateFile, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &stateLock{f: f}, nil
}

// release drops the lock; nil is a no-op.
func (l *stateLock) release() {
	if l != nil {
		_ = l.f.Close()
	}
}

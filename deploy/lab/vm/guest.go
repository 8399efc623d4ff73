package vm

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// The way into a node is a virtio serial port, not ssh or a network: the
// guest agent (ServeGuest, `wgpulse-lab vm-guest`) reads one JSON request
// per line and answers one JSON line each.

// GuestPort is the guest agent's virtio serial port, as udev names it.
const GuestPort = "/dev/virtio-ports/wgpulse.ctl"

type request struct {
	ID      int           `json:"id"`
	Op      string        `json:"op"` // ping, exec, put, get, poweroff
	URL     string        `json:"url,omitempty"`
	Argv    []string      `json:"argv,omitempty"`
	Timeout time.Duration `json:"timeout,omitempty"`
	Path    string        `json:"path,omitempty"`
	Mode    uint32        `json:"mode,omitempty"`
	Data    []byte        `json:"data,omitempty"`
}

type response struct {
	ID     int    `json:"id"`
	Stdout []byte `json:"stdout,omitempty"`
	Stderr []byte `json:"stderr,omitempty"`
	Code   int    `json:"code"`
	Err    string `json:"err,omitempty"`
}

// installDir holds the boot overlay's executables until the guest agent
// installs them: a file the kernel unpacked from the initramfs can stay
// open for writing, and exec of it fails with ETXTBSY ("text file busy"),
// so each is written anew in place, as a package manager would.
const installDir = "/var/lib/wgpulse-lab/install"

func installFiles() error {
	return filepath.WalkDir(installDir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		dst := strings.TrimPrefix(p, installDir)
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		st, err := d.Info()
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		tmp := dst + ".wgpulse-lab-new"
		if err := os.WriteFile(tmp, b, st.Mode().Perm()); err != nil {
			return err
		}
		return os.Rename(tmp, dst)
	})
}

// ServeGuest is the guest agent: it installs the overlay's executables,
// waits for the port, then serves requests until poweroff or the port
// closes.
func ServeGuest(port string) error {
	if err := installFiles(); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("installing the boot overlay's executables: %w", err)
	}
	var f *os.File
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		var err error
		if f, err = os.OpenFile(port, os.O_RDWR, 0); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("guest port %s: %w", port, err)
		}
	}
	defer f.Close()
	enc := json.NewEncoder(f)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var req request
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			_ = enc.Encode(response{Code: -1, Err: "bad request: " + err.Error()})
			continue
		}
		resp := serve(req)
		resp.ID = req.ID
		if err := enc.Encode(resp); err != nil {
			return err
		}
		if req.Op == "poweroff" {
			_ = exec.Command("systemctl", "--no-block", "poweroff").Run()
			return nil
		}
	}
	return sc.Err()
}

func serve(req request) response {
	switch req.Op {
	case "exec":
		if len(req.Argv) == 0 {
			return response{Code: -1, Err: "exec: no command"}
		}
		timeout := req.Timeout
		if timeout <= 0 {
			timeout = 5 * time.Minute
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, req.Argv[0], req.Argv[1:]...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		r := response{Stdout: out.Bytes(), Stderr: errb.Bytes()}
		var ee *exec.ExitError
		switch {
		case errors.As(err, &ee):
			r.Code = ee.ExitCode()
		case err != nil:
			r.Code, r.Err = -1, err.Error()
		}
		return r
	case "put":
		if err := os.MkdirAll(filepath.Dir(req.Path), 0o755); err != nil {
			return response{Code: -1, Err: err.Error()}
		}
		if err := os.WriteFile(req.Path, req.Data, os.FileMode(req.Mode)); err != nil {
			return response{Code: -1, Err: err.Error()}
		}
		return response{}
	case "get": // an HTTP GET from inside the node (its agent's /metrics), with no curl in the image
		c := http.Client{Timeout: 30 * time.Second}
		resp, err := c.Get(req.URL)
		if err != nil {
			return response{Code: -1, Err: err.Error()}
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return response{Code: -1, Err: err.Error()}
		}
		return response{Stdout: b, Code: resp.StatusCode}
	case "poweroff", "ping":
		return response{}
	}
	return response{Code: -1, Err: fmt.Sprintf("unknown op %q", req.Op)}
}

// client is the host's end of a guest agent. Requests sent before the
// guest opened its port may be answered late or never: each carries an ID,
// and answers to others are dropped.
type client struct {
	conn  net.Conn
	enc   *json.Encoder
	lines chan []byte
	next  int
}

func newClient(conn net.Conn) *client {
	c := &client{conn: conn, enc: json.NewEncoder(conn), lines: make(chan []byte, 16)}
	go func() {
		sc := bufio.NewScanner(conn)
		sc.Buffer(make([]byte, 1<<20), 64<<20)
		for sc.Scan() {
			c.lines <- bytes.Clone(sc.Bytes())
		}
		close(c.lines)
	}()
	return c
}

func (c *client) call(req request, wait time.Duration) (response, error) {
	c.next++
	req.ID = c.next
	if err := c.enc.Encode(req); err != nil {
		return response{}, err
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case line, ok := <-c.lines:
			if !ok {
				return response{}, io.EOF
			}
			var r response
			if json.Unmarshal(line, &r) != nil || r.ID != req.ID {
				continue // an answer to an earlier, abandoned request
			}
			if r.Err != "" {
				return r, errors.New(r.Err)
			}
			return r, nil
		case <-timer.C:
			return response{}, errTimeout
		}
	}
}

var errTimeout = errors.New("no answer from the guest agent")

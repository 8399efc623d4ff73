package vm

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Options are one node's.
type Options struct {
	Name   string
	Memory int // MiB; default 1536 (the root file system lives in it)
	CPUs   int // default 2
	// Guest is the guest agent's binary (a wgpulse-lab); default this
	// process's own executable.
	Guest string
	// Files go into the boot overlay, by guest path.
	Files map[string]File
	// Links are the node's NICs, in order (eth0, eth1, ...).
	Links []Link
	// Dir holds the node's sockets, initramfs and console log.
	Dir string
	Log *slog.Logger
}

// File is a file of the boot overlay.
type File struct {
	Data []byte
	Mode os.FileMode
}

// Link is a NIC whose frames travel in UDP datagrams on the host's loopback
// between two qemu processes (`-netdev dgram`): a point-to-point Ethernet
// wire that never leaves the machine and needs no bridge, tap or root.
type Link struct {
	MAC           string // e.g. 52:54:00:00:01:01
	Local, Remote string // 127.0.0.1:port of this end and of the other
}

// Wire returns the two ends of a link between nodes a and b, on loopback
// ports base and base+1.
func Wire(base int, macA, macB string) (a, b Link) {
	pa, pb := fmt.Sprintf("127.0.0.1:%d", base), fmt.Sprintf("127.0.0.1:%d", base+1)
	return Link{MAC: macA, Local: pa, Remote: pb}, Link{MAC: macB, Local: pb, Remote: pa}
}

// Node is a running VM.
type Node struct {
	Name    string
	Accel   string        // kvm or tcg
	Booted  time.Duration // from qemu's start to the guest agent's first answer
	Console string        // the console log

	cmd    *exec.Cmd
	c      *client
	mu     sync.Mutex
	done   chan struct{}
	log    *slog.Logger
	dir    string
	exited error
}

const guestUnit = `[Unit]
Description=wgpulse-lab guest agent (the host's way into the VM test node)
After=systemd-udevd.service

[Service]
ExecStart=/usr/local/bin/wgpulse-lab vm-guest
Restart=on-failure

[Install]
WantedBy=multi-user.target
`

// Boot starts a node from img and waits until its guest agent answers.
func Boot(ctx context.Context, img Image, o Options) (*Node, error) {
	if o.Memory == 0 {
		o.Memory = 1536
	}
	if o.CPUs == 0 {
		o.CPUs = 2 // multi-threaded TCG: systemd boots faster
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Guest == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		o.Guest = exe
	}
	guest, err := os.ReadFile(o.Guest)
	if err != nil {
		return nil, fmt.Errorf("the guest agent %s: %w", o.Guest, err)
	}
	files := map[string]File{
		"/usr/local/bin/wgpulse-lab":                {guest, 0o755},
		"/etc/hostname":                             {[]byte(o.Name + "\n"), 0o644},
		"/etc/systemd/system/wgpulse-guest.service": {[]byte(guestUnit), 0o644},
		"/etc/modules-load.d/wgpulse-lab.conf":      {[]byte("virtio_console\nvirtio_net\nwireguard\n"), 0o644},
	}
	for p, f := range o.Files {
		files[p] = f
	}
	overlay := filepath.Join(o.Dir, "overlay")
	for p, f := range files {
		dst := usrMerged(p)
		if f.Mode&0o111 != 0 && p != "/usr/local/bin/wgpulse-lab" {
			dst = filepath.Join(installDir, dst) // the guest agent installs it: see installFiles
		}
		full := filepath.Join(overlay, dst)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(full, f.Data, f.Mode); err != nil {
			return nil, err
		}
	}
	wants := filepath.Join(overlay, "etc/systemd/system/multi-user.target.wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		return nil, err
	}
	if err := os.Symlink("/etc/systemd/system/wgpulse-guest.service", filepath.Join(wants, "wgpulse-guest.service")); err != nil {
		return nil, err
	}
	initrd := filepath.Join(o.Dir, "initrd")
	if err := packCpio(overlay, initrd+".overlay"); err != nil {
		return nil, err
	}
	if err := concat(initrd, img.Initrd, initrd+".overlay"); err != nil { // the kernel unpacks both; the overlay's files win
		return nil, err
	}

	n := &Node{Name: o.Name, Console: filepath.Join(o.Dir, "console.log"), done: make(chan struct{}), log: o.Log, dir: o.Dir}
	n.Accel = Accel(img, o.Log)
	sock := filepath.Join(o.Dir, "ctl.sock")
	args := []string{"-accel", n.Accel, "-cpu", "max", "-m", fmt.Sprint(o.Memory), "-smp", fmt.Sprint(o.CPUs),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", img.Kernel, "-initrd", initrd,
		"-append", "console=ttyS0 rdinit=/sbin/init panic=-1 quiet systemd.show_status=0 net.ifnames=0",
		"-chardev", "file,id=con,path=" + n.Console, "-serial", "chardev:con",
		"-device", "virtio-rng-pci",
		"-device", "virtio-serial-pci", "-chardev", "socket,id=ctl,path=" + sock + ",server=on,wait=off",
		"-device", "virtserialport,chardev=ctl,name=wgpulse.ctl"}
	for i, l := range o.Links {
		lh, lp, _ := strings.Cut(l.Local, ":")
		rh, rp, _ := strings.Cut(l.Remote, ":")
		args = append(args, "-netdev", fmt.Sprintf("dgram,id=n%d,local.type=inet,local.host=%s,local.port=%s,remote.type=inet,remote.host=%s,remote.port=%s", i, lh, lp, rh, rp),
			"-device", fmt.Sprintf("virtio-net-pci,netdev=n%d,mac=%s", i, l.MAC))
	}
	start := time.Now()
	n.cmd = exec.Command("qemu-system-x86_64", args...)
	var qerr strings.Builder
	n.cmd.Stderr = &qerr
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // a killed test leaves no VM running
	if err := n.cmd.Start(); err != nil {
		return nil, fmt.Errorf("qemu-system-x86_64: %w (install the Debian package qemu-system-x86)", err)
	}
	go func() { n.exited = n.cmd.Wait(); close(n.done) }()
	o.Log.Info("VM booting", "node", o.Name, "accel", n.Accel, "memory_mib", o.Memory, "links", len(o.Links))
	var conn net.Conn
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if conn, err = net.Dial("unix", sock); err == nil {
			break
		}
		select {
		case <-n.done:
			return nil, fmt.Errorf("qemu exited at start: %v: %s", n.exited, qerr.String())
		default:
		}
		if time.Now().After(deadline) {
			n.Kill()
			return nil, fmt.Errorf("qemu's control socket %s: %w", sock, err)
		}
	}
	n.c = newClient(conn)
	limit := 3 * time.Minute // TCG boots systemd in ~12 s here; a loaded machine takes longer
	for deadline := time.Now().Add(limit); ; {
		if _, err := n.c.call(request{Op: "ping"}, time.Second); err == nil {
			break
		}
		select {
		case <-n.done:
			return nil, fmt.Errorf("the VM %s stopped while booting (%v); console:\n%s", o.Name, n.exited, tail(n.Console))
		case <-ctx.Done():
			n.Kill()
			return nil, ctx.Err()
		default:
		}
		if time.Now().After(deadline) {
			n.Kill()
			return nil, fmt.Errorf("the VM %s did not answer within %s; console:\n%s", o.Name, limit, tail(n.Console))
		}
	}
	n.Booted = time.Since(start)
	o.Log.Info("VM up", "node", o.Name, "accel", n.Accel, "boot", n.Booted.Round(10*time.Millisecond))
	return n, nil
}

// Exec runs a command in the node; code is its exit status.
func (n *Node) Exec(timeout time.Duration, argv ...string) (stdout, stderr string, code int, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if timeout <= 0 {
		timeout = 5 * time.Minute
	}
	r, err := n.c.call(request{Op: "exec", Argv: argv, Timeout: timeout}, timeout+10*time.Second)
	return string(r.Stdout), string(r.Stderr), r.Code, err
}

// Run is Exec that fails unless the command exits 0, with its output.
func (n *Node) Run(argv ...string) (string, error) {
	out, errOut, code, err := n.Exec(0, argv...)
	if err == nil && code != 0 {
		err = fmt.Errorf("%s in %s: exit %d: %s%s", strings.Join(argv, " "), n.Name, code, errOut, out)
	}
	return out, err
}

// Put writes a file in the node.
func (n *Node) Put(path string, data []byte, mode os.FileMode) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	_, err := n.c.call(request{Op: "put", Path: path, Data: data, Mode: uint32(mode)}, time.Minute)
	return err
}

// Get fetches a URL from inside the node (say, its agent's /metrics) and
// returns the body and the HTTP status.
func (n *Node) Get(url string) (string, int, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	r, err := n.c.call(request{Op: "get", URL: url}, time.Minute)
	return string(r.Stdout), r.Code, err
}

// Shutdown powers the node off cleanly (systemd stops its units) and
// returns how long that took; after a minute it is killed.
func (n *Node) Shutdown() (time.Duration, error) {
	start := time.Now()
	n.mu.Lock()
	_, err := n.c.call(request{Op: "poweroff"}, 10*time.Second)
	n.mu.Unlock()
	if err != nil {
		n.Kill()
		return time.Since(start), fmt.Errorf("poweroff of %s: %w (killed)", n.Name, err)
	}
	select {
	case <-n.done:
	case <-time.After(time.Minute):
		n.Kill()
		return time.Since(start), fmt.Errorf("%s did not power off within a minute (killed); console:\n%s", n.Name, tail(n.Console))
	}
	took := time.Since(start)
	n.log.Info("VM down", "node", n.Name, "shutdown", took.Round(10*time.Millisecond))
	return took, nil
}

// Kill ends the qemu process at once.
func (n *Node) Kill() {
	if n.cmd != nil && n.cmd.Process != nil {
		_ = n.cmd.Process.Kill()
		<-n.done
	}
}

var (
	accelOnce sync.Once
	accel     string
)

// Accel is kvm when /dev/kvm boots this kernel, else tcg: a kernel with no
// root panics at once, so a boot to that panic within 20 s (TCG takes ~3 s)
// is the probe. It runs once per host boot and image (the verdict is kept
// in the image's directory, keyed by the host's boot id).
func Accel(img Image, log *slog.Logger) string {
	accelOnce.Do(func() {
		bootID, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
		memo := filepath.Join(img.Dir, "accel-"+strings.TrimSpace(string(bootID)))
		if b, err := os.ReadFile(memo); err == nil {
			accel = strings.TrimSpace(string(b))
			log.Info("VM acceleration: " + accel + " (probed earlier since this host booted)")
			return
		}
		defer func() { _ = os.WriteFile(memo, []byte(accel+"\n"), 0o644) }()
		accel = "tcg"
		f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
		if err != nil {
			log.Info("VM acceleration: tcg (software emulation)", "why", err.Error())
			return
		}
		f.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, _ := exec.CommandContext(ctx, "qemu-system-x86_64", "-accel", "kvm", "-cpu", "max", "-m", "256", "-nodefaults", "-display", "none",
			"-no-reboot", "-kernel", img.Kernel, "-append", "console=ttyS0 panic=-1", "-serial", "stdio").CombinedOutput()
		if strings.Contains(string(out), "Kernel panic") || strings.Contains(string(out), "VFS: Unable to mount root") {
			accel = "kvm"
			log.Info("VM acceleration: kvm")
			return
		}
		log.Info("VM acceleration: tcg (software emulation): /dev/kvm exists but did not boot the kernel within 20 s", "qemu", lastLine(string(out)))
	})
	return accel
}

// usrMerged is where a path lands on bookworm's merged /usr: /lib, /bin,
// /sbin and /lib64 are symlinks into /usr, and an overlay directory of the
// same name would replace the symlink when the kernel unpacks it.
func usrMerged(p string) string {
	for _, d := range []string{"/lib/", "/lib64/", "/bin/", "/sbin/"} {
		if strings.HasPrefix(p, d) {
			return "/usr" + p
		}
	}
	return p
}

func concat(out string, parts ...string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, p := range parts {
		in, err := os.Open(p)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, in)
		in.Close()
		if err != nil {
			return err
		}
	}
	return f.Close()
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

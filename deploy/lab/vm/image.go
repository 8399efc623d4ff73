// Package vm runs real Debian nodes for the tests that userspace WireGuard
// in namespaces cannot stand in for: the kernel module, wg-quick@ units and
// wgpulse under its systemd sandbox. A node is Debian's linux-image-cloud
// kernel and a debootstrap'd bookworm booted as the initramfs (systemd as
// PID 1) under qemu, KVM when /dev/kvm works, TCG otherwise. The image is
// built from Debian packages only and cached; a small overlay added at
// each boot carries the guest agent and files, so code changes never
// rebuild it.
package vm

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Packages are the Debian packages of the node's userland (debootstrap
// --include); changing the list rebuilds the image. procps (priority
// important: on every standard Debian system) is the /bin/kill of the
// shipped unit's ExecReload.
var Packages = []string{"systemd", "systemd-sysv", "udev", "kmod", "iproute2", "wireguard-tools", "nftables", "iputils-ping", "procps"}

// Suite and Mirror are the Debian release and mirror of the image.
const (
	Suite      = "bookworm"
	Mirror     = "http://deb.debian.org/debian"
	kernelMeta = "linux-image-cloud-amd64"
)

// DefaultCache is where images are kept.
const DefaultCache = "/var/cache/wgpulse-lab/vm"

// Image is a built node image: a kernel and the initramfs that is the
// whole root file system.
type Image struct {
	Kernel  string // vmlinuz
	Initrd  string // gzip'd cpio of the root file system
	Release string // the kernel release, e.g. 6.1.0-57-cloud-amd64
	Dir     string
}

// tools are the host programs an image build and a boot need, by the
// Debian package that has them.
var tools = map[string]string{
	"qemu-system-x86_64": "qemu-system-x86", "debootstrap": "debootstrap", "cpio": "cpio",
	"apt-get": "apt", "dpkg-deb": "dpkg", "gzip": "gzip", "chroot": "coreutils",
}

// CheckTools says which Debian package to install for a missing tool.
func CheckTools() error {
	var missing []string
	for t, pkg := range tools {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, pkg)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the VM node needs the Debian packages %s (apt-get install %s; make deps does)", strings.Join(missing, ", "), strings.Join(missing, " "))
	}
	return nil
}

// Build returns the cached image for the current package list and kernel
// version, building it first when there is none. The cache key is the
// SHA-256 of the suite, the package list and the kernel package's version
// (apt-cache policy): a new kernel in the archive or a changed list makes a
// new image; older ones are left for `rm -r` of the cache.
func Build(cache string, log *slog.Logger) (Image, error) {
	if err := CheckTools(); err != nil {
		return Image{}, err
	}
	kpkg, kver, err := kernelPackage()
	if err != nil {
		return Image{}, err
	}
	sum := sha256.Sum256([]byte(Suite + "\n" + strings.Join(Packages, ",") + "\n" + kpkg + "=" + kver))
	dir := filepath.Join(cache, hex.EncodeToString(sum[:8]))
	img := Image{Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "root.cpio.gz"), Dir: dir}
	if b, err := os.ReadFile(filepath.Join(dir, "release")); err == nil {
		img.Release = strings.TrimSpace(string(b))
		log.Info("VM image cached", "dir", dir, "kernel", img.Release)
		return img, nil
	}
	start := time.Now()
	work, err := os.MkdirTemp(cache+"-tmp", "build-")
	if err != nil {
		if err := os.MkdirAll(cache+"-tmp", 0o755); err != nil {
			return Image{}, err
		}
		if work, err = os.MkdirTemp(cache+"-tmp", "build-"); err != nil {
			return Image{}, err
		}
	}
	defer os.RemoveAll(work)
	root, kdir := filepath.Join(work, "root"), filepath.Join(work, "kernel")
	log.Info("building the VM image: debootstrap", "suite", Suite, "packages", strings.Join(Packages, ","))
	if err := run(work, "debootstrap", "--variant=minbase", "--include="+strings.Join(Packages, ","), Suite, root, Mirror); err != nil {
		return Image{}, err
	}
	log.Info("building the VM image: kernel", "package", kpkg, "version", kver, "after", time.Since(start).Round(time.Second))
	if err := run(work, "apt-get", "download", kpkg); err != nil {
		return Image{}, err
	}
	debs, _ := filepath.Glob(filepath.Join(work, kpkg+"_*.deb"))
	if len(debs) != 1 {
		return Image{}, fmt.Errorf("apt-get download %s left %d .deb files", kpkg, len(debs))
	}
	if err := run(work, "dpkg-deb", "-x", debs[0], kdir); err != nil {
		return Image{}, err
	}
	rels, _ := os.ReadDir(filepath.Join(kdir, "lib/modules"))
	if len(rels) != 1 {
		return Image{}, fmt.Errorf("%s holds %d kernel releases, want 1", debs[0], len(rels))
	}
	img.Release = rels[0].Name()
	if err := os.MkdirAll(filepath.Join(root, "usr/lib/modules"), 0o755); err != nil { // bookworm: /lib is usr/lib
		return Image{}, err
	}
	if err := run(work, "cp", "-a", filepath.Join(kdir, "lib/modules", img.Release), filepath.Join(root, "usr/lib/modules")+"/"); err != nil {
		return Image{}, err
	}
	if err := run(work, "chroot", root, "depmod", img.Release); err != nil { // the image's own kmod
		return Image{}, err
	}
	if err := configure(root); err != nil {
		return Image{}, err
	}
	log.Info("building the VM image: packing the root as the initramfs", "after", time.Since(start).Round(time.Second))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Image{}, err
	}
	if err := packCpio(root, img.Initrd+".tmp"); err != nil {
		return Image{}, err
	}
	if err := copyFile(filepath.Join(kdir, "boot", "vmlinuz-"+img.Release), img.Kernel); err != nil {
		return Image{}, err
	}
	if err := os.Rename(img.Initrd+".tmp", img.Initrd); err != nil {
		return Image{}, err
	}
	if err := os.WriteFile(filepath.Join(dir, "release"), []byte(img.Release+"\n"), 0o644); err != nil {
		return Image{}, err
	}
	log.Info("VM image built", "dir", dir, "kernel", img.Release, "took", time.Since(start).Round(time.Second))
	return img, nil
}

// kernelPackage resolves linux-image-cloud-amd64 to the image package it
// depends on, with its candidate version.
func kernelPackage() (string, string, error) {
	out, err := exec.Command("apt-cache", "depends", kernelMeta).Output()
	if err != nil {
		return "", "", fmt.Errorf("apt-cache depends %s: %w (run apt-get update)", kernelMeta, err)
	}
	var pkg string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "Depends:" && strings.HasPrefix(f[1], "linux-image-") {
			pkg = f[1]
			break
		}
	}
	if pkg == "" {
		return "", "", fmt.Errorf("%s depends on no linux-image package (apt-cache depends): run apt-get update", kernelMeta)
	}
	out, err = exec.Command("apt-cache", "policy", pkg).Output()
	if err != nil {
		return "", "", fmt.Errorf("apt-cache policy %s: %w", pkg, err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "Candidate:" {
			return pkg, f[1], nil
		}
	}
	return "", "", fmt.Errorf("apt-cache policy %s: no candidate version", pkg)
}

// configure makes the tree a bootable node: no login prompt on the console
// (the guest agent is the way in), a hostname per boot from the overlay,
// and systemd not waiting for devices an initramfs root has none of.
func configure(root string) error {
	for _, p := range []string{"etc/systemd/system/getty.target.wants", "etc/systemd/system/multi-user.target.wants"} {
		if err := os.MkdirAll(filepath.Join(root, p), 0o755); err != nil {
			return err
		}
	}
	for _, mask := range []string{"getty@tty1.service", "serial-getty@ttyS0.service", "systemd-networkd-wait-online.service", "apt-daily.timer", "apt-daily-upgrade.timer"} {
		link := filepath.Join(root, "etc/systemd/system", mask)
		_ = os.Remove(link)
		if err := os.Symlink("/dev/null", link); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(root, "etc/fstab"), nil, 0o644)
}

// packCpio writes dir as a gzip'd newc cpio archive (what the kernel
// unpacks as the initramfs).
func packCpio(dir, out string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	find := exec.Command("sh", "-c", "find . -print0 | cpio --null -o -H newc --quiet | gzip -1")
	find.Dir, find.Stdout = dir, f
	var stderr strings.Builder
	find.Stderr = &stderr
	if err := find.Run(); err != nil {
		return fmt.Errorf("packing %s: %w: %s", dir, err, stderr.String())
	}
	return f.Close()
}

func run(dir, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		tail := string(out)
		if len(tail) > 2000 {
			tail = tail[len(tail)-2000:]
		}
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, tail)
	}
	return nil
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

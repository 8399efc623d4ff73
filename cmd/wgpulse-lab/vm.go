package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"

	"github.com/wgpulse/wgpulse/deploy/lab/vm"
)

// vmCommand is `wgpulse-lab vm build|run` and the guest agent the nodes run.
type vmCommand struct {
	build, run, guest *kingpin.CmdClause
	cache             *string
	runName           *string
	runPut            *[]string
	runArgs           *[]string
}

func addVMCommands(app *kingpin.Application) *vmCommand {
	c := &vmCommand{}
	v := app.Command("vm", "Debian VM nodes (kernel WireGuard, systemd) under qemu, from Debian packages only.")
	c.cache = v.Flag("cache", "Image cache directory.").Default(vm.DefaultCache).String()
	c.build = v.Command("build", "Build the node image (debootstrap + linux-image-cloud-amd64), or say where the cached one is.")
	c.run = v.Command("run", "Boot a node, copy files in, run a command in it, shut it down: vm run [--put HOST:GUEST]... -- CMD...")
	c.runName = c.run.Flag("name", "The node's hostname.").Default("node1").String()
	c.runPut = c.run.Flag("put", "Copy a host file into the node before the command: HOST:GUEST.").Strings()
	c.runArgs = c.run.Arg("cmd", "Command and arguments.").Required().Strings()
	c.guest = app.Command("vm-guest", "The guest agent a node runs on its virtio serial port (not for humans).").Hidden()
	return c
}

func (c *vmCommand) handles(cmd string) bool {
	return cmd == c.build.FullCommand() || cmd == c.run.FullCommand() || cmd == c.guest.FullCommand()
}

func (c *vmCommand) exec(cmd string, stdout, stderr io.Writer) int {
	fail := func(err error) int {
		fmt.Fprintf(stderr, "wgpulse-lab: %v\n", err)
		return 1
	}
	if cmd == c.guest.FullCommand() {
		if err := vm.ServeGuest(vm.GuestPort); err != nil {
			return fail(err)
		}
		return 0
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{}))
	img, err := vm.Build(*c.cache, log)
	if err != nil {
		return fail(err)
	}
	if cmd == c.build.FullCommand() {
		fmt.Fprintf(stdout, "kernel %s\ninitrd %s\nrelease %s\n", img.Kernel, img.Initrd, img.Release)
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	dir, err := os.MkdirTemp("", "wgpulse-vm-")
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(dir)
	files := map[string]vm.File{}
	for _, p := range *c.runPut {
		host, guest, ok := strings.Cut(p, ":")
		if !ok || !filepath.IsAbs(guest) {
			return fail(fmt.Errorf("--put %q: want HOST:GUEST with an absolute guest path", p))
		}
		b, err := os.ReadFile(host)
		if err != nil {
			return fail(err)
		}
		st, _ := os.Stat(host)
		files[guest] = vm.File{Data: b, Mode: st.Mode().Perm()}
	}
	n, err := vm.Boot(ctx, img, vm.Options{Name: *c.runName, Files: files, Dir: dir, Log: log})
	if err != nil {
		return fail(err)
	}
	args := *c.runArgs
	out, errOut, code, err := n.Exec(30*time.Minute, args...)
	fmt.Fprint(stdout, out)
	fmt.Fprint(stderr, errOut)
	took, serr := n.Shutdown()
	fmt.Fprintf(stderr, "vm %s: %s, boot %s, command exit %d, shutdown %s\n", n.Name, n.Accel, n.Booted.Round(10*time.Millisecond), code, took.Round(10*time.Millisecond))
	if err != nil {
		return fail(err)
	}
	if serr != nil {
		return fail(serr)
	}
	return code
}

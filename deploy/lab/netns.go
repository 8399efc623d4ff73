// Package lab builds real WireGuard networks on one Linux machine: network
// namespaces joined by veth pairs, userspace WireGuard (wireguard-go with a
// TUN device and a UAPI socket, so wgctrl and `wg show` see it) in each, and
// an impairment relay on each underlay path. It is the ground truth of
// wgpulse's end-to-end tests and the demo a new user runs first.
//
// Everything needs root and /dev/net/tun.
package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// NetnsDir is where `ip netns` keeps named namespaces.
const NetnsDir = "/var/run/netns"

// IP runs `ip ARGS...` and returns a readable error with ip's own message.
func IP(args ...string) error {
	_, err := run("ip", args...)
	return err
}

func run(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// AddNetns creates a named network namespace with its loopback up.
func AddNetns(name string) error {
	if err := IP("netns", "add", name); err != nil {
		return err
	}
	return IP("-n", name, "link", "set", "lo", "up")
}

// DelNetns deletes a named namespace; a missing one is not an error.
func DelNetns(name string) error {
	if _, err := os.Stat(NetnsDir + "/" + name); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return IP("netns", "del", name)
}

// Veth creates a veth pair with one end in each namespace, addresses them
// (CIDR notation) and brings both ends up.
func Veth(nsA, ifA, addrA, nsB, ifB, addrB string) error {
	steps := [][]string{
		{"link", "add", ifA, "netns", nsA, "type", "veth", "peer", "name", ifB, "netns", nsB},
		{"-n", nsA, "addr", "add", addrA, "dev", ifA},
		{"-n", nsB, "addr", "add", addrB, "dev", ifB},
		{"-n", nsA, "link", "set", ifA, "up"},
		{"-n", nsB, "link", "set", ifB, "up"},
	}
	for _, s := range steps {
		if err := IP(s...); err != nil {
			return err
		}
	}
	return nil
}

// InNetns runs fn on an OS thread switched into the named namespace. Sockets
// fn opens stay in that namespace afterwards, wherever they are used.
func InNetns(name string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("current netns: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromName(name)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns %q: %w", name, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("entering netns %q: %w", name, err)
	}
	fnErr := fn()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: the runtime discards it when this
		// goroutine ends, instead of reusing a thread in the wrong netns.
		return errors.Join(fnErr, fmt.Errorf("leaving netns %q: %w", name, err))
	}
	runtime.UnlockOSThread()
	return fnErr
}

// DialContextIn returns a dial function for http.Transport and friends whose
// sockets live in the named namespace.
func DialContextIn(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := InNetns(ns, func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// Command returns cmd prepared to run inside the named namespace.
func Command(ns string, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// NetlinkIn returns a netlink handle working in the named namespace; close
// it when done.
func NetlinkIn(ns string) (*netlink.Handle, error) {
	nsh, err := netns.GetFromName(ns)
	if err != nil {
		return nil, fmt.Errorf("netns %q: %w", ns, err)
	}
	defer nsh.Close()
	return netlink.NewHandleAt(nsh)
}

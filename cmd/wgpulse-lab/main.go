// Command wgpulse-lab builds a real WireGuard hub-and-spoke network in
// network namespaces on this machine, with faults on demand. See deploy/lab.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"text/tabwriter"

	"github.com/alecthomas/kingpin/v2"
	"go.yaml.in/yaml/v3"

	"github.com/wgpulse/wgpulse/deploy/lab"
)

func main() {
	lab.RunChild() // the lab re-executes this binary for its WireGuard nodes and relay
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	app := kingpin.New("wgpulse-lab", "A real hybrid-cloud WireGuard network on one machine (namespaces, userspace WireGuard, an impairment relay per path). Needs root.")
	app.HelpFlag.Short('h')
	prefix := app.Flag("prefix", "Name prefix of the lab (1-6 characters a-z0-9).").Default("wgl").String()

	upCmd := app.Command("up", "Build the lab; returns when every tunnel has handshaked.")
	upConfig := upCmd.Flag("config", "Lab config YAML (sites, mtu, keepalive).").ExistingFile()
	upKernel := upCmd.Flag("kernel", "Use kernel WireGuard devices (needs the wireguard module).").Bool()
	upDualWAN := upCmd.Flag("dual-wan", "Give these sites a second uplink to their primary tunnel's hub device (path <site>-wan2).").Strings()

	downCmd := app.Command("down", "Remove everything the lab made, also after a crash or a killed up.")

	statusCmd := app.Command("status", "Show tunnels, faults and handshakes.")
	statusJSON := statusCmd.Flag("json", "Print JSON.").Bool()

	faultCmd := app.Command("fault", "Change a path's faults while the lab runs: loss=PCT delay=DUR jitter=DUR mtu=BYTES down up nat-timeout=DUR rebind (0 clears).")
	faultPath := faultCmd.Arg("path", "Tunnel name, e.g. dc1-primary.").Required().String()
	faultArgs := faultCmd.Arg("faults", "key=value ...").Required().Strings()

	execCmd := app.Command("exec", "Run a command in a site's (or hub's) namespace: exec SITE -- CMD...")
	execSite := execCmd.Arg("site", "Site name, or hub.").Required().String()
	execArgs := execCmd.Arg("cmd", "Command and arguments.").Required().Strings()

	demo := addDemoCommand(app)
	vms := addVMCommands(app)

	cmd, err := app.Parse(args)
	if err != nil {
		fmt.Fprintf(stderr, "wgpulse-lab: %v (see wgpulse-lab --help)\n", err)
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "wgpulse-lab: %v\n", err)
		return 1
	}
	if vms.handles(cmd) {
		return vms.exec(cmd, stdout, stderr)
	}
	switch cmd {
	case upCmd.FullCommand():
		cfg, err := loadConfig(*upConfig)
		if err != nil {
			return fail(err)
		}
		cfg.Prefix, cfg.Kernel, cfg.Management = *prefix, *upKernel, true
		if len(*upDualWAN) > 0 {
			cfg.DualWAN = *upDualWAN
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		l, err := lab.Up(ctx, cfg, lab.Options{Detached: true, Progress: stdout})
		if err != nil {
			return fail(err)
		}
		printStatus(stdout, l, false)
		return 0
	case downCmd.FullCommand():
		if err := lab.DownPrefix(*prefix, nil); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "lab %q removed\n", *prefix)
		return 0
	case statusCmd.FullCommand():
		l, err := lab.Load(*prefix)
		if err != nil {
			return fail(err)
		}
		if err := printStatus(stdout, l, *statusJSON); err != nil {
			return fail(err)
		}
		return 0
	case faultCmd.FullCommand():
		l, err := lab.Load(*prefix)
		if err != nil {
			return fail(err)
		}
		f, err := l.Fault(*faultPath, *faultArgs...)
		if err != nil {
			return fail(fmt.Errorf("%w (the lab is unchanged)", err))
		}
		fmt.Fprintf(stdout, "%s: %s\n", *faultPath, f)
		return 0
	case execCmd.FullCommand():
		l, err := lab.Load(*prefix)
		if err != nil {
			return fail(err)
		}
		ns := l.HubNamespace
		if *execSite != "hub" {
			s, err := l.Site(*execSite)
			if err != nil {
				return fail(err)
			}
			ns = s.Namespace
		}
		args := *execArgs
		c := lab.Command(ns, args[0], args[1:]...)
		c.Stdin, c.Stdout, c.Stderr = os.Stdin, stdout, stderr
		if err := c.Run(); err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				return ee.ExitCode()
			}
			return fail(err)
		}
		return 0
	case demo.cmd.FullCommand():
		return demo.run(*prefix, stdout, stderr)
	}
	return 2
}

func loadConfig(path string) (lab.Config, error) {
	var cfg lab.Config
	if path == "" {
		return cfg, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return cfg, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return cfg, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

func printStatus(w io.Writer, l *lab.Lab, asJSON bool) error {
	tunnels, err := l.Status()
	if err != nil {
		return err
	}
	uplinks, err := l.UplinkStatus()
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			Prefix  string       `json:"prefix"`
			Hub     string       `json:"hub_namespace"`
			Sites   []lab.Site   `json:"sites"`
			Tunnels []lab.Tunnel `json:"tunnels"`
			Uplinks []lab.Uplink `json:"uplinks,omitempty"`
		}{l.Config.Prefix, l.HubNamespace, l.Sites, tunnels, uplinks})
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TUNNEL\tNAMESPACE\tDEVICE\tHUB DEVICE\tSITE ADDR\tHUB ADDR\tLAST HANDSHAKE\tFAULTS")
	for _, t := range tunnels {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.Name, t.Namespace, t.Device, t.HubDevice, t.LocalAddress, t.RemoteAddress, t.Handshake, t.Faults)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(uplinks) > 0 {
		tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "\nSECOND UPLINK\tTUNNEL\tSITE INTERFACE\tHUB ENDPOINT OVER IT\tUNDERLAY TARGET\tFAULTS")
		for _, u := range uplinks {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", u.Name, u.Tunnel, u.SiteInterface, u.RelayAddress, u.Underlay, u.Faults)
		}
	}
	return tw.Flush()
}

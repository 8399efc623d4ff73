// Command wgpulse is the per-node WireGuard health agent. It only parses
// flags and wires packages together; see cmd/internal/agent.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/common/promslog"
	"github.com/prometheus/common/promslog/flag"
	"github.com/prometheus/common/version"
	"github.com/prometheus/exporter-toolkit/web/kingpinflag"

	"github.com/wgpulse/wgpulse/cmd/internal/agent"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	app := kingpin.New("wgpulse", "WireGuard tunnel health agent: exports handshake, transfer, NAT-rebind, keepalive and MTU metrics for every peer.")
	app.Version(version.Print("wgpulse"))
	app.HelpFlag.Short('h')

	runCmd := app.Command("run", "Run the agent (default).").Default()
	configFile := runCmd.Flag("config.file", "YAML configuration file; without one every default applies.").Default("").String()
	telemetryPath := runCmd.Flag("web.telemetry-path", "Path under which to expose metrics.").Default("/metrics").String()
	remediateMode := runCmd.Flag("remediate.mode", "Override remediate.mode from the config file: off, dry-run or auto.").Default("").Enum("", "off", "dry-run", "auto")
	webFlags := kingpinflag.AddFlags(runCmd, ":9586")
	logConfig := &promslog.Config{}
	flag.AddFlags(app, logConfig)

	checkCmd := app.Command("check-config", "Validate a configuration file and exit.")
	checkFile := checkCmd.Arg("file", "Configuration file to check.").Required().String()

	versionCmd := app.Command("version", "Print version information and exit.")

	genCmd := app.Command("generate", "Write the Grafana dashboards and Prometheus rules for a configuration (its alerts: and slo: sections).")
	genConfig := genCmd.Flag("config", "Configuration file (default: the built-in defaults).").Default("").String()
	genOut := genCmd.Flag("out", "Directory to write dashboards/ and alerts/ into.").Default(".").String()

	cmd, err := app.Parse(args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "wgpulse: %v (see wgpulse --help)\n", err)
		return 2
	}

	switch cmd {
	case versionCmd.FullCommand():
		fmt.Println(version.Print("wgpulse"))
		return 0
	case genCmd.FullCommand():
		cfg, err := agent.LoadFile(*genConfig)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		files, err := agent.Generate(cfg, *genOut)
		for _, f := range files {
			fmt.Println("wrote", f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "wgpulse generate:", err)
			return 1
		}
		return 0
	case checkCmd.FullCommand():
		if _, err := agent.LoadFile(*checkFile); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Printf("%s: OK\n", *checkFile)
		return 0
	}

	logger := promslog.New(logConfig)
	logger.Info("starting wgpulse", "version", version.Info(), "config_file", *configFile)
	a, err := agent.New(agent.Options{
		ConfigFile:    *configFile,
		RemediateMode: *remediateMode,
		TelemetryPath: *telemetryPath,
		Web:           webFlags,
		Logger:        logger,
	})
	if err != nil {
		logger.Error("cannot start", "err", err)
		return 1
	}
	defer a.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := a.Run(ctx); err != nil {
		logger.Error("agent stopped", "err", err)
		return 1
	}
	return 0
}

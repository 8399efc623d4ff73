// Command wgpulse is the per-node WireGuard health agent. It only parses
// flags and wires packages together; see cmd/internal/agent.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/common/promslog"
	"github.com/prometheus/common/promslog/flag"
	"github.com/prometheus/common/version"
	"github.com/prometheus/exporter-toolkit/web/kingpinflag"

	"github.com/wgpulse/wgpulse/cmd/internal/agent"
	"github.com/wgpulse/wgpulse/collector/diagnose"
)

func main() {
	// Go samples one allocation in every 512 KB for heap profiles from the
	// first allocation on, and keeps each sampled call stack for good (a
	// record per stack, in a hash table of 1.4 MB of address space,
	// go_memstats_buck_hash_sys_bytes): 0.4 to 0.6 MB of anonymous RSS at
	// 1,000 probe targets in A/B runs of 10 and 30 minutes, for a profile
	// only /debug/pprof/heap reads. run turns it back on for
	// --web.enable-pprof.
	runtime.MemProfileRate = 0
	os.Exit(run(os.Args[1:]))
}

// memProfileRate is Go's default runtime.MemProfileRate.
const memProfileRate = 512 * 1024

func run(args []string) int {
	app := kingpin.New("wgpulse", "WireGuard tunnel health agent: exports handshake, transfer, NAT-rebind, keepalive and MTU metrics for every peer.")
	app.Version(version.Print("wgpulse"))
	app.HelpFlag.Short('h')

	runCmd := app.Command("run", "Run the agent (default).").Default()
	configFile := runCmd.Flag("config.file", "YAML configuration file; without one every default applies.").Default("").String()
	telemetryPath := runCmd.Flag("web.telemetry-path", "Path under which to expose metrics.").Default("/metrics").String()
	remediateMode := runCmd.Flag("remediate.mode", "Override remediate.mode from the config file: off, dry-run or auto.").Default("").Enum("", "off", "dry-run", "auto")
	remediationAPI := runCmd.Flag("web.enable-remediation-api", "Enable POST /-/remediate/pause and /-/remediate/resume (off: they answer 403, "+
		"like Prometheus's --web.enable-lifecycle); protect them with --web.config.file. SIGUSR1 toggles the pause either way.").Bool()
	pprofOn := runCmd.Flag("web.enable-pprof", "Serve Go's profiles under /debug/pprof/ (heap, CPU, goroutines) for a performance report, and sample allocations for the heap profile (about 0.5 MB of RSS); off by default, and behind --web.config.file's auth like every endpoint.").Bool()
	maxProcs := runCmd.Flag("runtime.gomaxprocs", "The number of CPUs the agent's steady work (polls, probes, remediation) runs on (GOMAXPROCS); a scrape of the telemetry path "+
		"borrows every CPU Go would use for its rendering and gzip. 1, as node_exporter: a probe loop on two idle CPUs also woke the second one on every wake-up. 0: Go's default throughout.").Default("1").Int()
	releasePages := runCmd.Flag("runtime.release-startup-pages", "10 s after start, drop the pages of the wgpulse binary that only start-up used (madvise MADV_RANDOM and MADV_PAGEOUT "+
		"on its read-only mappings, then POSIX_FADV_DONTNEED on the file's unmapped cached pages): at 1,000 probe targets RSS 26 -> 14 MB 25 s in, 29 -> 22 MB "+
		"under a scrape every 5 s; what the steady loop uses faults back in.").Default("true").Bool()
	webFlags := kingpinflag.AddFlags(runCmd, ":9586")
	logConfig := &promslog.Config{}
	flag.AddFlags(app, logConfig)

	checkCmd := app.Command("check-config", "Validate a configuration file and exit.")
	checkFile := checkCmd.Arg("file", "Configuration file to check.").Required().String()

	versionCmd := app.Command("version", "Print version information and exit.")

	genCmd := app.Command("generate", "Write the Grafana dashboards and Prometheus rules for a configuration (its alerts: and slo: sections).")
	genConfig := genCmd.Flag("config", "Configuration file (default: the built-in defaults).").Default("").String()
	genOut := genCmd.Flag("out", "Directory to write dashboards/ and alerts/ into.").Default(".").String()

	agentFlags := func(c *kingpin.CmdClause) *agent.AgentClient {
		ac := &agent.AgentClient{}
		c.Flag("agent", "URL of the running agent.").Default("http://localhost:9586").StringVar(&ac.URL)
		c.Flag("agent.username", "Basic auth user of the agent's web config.").StringVar(&ac.Username)
		c.Flag("agent.password-file", "File holding the basic auth password.").StringVar(&ac.PasswordFile)
		c.Flag("agent.ca-file", "CA certificate to verify the agent's TLS certificate.").StringVar(&ac.CAFile)
		c.Flag("agent.insecure-skip-verify", "Do not verify the agent's TLS certificate.").BoolVar(&ac.Insecure)
		return ac
	}
	statusCmd := app.Command("status", "Show every device and peer of the running agent: handshake, traffic, loss, RTT, MTU, failover and one health word.")
	statusJSON := statusCmd.Flag("json", "Print the agent's status document (stable JSON, see README).").Bool()
	statusAgent := agentFlags(statusCmd)

	diagCmd := app.Command("diagnose", "Run the WireGuard troubleshooting checklist on this node (exit code 0: nothing wrong, 1: warnings, 2: errors).")
	diagJSON := diagCmd.Flag("json", "Print the findings as JSON.").Bool()
	diagConfig := diagCmd.Flag("config.file", "Configuration file: its collector.devices and peer names (default: every device in this network namespace).").Default("").String()
	diagNoAgent := diagCmd.Flag("no-agent", "Do not ask the running agent for endpoint history and path MTU.").Bool()
	diagAgent := agentFlags(diagCmd)

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
	case statusCmd.FullCommand():
		st, err := statusAgent.Status(context.Background())
		if err != nil {
			fmt.Fprintln(os.Stderr, "wgpulse status:", err)
			return 1
		}
		if *statusJSON {
			printJSON(st)
			return 0
		}
		agent.WriteStatus(os.Stdout, st, agent.IsTerminal(os.Stdout))
		return 0
	case diagCmd.FullCommand():
		cfg, err := agent.LoadFile(*diagConfig)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		opts := agent.DiagnoseOptions{}
		if !*diagNoAgent {
			opts.Agent = diagAgent.Status
		}
		rep, err := agent.Diagnose(context.Background(), cfg, opts)
		if err != nil {
			fmt.Fprintln(os.Stderr, "wgpulse diagnose:", err)
			return 2
		}
		if *diagJSON {
			printJSON(rep)
		} else {
			agent.WriteReport(os.Stdout, rep, agent.IsTerminal(os.Stdout))
		}
		return diagnose.ExitCode(rep.Findings)
	case checkCmd.FullCommand():
		if _, err := agent.LoadFile(*checkFile); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Printf("%s: OK\n", *checkFile)
		return 0
	}

	logger := promslog.New(logConfig)
	if *pprofOn {
		runtime.MemProfileRate = memProfileRate
	}
	gogc := gcPercent()
	scrapeProcs := runtime.GOMAXPROCS(0) // Go's default: the CPUs, or the cgroup's quota, or $GOMAXPROCS
	switch {
	case *maxProcs < 0:
		logger.Error("--runtime.gomaxprocs must be 0 (Go's default) or more", "value", *maxProcs)
		return 1
	case *maxProcs > 0 && *maxProcs < scrapeProcs:
		runtime.GOMAXPROCS(*maxProcs)
	}
	logger.Info("starting wgpulse", "version", version.Info(), "config_file", *configFile, "gogc", gogc,
		"gomaxprocs", runtime.GOMAXPROCS(0), "scrape_gomaxprocs", scrapeProcs)
	a, err := agent.New(agent.Options{
		ScrapeProcs:         scrapeProcs,
		ReleaseStartupPages: *releasePages,
		ConfigFile:          *configFile,
		RemediateMode:       *remediateMode,
		RemediationAPI:      *remediationAPI,
		Pprof:               *pprofOn,
		TelemetryPath:       *telemetryPath,
		Web:                 webFlags,
		Logger:              logger,
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

func printJSON(v any) {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// defaultGCPercent is the agent's GOGC when the environment sets none. The
// agent's live heap is its snapshot of every peer (about 14 MB at 10,000),
// and each poll leaves as much again in garbage (wgctrl's parse of the
// device, the diagnose checks): with Go's default of 100 the heap may grow
// to twice the live heap before a collection, which is most of the RSS of
// a large node. At 40 the RSS at 10,000 peers drops by a third for a few
// more collections per poll (make bench: BenchmarkCollectorAnchor).
const defaultGCPercent = 40

// gcPercent applies defaultGCPercent unless GOGC is set, and returns the
// value in force.
func gcPercent() string {
	if v := os.Getenv("GOGC"); v != "" {
		return v
	}
	debug.SetGCPercent(defaultGCPercent)
	return fmt.Sprint(defaultGCPercent)
}

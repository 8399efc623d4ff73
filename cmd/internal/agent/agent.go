package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"html"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/version"
	"github.com/prometheus/exporter-toolkit/web"
	"github.com/vishvananda/netlink"
	"go.opentelemetry.io/otel/trace"
	"golang.zx2c4.com/wireguard/wgctrl"

	"github.com/wgpulse/wgpulse/collector"
	"github.com/wgpulse/wgpulse/collector/diagnose"
	"github.com/wgpulse/wgpulse/collector/expo"
	"github.com/wgpulse/wgpulse/prober"
	"github.com/wgpulse/wgpulse/remediate"
	"github.com/wgpulse/wgpulse/remediate/policies"
)

// Options are the agent's command-line settings.
type Options struct {
	ConfigFile    string
	TelemetryPath string
	Web           *web.FlagConfig
	Logger        *slog.Logger
	// RemediateMode overrides remediate.mode from the file (--remediate.mode).
	RemediateMode string
	// RemediationAPI enables POST /-/remediate/pause and /-/remediate/resume
	// (--web.enable-remediation-api); off, they answer 403.
	RemediationAPI bool
	// Pprof serves net/http/pprof under /debug/pprof/ (--web.enable-pprof).
	Pprof bool
	// ScrapeProcs is the GOMAXPROCS a scrape of the telemetry path runs on,
	// when above the one in force (--runtime.gomaxprocs set it lower); 0:
	// scrapes run on the Ps in force.
	ScrapeProcs int
	// ReleaseStartupPages drops the program pages only start-up used, once,
	// startupSettle after Run begins (--runtime.release-startup-pages).
	ReleaseStartupPages bool
	// Transports for the collector; zero values use wgctrl and netlink.
	Collector collector.Options
	// Transports for the prober; zero values use ICMP sockets and pro-bing.
	Prober prober.Options
	// Routes is the remediator's netlink handle; nil uses the agent's own.
	Routes remediate.RouteHandle
	// Peers is the remediator's wgctrl handle; nil uses the collector's
	// client when it can configure devices.
	Peers remediate.PeerHandle
	// Checks reads the routing table for the continuous checks; nil uses
	// the agent's netlink handle (none: route checks are skipped).
	Checks diagnose.RouteHandle
	// Firewall reads the nftables ruleset; nil runs nft -j list ruleset.
	Firewall func(context.Context) (*diagnose.Ruleset, error)
	// Tracer makes the remediator's spans; nil reads the OTEL_* variables
	// (no exporter and no cost when they are unset).
	Tracer trace.TracerProvider
}

// Agent is one running wgpulse: its components, registry and HTTP endpoints.
type Agent struct {
	opts       Options
	logger     *slog.Logger
	registry   *prometheus.Registry
	collector  *collector.Collector
	prober     *prober.Prober
	remediator *remediate.Remediator
	components []component
	reg        registrar
	closers    []func() error

	reloadMu      sync.Mutex
	reloadOK      prometheus.Gauge
	reloadSeconds prometheus.Gauge
}

// New loads the configuration and builds the agent. It does not start polling.
func New(opts Options) (*Agent, error) {
	if opts.TelemetryPath == "" {
		opts.TelemetryPath = "/metrics"
	}
	cfg, err := LoadFile(opts.ConfigFile)
	if err != nil {
		return nil, err
	}
	if err := applyModeFlag(&cfg, opts.RemediateMode); err != nil {
		return nil, err
	}
	a := &Agent{opts: opts, logger: opts.Logger, registry: prometheus.NewRegistry()}
	if err := a.openTransports(); err != nil {
		return nil, err
	}
	fail := func(what string, err error) (*Agent, error) {
		a.Close()
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	a.collector, err = collector.New(cfg.Collector, opts.Logger.With("component", "collector"), a.opts.Collector)
	if err != nil {
		return fail("collector", err)
	}
	a.prober, err = prober.New(cfg.Prober, opts.Logger.With("component", "prober"), opts.Prober)
	if err != nil {
		return fail("prober", err)
	}
	tp := opts.Tracer
	if tp == nil {
		var shutdown func(context.Context) error
		if tp, shutdown, err = tracerFromEnv(context.Background()); err != nil {
			return fail("OpenTelemetry (OTEL_* variables)", err)
		}
		a.closers = append(a.closers, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return shutdown(ctx)
		})
	}
	peersHandle := opts.Peers
	if ph, ok := a.opts.Collector.Client.(remediate.PeerHandle); ok && peersHandle == nil {
		peersHandle = ph
	}
	a.remediator, err = policies.New(cfg.Remediate, opts.Logger.With("component", "remediate"), remediate.Options{
		Snapshots: a.collector, Prober: a.prober, Routes: a.opts.Routes, Peers: peersHandle, Tracer: tp,
	})
	if err != nil {
		return fail("remediate", err)
	}
	a.closers = append(a.closers, func() error { a.remediator.Close(); return nil })
	a.components = []component{
		collectorComponent{a.collector},
		proberComponent{a.prober, a.collector},
		remediateComponent{a.remediator, opts.RemediateMode, opts.RemediationAPI},
		newStatusComponent(a, cfg),
		newEventsComponent(a, cfg),
	}
	a.reloadOK = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "wgpulse", Name: "config_last_reload_successful",
		Help: "Whether the last configuration reload attempt was successful.",
	})
	a.reloadSeconds = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "wgpulse", Name: "config_last_reload_success_timestamp_seconds",
		Help: "Timestamp of the last successful configuration reload.",
	})
	a.reloadOK.Set(1)
	a.reloadSeconds.SetToCurrentTime()
	a.reg.collectors = append(a.reg.collectors, a.reloadOK, a.reloadSeconds,
		versioncollector.NewCollector("wgpulse"),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a.reg.gatherers = []prometheus.Gatherer{a.registry}
	for _, c := range a.components {
		c.Register(&a.reg)
	}
	a.registry.MustRegister(a.reg.collectors...)
	return a, nil
}

// openTransports opens wgctrl and netlink unless the caller injected them.
// Neither failing stops the agent: it serves what it can and says why.
func (a *Agent) openTransports() error {
	if a.opts.Collector.Client == nil {
		c, err := wgctrl.New()
		if err != nil {
			return fmt.Errorf("opening wgctrl (WireGuard control): %w", err)
		}
		a.opts.Collector.Client = c
		a.closers = append(a.closers, c.Close)
	}
	if a.opts.Collector.Links == nil || a.opts.Routes == nil {
		h, err := netlink.NewHandle()
		if err != nil {
			a.logger.Warn("netlink unavailable: device MTUs, kernel device discovery and route failover disabled", "err", err)
			return nil
		}
		if a.opts.Collector.Links == nil {
			a.opts.Collector.Links = h
		}
		if a.opts.Routes == nil {
			a.opts.Routes = h
		}
		if a.opts.Checks == nil {
			a.opts.Checks = h
		}
		a.closers = append(a.closers, func() error { h.Close(); return nil })
	}
	return nil
}

// Close releases the transports and flushes traces.
func (a *Agent) Close() error {
	var errs []error
	for _, c := range a.closers {
		errs = append(errs, c())
	}
	a.closers = nil
	return errors.Join(errs...)
}

// Registry is the agent's own registry (not the global one).
func (a *Agent) Registry() *prometheus.Registry { return a.registry }

// Gatherer is everything the agent exposes: its registry plus the
// components' own families (the collector's snapshot, the prober's targets).
func (a *Agent) Gatherer() prometheus.Gatherer { return expo.Gatherers(a.reg.gatherers) }

// Describe sends the descriptors of every registered metric, including the
// labelled ones that have no series yet, and of the families components
// write themselves without a collector (wgpulse_config_problem).
func (a *Agent) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range a.reg.collectors {
		c.Describe(ch)
	}
	for _, g := range a.reg.gatherers {
		_, registered := g.(prometheus.Collector) // described above
		if d, ok := g.(interface{ Describe(chan<- *prometheus.Desc) }); ok && !registered {
			d.Describe(ch)
		}
	}
}

// Prober is the agent's prober.
func (a *Agent) Prober() *prober.Prober { return a.prober }

// Collector is the agent's WireGuard collector.
func (a *Agent) Collector() *collector.Collector { return a.collector }

// Remediator is the agent's remediator.
func (a *Agent) Remediator() *remediate.Remediator { return a.remediator }

// Reload re-reads the config file; on error the running config stays.
func (a *Agent) Reload() error {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	cfg, err := LoadFile(a.opts.ConfigFile)
	if err == nil {
		err = applyModeFlag(&cfg, a.opts.RemediateMode)
	}
	// The remediator first: it alone can refuse a valid file (an undo that
	// fails, a state file another agent holds), and a refused reload must
	// change no component. The others only take what Parse validated.
	order := slices.Clone(a.components)
	slices.SortStableFunc(order, func(x, y component) int {
		_, rx := x.(remediateComponent)
		_, ry := y.(remediateComponent)
		return cmp.Compare(b2i(!rx), b2i(!ry))
	})
	for _, c := range order {
		if err != nil {
			break
		}
		err = c.ApplyConfig(context.Background(), cfg)
	}
	if err != nil {
		a.reloadOK.Set(0)
		a.logger.Error("config reload failed; keeping the running configuration", "file", a.opts.ConfigFile, "err", err)
		return err
	}
	a.reloadOK.Set(1)
	a.reloadSeconds.SetToCurrentTime()
	a.logger.Info("config reloaded", "file", a.opts.ConfigFile)
	return nil
}

// Handler serves the telemetry path, health, readiness, the components'
// routes and the landing page.
func (a *Agent) Handler() (http.Handler, error) {
	mux := http.NewServeMux()
	procs := max(a.opts.ScrapeProcs, runtime.GOMAXPROCS(0))
	metrics := promhttp.InstrumentMetricHandler(a.registry, newGzipHandler(procs, newMetricsHandler(a.reg.gatherers, promhttp.HandlerFor(a.Gatherer(), promhttp.HandlerOpts{
		ErrorLog:            slog.NewLogLogger(a.logger.Handler(), slog.LevelError),
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: maxScrapesInFlight,
		// No Timeout: it wraps http.TimeoutHandler, which buffers the whole
		// body (11 MB at 10,000 peers). Scrapes only read a snapshot.
		DisableCompression: true, // done by newGzipHandler at BestSpeed
	}), a.logger)))
	mux.Handle(a.opts.TelemetryPath, borrowProcs(metrics, procs))
	mux.HandleFunc("/-/healthy", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "wgpulse is healthy.")
	})
	mux.HandleFunc("/-/ready", func(w http.ResponseWriter, _ *http.Request) {
		if a.collector.Latest() == nil {
			http.Error(w, "wgpulse is not ready: first poll not done.", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "wgpulse is ready.")
	})
	for pattern, h := range a.reg.routes {
		mux.HandleFunc(pattern, h)
	}
	if a.opts.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	if a.opts.TelemetryPath != "/" {
		links := append([]web.LandingLinks{
			{Address: a.opts.TelemetryPath, Text: "Metrics"},
			{Address: "/-/healthy", Text: "Health"},
			{Address: "/-/ready", Text: "Readiness"},
		}, a.reg.links...)
		landing := func() (http.Handler, error) {
			var extra strings.Builder
			for _, line := range a.reg.status {
				fmt.Fprintf(&extra, "<p>%s</p>\n", html.EscapeString(line()))
			}
			return web.NewLandingPage(web.LandingConfig{
				Name:        "wgpulse",
				Description: "WireGuard tunnel health: handshakes, transfer, NAT rebinds, MTU, keepalive, and failover",
				Version:     version.Info(),
				Links:       links,
				ExtraHTML:   extra.String(),
			})
		}
		if _, err := landing(); err != nil {
			return nil, err
		}
		// Rendered per request: it shows the remediator's live state.
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			h, err := landing()
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			h.ServeHTTP(w, r)
		})
	}
	return mux, nil
}

// Run runs every component and serves until ctx is done; SIGHUP reloads
// the config file and SIGUSR1 pauses or resumes remediation.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	handler, err := a.Handler()
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	for _, c := range a.components {
		wg.Go(func() { c.Run(ctx) })
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGUSR1)
	defer signal.Stop(sigs)
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case s := <-sigs:
				if s == syscall.SIGUSR1 {
					a.remediator.TogglePause("SIGUSR1")
					continue
				}
				_ = a.Reload()
			}
		}
	})

	if a.opts.ReleaseStartupPages {
		wg.Go(func() { releaseStartupPagesAfter(ctx, a.logger) })
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- web.ListenAndServe(srv, a.opts.Web, a.logger) }()
	select {
	case err = <-serveErr:
		cancel()
	case <-ctx.Done():
		shutdownCtx, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		_ = srv.Shutdown(shutdownCtx)
		<-serveErr
	}
	wg.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

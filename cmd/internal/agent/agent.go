package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
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
	"golang.zx2c4.com/wireguard/wgctrl"

	"github.com/wgpulse/wgpulse/collector"
	"github.com/wgpulse/wgpulse/collector/expo"
	"github.com/wgpulse/wgpulse/prober"
)

// Options are the agent's command-line settings.
type Options struct {
	ConfigFile    string
	TelemetryPath string
	Web           *web.FlagConfig
	Logger        *slog.Logger
	// Transports for the collector; zero values use wgctrl and netlink.
	Collector collector.Options
	// Transports for the prober; zero values use ICMP sockets and pro-bing.
	Prober prober.Options
}

// Agent is one running wgpulse: collector, registry and HTTP endpoints.
type Agent struct {
	opts      Options
	logger    *slog.Logger
	registry  *prometheus.Registry
	collector *collector.Collector
	prober    *prober.Prober
	closers   []func() error

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
	a := &Agent{opts: opts, logger: opts.Logger, registry: prometheus.NewRegistry()}
	if err := a.openTransports(); err != nil {
		return nil, err
	}
	a.collector, err = collector.New(cfg.Collector, opts.Logger.With("component", "collector"), a.opts.Collector)
	if err != nil {
		a.Close()
		return nil, fmt.Errorf("collector: %w", err)
	}
	a.prober, err = prober.New(cfg.Prober, opts.Logger.With("component", "prober"), opts.Prober)
	if err != nil {
		a.Close()
		return nil, fmt.Errorf("prober: %w", err)
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
	a.registry.MustRegister(
		a.collector,
		a.prober,
		a.reloadOK, a.reloadSeconds,
		versioncollector.NewCollector("wgpulse"),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
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
	if a.opts.Collector.Links == nil {
		h, err := netlink.NewHandle()
		if err != nil {
			a.logger.Warn("netlink unavailable: device MTUs and kernel device discovery disabled", "err", err)
			return nil
		}
		a.opts.Collector.Links = h
		a.closers = append(a.closers, func() error { h.Close(); return nil })
	}
	return nil
}

// Close releases the transports.
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
// collector's snapshot families and the prober's per-target families.
func (a *Agent) Gatherer() prometheus.Gatherer {
	return expo.Gatherers{a.registry, a.collector, a.prober}
}

// Prober is the agent's prober.
func (a *Agent) Prober() *prober.Prober { return a.prober }

// Collector is the agent's WireGuard collector.
func (a *Agent) Collector() *collector.Collector { return a.collector }

// Reload re-reads the config file; on error the running config stays.
func (a *Agent) Reload() error {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	cfg, err := LoadFile(a.opts.ConfigFile)
	if err == nil {
		err = a.collector.ApplyConfig(cfg.Collector)
	}
	if err == nil {
		err = a.prober.ApplyConfig(cfg.Prober)
	}
	if err == nil {
		a.prober.SetTargets(prober.Targets(a.collector.Latest(), cfg.Prober))
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

// Handler serves the telemetry path, health, readiness and the landing page.
func (a *Agent) Handler() (http.Handler, error) {
	mux := http.NewServeMux()
	metrics := promhttp.InstrumentMetricHandler(a.registry, newGzipHandler(promhttp.HandlerFor(a.Gatherer(), promhttp.HandlerOpts{
		ErrorLog:            slog.NewLogLogger(a.logger.Handler(), slog.LevelError),
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		// No Timeout: it wraps http.TimeoutHandler, which buffers the whole
		// body (11 MB at 10,000 peers). Scrapes only read a snapshot.
		DisableCompression: true, // done by newGzipHandler at BestSpeed
	})))
	mux.Handle(a.opts.TelemetryPath, metrics)
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
	if a.opts.TelemetryPath != "/" {
		landing, err := web.NewLandingPage(web.LandingConfig{
			Name:        "wgpulse",
			Description: "WireGuard tunnel health: handshakes, transfer, NAT rebinds, MTU, keepalive",
			Version:     version.Info(),
			Links: []web.LandingLinks{
				{Address: a.opts.TelemetryPath, Text: "Metrics"},
				{Address: "/-/healthy", Text: "Health"},
				{Address: "/-/ready", Text: "Readiness"},
			},
		})
		if err != nil {
			return nil, err
		}
		mux.Handle("/", landing)
	}
	return mux, nil
}

// Run polls and serves until ctx is done; SIGHUP reloads the config file.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	handler, err := a.Handler()
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	snaps := a.collector.Subscribe()
	wg.Go(func() { a.collector.Run(ctx) })
	wg.Go(func() { a.prober.Run(ctx) })
	wg.Go(func() { // every poll refreshes the probe targets (peers come and go)
		for {
			select {
			case <-ctx.Done():
				return
			case s := <-snaps:
				a.prober.SetTargets(prober.Targets(s, a.prober.Config()))
			}
		}
	})

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				_ = a.Reload()
			}
		}
	})

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

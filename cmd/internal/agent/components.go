package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"mime"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/exporter-toolkit/web"

	"github.com/wgpulse/wgpulse/collector"
	"github.com/wgpulse/wgpulse/prober"
	"github.com/wgpulse/wgpulse/remediate"
	"github.com/wgpulse/wgpulse/remediate/policies"
)

// component is one part of the agent. The agent runs every component until
// its context ends, hands each the whole validated configuration on reload,
// and serves what each registers. Adding a component is one adapter here and
// one entry in New; no other package's wiring changes.
type component interface {
	// Run works until ctx ends.
	Run(ctx context.Context)
	// ApplyConfig takes a reloaded configuration; on error the component
	// keeps its running one.
	ApplyConfig(ctx context.Context, cfg Config) error
	// Register adds the component's metrics, families, HTTP routes,
	// landing-page links and status lines.
	Register(r *registrar)
}

// registrar collects what components expose.
type registrar struct {
	collectors []prometheus.Collector
	gatherers  []prometheus.Gatherer
	routes     map[string]http.HandlerFunc
	links      []web.LandingLinks
	status     []func() string
}

func (r *registrar) route(pattern string, h http.HandlerFunc) {
	if r.routes == nil {
		r.routes = map[string]http.HandlerFunc{}
	}
	r.routes[pattern] = h
}

type collectorComponent struct{ c *collector.Collector }

func (c collectorComponent) Run(ctx context.Context) { c.c.Run(ctx) }
func (c collectorComponent) ApplyConfig(_ context.Context, cfg Config) error {
	return c.c.ApplyConfig(cfg.Collector)
}
func (c collectorComponent) Register(r *registrar) {
	r.collectors = append(r.collectors, c.c)
	r.gatherers = append(r.gatherers, c.c)
}

// proberComponent probes the prober's own targets, derived from every
// snapshot (peers come and go), besides the targets other components
// register themselves.
type proberComponent struct {
	p   *prober.Prober
	col *collector.Collector
}

func (c proberComponent) Run(ctx context.Context) {
	snaps := c.col.Subscribe(ctx)
	go func() {
		for s := range snaps {
			c.p.SetTargets(prober.OwnTargets, prober.Targets(s, c.p.Config()))
		}
	}()
	c.p.Run(ctx)
}

func (c proberComponent) ApplyConfig(_ context.Context, cfg Config) error {
	if err := c.p.ApplyConfig(cfg.Prober); err != nil {
		return err
	}
	c.p.SetTargets(prober.OwnTargets, prober.Targets(c.col.Latest(), cfg.Prober))
	return nil
}

func (c proberComponent) Register(r *registrar) {
	r.collectors = append(r.collectors, c.p)
	r.gatherers = append(r.gatherers, c.p)
}

// remediateComponent is the remediator with its HTTP controls.
type remediateComponent struct {
	r            *remediate.Remediator
	modeOverride string
	api          bool // --web.enable-remediation-api: POST pause and resume
}

// simpleContentType says whether a request body has a type browsers send
// cross-origin without a CORS preflight.
func simpleContentType(v string) bool {
	mt, _, err := mime.ParseMediaType(v)
	if err != nil {
		return v != ""
	}
	switch mt {
	case "application/x-www-form-urlencoded", "multipart/form-data", "text/plain":
		return true
	}
	return false
}

func (c remediateComponent) Run(ctx context.Context) { c.r.Run(ctx) }

func (c remediateComponent) ApplyConfig(ctx context.Context, cfg Config) error {
	return policies.Apply(ctx, c.r, cfg.Remediate)
}

func (c remediateComponent) Register(r *registrar) {
	r.collectors = append(r.collectors, c.r)
	r.route("/-/remediate", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(c.r.Status())
	})
	control := func(pause bool) http.HandlerFunc {
		return func(w http.ResponseWriter, req *http.Request) {
			if req.Method != http.MethodPost {
				w.Header().Set("Allow", http.MethodPost)
				http.Error(w, "use POST", http.StatusMethodNotAllowed)
				return
			}
			if !c.api {
				http.Error(w, "the remediation API is off: start wgpulse with --web.enable-remediation-api (and protect it with "+
					"--web.config.file), or send SIGUSR1 to toggle the pause", http.StatusForbidden)
				return
			}
			if simpleContentType(req.Header.Get("Content-Type")) {
				// A browser sends these cross-site without asking first: a
				// page on another site must not pause remediation.
				http.Error(w, "refused: a form or text/plain body may come from another site; send no body (curl -X POST)", http.StatusUnsupportedMediaType)
				return
			}
			who := "HTTP " + req.RemoteAddr
			if pause {
				c.r.Pause(who)
			} else {
				c.r.Resume(who)
			}
			fmt.Fprintf(w, "remediation %s\n", map[bool]string{true: "paused", false: "running"}[pause])
		}
	}
	protect := func(h http.HandlerFunc) http.HandlerFunc { return http.NewCrossOriginProtection().Handler(h).ServeHTTP }
	r.route("/-/remediate/pause", protect(control(true)))
	r.route("/-/remediate/resume", protect(control(false)))
	r.links = append(r.links, web.LandingLinks{Address: "/-/remediate", Text: "Remediation", Description: "failover groups, paths and decisions (JSON)"})
	r.status = append(r.status, func() string {
		state := "running"
		if c.r.Paused() {
			state = "PAUSED (POST /-/remediate/resume or SIGUSR1 to resume)"
		}
		return fmt.Sprintf("Remediation: mode %s, %s.", c.r.Mode(), state)
	})
}

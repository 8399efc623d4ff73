package agent

import (
	"fmt"
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/wgpulse/wgpulse/collector/expo"
)

// maxScrapesInFlight is how many scrapes are served at once; more get 503,
// as promhttp's MaxRequestsInFlight does.
const maxScrapesInFlight = 4

// metricsHandler serves the telemetry path. A scrape in the text format
// (what Prometheus asks for unless it wants protobuf for native histograms)
// is written in one buffered stream: the registry's families through
// expfmt, and the collector's and prober's per-peer and per-target families
// straight from their snapshots (expo.TextGatherer), so a scrape of 10,000
// peers builds no MetricFamily at all. Any other format goes to promhttp
// with the same gatherers' Gather.
type metricsHandler struct {
	gatherers []prometheus.Gatherer
	fallback  http.Handler
	inflight  chan struct{}
	logger    *slog.Logger
}

func newMetricsHandler(gatherers []prometheus.Gatherer, fallback http.Handler, logger *slog.Logger) *metricsHandler {
	return &metricsHandler{gatherers: gatherers, fallback: fallback, inflight: make(chan struct{}, maxScrapesInFlight), logger: logger}
}

func (h *metricsHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	format := expfmt.NegotiateAccept(r.Header, expfmt.DefaultAcceptedFormats()...) // promhttp's choice without OpenMetrics
	if format.FormatType() != expfmt.TypeTextPlain {
		h.fallback.ServeHTTP(w, r)
		return
	}
	select {
	case h.inflight <- struct{}{}:
		defer func() { <-h.inflight }()
	default:
		http.Error(w, fmt.Sprintf("Limit of concurrent requests reached (%d), try again later.", maxScrapesInFlight), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", string(format))
	tw := expo.NewTextWriter(w)
	enc := expfmt.NewEncoder(tw.Writer(), format)
	for _, g := range h.gatherers {
		if tg, ok := g.(expo.TextGatherer); ok {
			if err := tg.WriteText(tw); err != nil {
				h.logger.Error("writing metrics", "err", err)
			}
			continue
		}
		// As promhttp.ContinueOnError: what was gathered is served.
		mfs, err := g.Gather()
		if err != nil {
			h.logger.Error("gathering metrics", "err", err)
		}
		for _, mf := range mfs {
			if err := enc.Encode(mf); err != nil {
				h.logger.Debug("writing a scrape", "err", err) // the scraper went away
				return
			}
		}
	}
	if err := tw.Flush(); err != nil {
		h.logger.Debug("writing a scrape", "err", err)
	}
}

package agent

import (
	"net/http"
	"strings"
)

// gzipHandler compresses responses for clients that accept gzip (Prometheus
// always does), at about BestSpeed and on every core (parallelGzip). At
// 10,000 peers a scrape body is ~11 MB of very repetitive text: BestSpeed
// still shrinks it ~4x and costs about a third of promhttp's default level,
// which alone would take the scrape past its budget. The deflate is
// klauspost/compress (in the module graph already, through client_golang).
type gzipHandler struct {
	next http.Handler
	pool *gzPool
}

// newGzipHandler compresses on up to procs cores.
func newGzipHandler(procs int, next http.Handler) *gzipHandler {
	return &gzipHandler{next: next, pool: newGzPool(procs)}
}

func (h *gzipHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Add("Vary", "Accept-Encoding")
	if !acceptsGzip(r.Header.Get("Accept-Encoding")) {
		h.next.ServeHTTP(w, r)
		return
	}
	gz := newParallelGzip(h.pool, w)
	w.Header().Set("Content-Encoding", "gzip")
	h.next.ServeHTTP(gzipResponseWriter{ResponseWriter: w, w: gz}, r)
	_ = gz.Close()
}

func acceptsGzip(header string) bool {
	for _, part := range strings.Split(header, ",") {
		enc, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if strings.EqualFold(strings.TrimSpace(enc), "gzip") {
			return strings.ReplaceAll(params, " ", "") != "q=0"
		}
	}
	return false
}

type gzipResponseWriter struct {
	http.ResponseWriter
	w *parallelGzip
}

func (g gzipResponseWriter) Write(b []byte) (int, error) { return g.w.Write(b) }

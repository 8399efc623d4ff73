package agent

import (
	"net/http"
	"runtime"
	"sync"
	"time"
)

// Between scrapes the agent's work is a loop of short wake-ups (a probe
// batch, a reply, a poll). With an idle second P, each one also woke an
// idle thread to spin for work it never found: at 1,000 targets the agent
// made 1,250 context switches a second on two cores and 333 on one, and
// used about a third more CPU. So the agent runs on --runtime.gomaxprocs
// Ps (1, as node_exporter), and a /metrics scrape, whose rendering and
// gzip run in parallel (10,000 peers: 23 ms on two cores, 35 ms on one),
// lends itself the cores Go would use while scrapes run.

// scrapeProcs raises GOMAXPROCS from base to burst while scrapes run, and
// lowers it again once none has run for scrapeLinger. Not at the end of each
// scrape: runtime.GOMAXPROCS stops the world and first waits for a running
// GC cycle to end, which a scrape's garbage had often started, and the
// response is only complete when the handler returns (+3 ms a scrape at
// 10,000 peers when lowered there).
type scrapeProcs struct {
	mu          sync.Mutex
	base, burst int
	active      int
	raised      bool
	lower       *time.Timer // lowerIfIdle, armed when the last scrape ends
}

const scrapeLinger = time.Second

// borrowProcs wraps next so that it runs on burst Ps; it returns next
// itself when burst is not above the Ps in force.
func borrowProcs(next http.Handler, burst int) http.Handler {
	base := runtime.GOMAXPROCS(0)
	if burst <= base {
		return next
	}
	p := &scrapeProcs{base: base, burst: burst}
	p.lower = time.AfterFunc(scrapeLinger, p.lowerIfIdle)
	p.lower.Stop()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.acquire()
		defer p.release()
		next.ServeHTTP(w, r)
	})
}

func (p *scrapeProcs) acquire() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.active++
	p.lower.Stop()
	if !p.raised {
		runtime.GOMAXPROCS(p.burst)
		p.raised = true
	}
}

func (p *scrapeProcs) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.active--
	if p.active == 0 {
		p.lower.Reset(scrapeLinger)
	}
}

// lowerIfIdle runs on the timer; a scrape that began after it fired but
// before it got the lock keeps the Ps.
func (p *scrapeProcs) lowerIfIdle() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.active == 0 && p.raised {
		runtime.GOMAXPROCS(p.base)
		p.raised = false
	}
}

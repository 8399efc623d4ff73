package agent

import (
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync"
	"testing"
)

// TestScrapeBorrowsProcs: a scrape runs on the burst Ps; overlapping
// scrapes keep them until the last one ends, and then the agent is back
// on its base.
func TestScrapeBorrowsProcs(t *testing.T) {
	prev := runtime.GOMAXPROCS(1)
	t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
	inside := make(chan int)
	proceed := make(chan struct{})
	h := borrowProcs(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		inside <- runtime.GOMAXPROCS(0)
		<-proceed
	}), 3)
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() { h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/metrics", nil)) })
	}
	for range 2 {
		if n := <-inside; n != 3 {
			t.Errorf("a scrape ran on %d Ps, want 3", n)
		}
	}
	proceed <- struct{}{} // the first one ends
	if n := runtime.GOMAXPROCS(0); n != 3 {
		t.Errorf("%d Ps while a scrape still runs, want 3", n)
	}
	proceed <- struct{}{}
	wg.Wait()
	if n := runtime.GOMAXPROCS(0); n != 1 {
		t.Errorf("%d Ps after the scrapes, want 1", n)
	}
	// Nothing to borrow: the handler itself.
	plain := http.NewServeMux()
	if got := borrowProcs(plain, 1); got != plain {
		t.Error("borrowProcs wrapped a handler with nothing to borrow")
	}
}

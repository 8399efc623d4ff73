package agent

import (
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// TestScrapeBorrowsProcs: a scrape runs on the burst Ps; overlapping
// scrapes keep them, and scrapeLinger after the last one ends the agent is
// back on its base, unless another scrape came.
func TestScrapeBorrowsProcs(t *testing.T) {
	prev := runtime.GOMAXPROCS(1)
	t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
	synctest.Test(t, func(t *testing.T) {
		inside := make(chan int)
		proceed := make(chan struct{})
		h := borrowProcs(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
			inside <- runtime.GOMAXPROCS(0)
			<-proceed
		}), 3)
		scrape := func(wg *sync.WaitGroup) {
			wg.Go(func() { h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/metrics", nil)) })
		}
		var wg sync.WaitGroup
		scrape(&wg)
		scrape(&wg)
		for range 2 {
			if n := <-inside; n != 3 {
				t.Errorf("a scrape ran on %d Ps, want 3", n)
			}
		}
		proceed <- struct{}{} // the first one ends
		time.Sleep(2 * scrapeLinger)
		if n := runtime.GOMAXPROCS(0); n != 3 {
			t.Errorf("%d Ps while a scrape still runs, want 3", n)
		}
		proceed <- struct{}{}
		wg.Wait()
		time.Sleep(scrapeLinger / 2)
		if n := runtime.GOMAXPROCS(0); n != 3 {
			t.Errorf("%d Ps right after the scrapes, want 3 until %s has passed", n, scrapeLinger)
		}
		scrape(&wg) // another one within the linger keeps them
		<-inside
		time.Sleep(scrapeLinger)
		proceed <- struct{}{}
		wg.Wait()
		time.Sleep(scrapeLinger + time.Millisecond)
		synctest.Wait()
		if n := runtime.GOMAXPROCS(0); n != 1 {
			t.Errorf("%d Ps %s after the last scrape, want 1", n, scrapeLinger)
		}
	})
	// Nothing to borrow: the handler itself.
	plain := http.NewServeMux()
	if got := borrowProcs(plain, 1); got != plain {
		t.Error("borrowProcs wrapped a handler with nothing to borrow")
	}
}

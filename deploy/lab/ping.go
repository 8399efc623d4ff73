package lab

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// PingResult is what the system ping measured.
type PingResult struct {
	Sent, Received int
	RTTs           []time.Duration // one per reply, in arrival order
}

// Loss is the fraction of probes without a reply.
func (r PingResult) Loss() float64 {
	if r.Sent == 0 {
		return 0
	}
	return 1 - float64(r.Received)/float64(r.Sent)
}

// Quantile returns the q-quantile (0..1) of the RTTs.
func (r PingResult) Quantile(q float64) time.Duration {
	if len(r.RTTs) == 0 {
		return 0
	}
	s := slices.Clone(r.RTTs)
	slices.Sort(s)
	return s[int(q*float64(len(s)-1)+0.5)]
}

var (
	pingSummary = regexp.MustCompile(`(\d+) packets transmitted, (\d+) (?:packets )?received`)
	pingTime    = regexp.MustCompile(`time=([0-9.]+) ms`)
)

// Ping runs the system ping (iputils) inside ns: count echo requests of
// payload size bytes every interval, with the don't-fragment bit when df.
func Ping(ns, addr string, count int, interval time.Duration, size int, df bool) (PingResult, error) {
	args := []string{"-n", "-c", strconv.Itoa(count), "-i", fmt.Sprintf("%.3f", interval.Seconds()), "-W", "1", "-s", strconv.Itoa(size)}
	if df {
		args = append(args, "-M", "do")
	}
	out, _ := Command(ns, "ping", append(args, addr)...).CombinedOutput() // exit 1 = some loss
	var r PingResult
	m := pingSummary.FindStringSubmatch(string(out))
	if m == nil {
		return r, fmt.Errorf("ping %s in %s: no summary in output: %s", addr, ns, strings.TrimSpace(string(out)))
	}
	r.Sent, _ = strconv.Atoi(m[1])
	r.Received, _ = strconv.Atoi(m[2])
	for _, t := range pingTime.FindAllStringSubmatch(string(out), -1) {
		ms, _ := strconv.ParseFloat(t[1], 64)
		r.RTTs = append(r.RTTs, time.Duration(ms*float64(time.Millisecond)))
	}
	return r, nil
}

// WireGuard's per-packet overhead on an IPv4 underlay: outer IPv4 (20) + UDP
// (8) + WireGuard data header (16) + Poly1305 tag (16).
const wgOverheadIPv4 = 60

// InnerLimit is the largest inner IP packet that crosses an underlay path
// whose packets are limited to underlayMTU bytes, through a WireGuard device
// of MTU deviceMTU. WireGuard pads the plaintext to a multiple of 16 bytes,
// but never beyond the device MTU.
func InnerLimit(underlayMTU, deviceMTU int) int {
	best := 0
	for inner := 1; inner <= deviceMTU; inner++ {
		padded := min((inner+15)/16*16, deviceMTU)
		if wgOverheadIPv4+padded <= underlayMTU {
			best = inner
		}
	}
	return best
}

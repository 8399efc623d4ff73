package lab

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
)

// Route is one route of a namespace's main table, as `ip route` shows it.
type Route struct {
	Dst      string `json:"dst"`
	Dev      string `json:"dev"`
	Metric   int    `json:"metric"`
	Protocol string `json:"protocol"` // a name from rt_protos or a number, e.g. "117"
	MTU      int    `json:"-"`        // the route's MTU attribute, 0 if none
	Metrics  []struct {
		MTU int `json:"mtu"`
	} `json:"metrics,omitempty"`
}

func (r Route) String() string {
	s := fmt.Sprintf("%s dev %s metric %d proto %s", r.Dst, r.Dev, r.Metric, r.Protocol)
	if r.MTU > 0 {
		s += fmt.Sprintf(" mtu %d", r.MTU)
	}
	return s
}

// Routes returns the main-table routes of namespace ns for exactly prefix
// ("" = all), sorted by metric then device.
func Routes(ns, prefix string) ([]Route, error) {
	args := []string{"-j", "-n", ns, "route", "show"}
	if prefix != "" {
		args = append(args, "exact", prefix)
	}
	out, err := run("ip", args...)
	if err != nil {
		return nil, err
	}
	var rs []Route
	if err := json.Unmarshal([]byte(out), &rs); err != nil {
		return nil, fmt.Errorf("parsing ip -j route in %s: %w: %s", ns, err, out)
	}
	for i := range rs {
		for _, m := range rs[i].Metrics {
			rs[i].MTU = max(rs[i].MTU, m.MTU)
		}
		rs[i].Metrics = nil
		if rs[i].Protocol == "" {
			rs[i].Protocol = "boot"
		}
		if prefix != "" && rs[i].Dst != prefix { // ip shows host routes without /32
			rs[i].Dst = prefix
		}
	}
	slices.SortFunc(rs, func(a, b Route) int {
		if a.Metric != b.Metric {
			return a.Metric - b.Metric
		}
		return compare(a.Dev, b.Dev)
	})
	return rs, nil
}

func compare(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// RouteAdd adds a route in ns: prefix via dev with metric and protocol
// (a number, or a name from rt_protos such as "static").
func RouteAdd(ns, prefix, dev string, metric int, proto string) error {
	return IP("-n", ns, "route", "add", prefix, "dev", dev, "metric", strconv.Itoa(metric), "proto", proto)
}

// RouteDel deletes exactly that route in ns.
func RouteDel(ns, prefix, dev string, metric int) error {
	return IP("-n", ns, "route", "del", prefix, "dev", dev, "metric", strconv.Itoa(metric))
}

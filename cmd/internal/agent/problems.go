package agent

import (
	"cmp"
	"slices"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/wgpulse/wgpulse/collector/diagnose"
	"github.com/wgpulse/wgpulse/collector/expo"
)

// problemKey is one series of wgpulse_config_problem.
type problemKey struct{ check, device, name, publicKey string }

// problemFamily is wgpulse_config_problem: 1 for each (device, public_key,
// name, check) a poll's checks found wrong, written straight from that
// poll's list. A hub whose peers never handshake has a problem per peer
// (handshake_never, after neverGrace): as a GaugeVec the 10,000 of them
// kept 7.7 MB of children and label pairs alive, and each scrape gathered
// them all again. Here they are one slice, replaced per poll.
type problemFamily struct {
	keys atomic.Pointer[[]problemKey] // sorted by check, device, name, public_key; unique
}

var (
	fProblem = struct{ name, help string }{"wgpulse_config_problem",
		"1 while a diagnose check finds a problem (warning or error) on a device or peer; check names the check (wgpulse diagnose lists them)."}
	lnCheck, lnDevice, lnName, lnPublicKey = "check", "device", "name", "public_key"
	problemValue                           = 1.0
)

// set replaces the series with the warnings and errors among fs.
func (f *problemFamily) set(fs []diagnose.Finding) {
	keys := make([]problemKey, 0, len(fs))
	for _, x := range fs {
		if x.Severity > diagnose.Info {
			keys = append(keys, problemKey{check: x.Check, device: x.Device, name: x.Name, publicKey: x.PublicKey})
		}
	}
	slices.SortFunc(keys, func(a, b problemKey) int {
		return cmp.Or(cmp.Compare(a.check, b.check), cmp.Compare(a.device, b.device), cmp.Compare(a.name, b.name), cmp.Compare(a.publicKey, b.publicKey))
	})
	keys = slices.Compact(keys)
	f.keys.Store(&keys)
}

func (f *problemFamily) load() []problemKey {
	if k := f.keys.Load(); k != nil {
		return *k
	}
	return nil
}

var problemDesc = prometheus.NewDesc(fProblem.name, fProblem.help, []string{lnCheck, lnDevice, lnName, lnPublicKey}, nil)

// Describe sends the family's descriptor (Agent.Describe: it has no series
// until a check fails).
func (f *problemFamily) Describe(ch chan<- *prometheus.Desc) { ch <- problemDesc }

// Gather implements prometheus.Gatherer (the protobuf path).
func (f *problemFamily) Gather() ([]*dto.MetricFamily, error) {
	keys := f.load()
	fam := expo.NewFamily(fProblem.name, fProblem.help, dto.MetricType_GAUGE, len(keys))
	pairs, sets := expo.NewPairs(4*len(keys)), expo.NewSets(4*len(keys))
	for i := range keys {
		k := &keys[i]
		fam.Add(problemValue, sets.Set(pairs.Pair(&lnCheck, &k.check), pairs.Pair(&lnDevice, &k.device), pairs.Pair(&lnName, &k.name), pairs.Pair(&lnPublicKey, &k.publicKey)))
	}
	return expo.Families(fam), nil
}

// WriteText implements expo.TextGatherer: Gather's family as text.
func (f *problemFamily) WriteText(w *expo.TextWriter) error {
	w.Family(fProblem.name, fProblem.help, dto.MetricType_GAUGE)
	for _, k := range f.load() {
		w.Series(problemValue, expo.Label{Name: lnCheck, Value: k.check}, expo.Label{Name: lnDevice, Value: k.device},
			expo.Label{Name: lnName, Value: k.name}, expo.Label{Name: lnPublicKey, Value: k.publicKey})
	}
	return nil
}

package collector_test

import (
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/wgpulse/wgpulse/collector"
	"github.com/wgpulse/wgpulse/collector/expo"
)

// gatherer is what the agent serves for one collector: its self metrics
// through a pedantic registry plus its snapshot families.
func gatherer(t *testing.T, c *collector.Collector) prometheus.Gatherer {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	return sorted{expo.Gatherers{reg, c}}
}

// sorted orders series by labels as a registry does; the collector's own
// order (WireGuard's peer order) is not part of the exposition contract.
type sorted struct{ g prometheus.Gatherer }

func (s sorted) Gather() ([]*dto.MetricFamily, error) {
	mfs, err := s.g.Gather()
	for _, mf := range mfs {
		slices.SortFunc(mf.Metric, func(a, b *dto.Metric) int {
			return strings.Compare(labelKey(a), labelKey(b))
		})
	}
	return mfs, err
}

func labelKey(m *dto.Metric) string {
	var b strings.Builder
	for _, l := range m.GetLabel() {
		b.WriteString(l.GetValue())
		b.WriteByte(0)
	}
	return b.String()
}

func writeText(g prometheus.Gatherer, w io.Writer) error {
	mfs, err := g.Gather()
	if err != nil {
		return err
	}
	enc := expfmt.NewEncoder(w, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			return err
		}
	}
	return nil
}

package lab_test

import (
	"fmt"
	"math"
	"os"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/wgpulse/wgpulse/deploy/lab"
)

func TestMain(m *testing.M) {
	lab.RunChild()
	os.Exit(m.Run())
}

// series is one parsed scrape: metric name -> series.
type series map[string][]sample

type sample struct {
	labels map[string]string
	value  float64
}

func parseScrape(t testing.TB, body string) series {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parsing scrape: %v", err)
	}
	out := series{}
	for name, mf := range mfs {
		for _, m := range mf.GetMetric() {
			s := sample{labels: map[string]string{}}
			for _, l := range m.GetLabel() {
				s.labels[l.GetName()] = l.GetValue()
			}
			switch {
			case m.Gauge != nil:
				s.value = m.GetGauge().GetValue()
			case m.Counter != nil:
				s.value = m.GetCounter().GetValue()
			case m.Untyped != nil:
				s.value = m.GetUntyped().GetValue()
			default:
				s.value = math.NaN()
			}
			out[name] = append(out[name], s)
		}
	}
	return out
}

// get returns the value of the one series of name matching all labels.
func (s series) get(name string, labels map[string]string) (float64, bool) {
	for _, smp := range s[name] {
		ok := true
		for k, v := range labels {
			if smp.labels[k] != v {
				ok = false
				break
			}
		}
		if ok {
			return smp.value, true
		}
	}
	return 0, false
}

func (s series) mustGet(t testing.TB, name string, labels map[string]string) float64 {
	t.Helper()
	v, ok := s.get(name, labels)
	if !ok {
		t.Fatalf("no series %s%v in scrape; have %v", name, labels, s[name])
	}
	return v
}

func labelsOf(kv ...string) map[string]string {
	if len(kv)%2 != 0 {
		panic(fmt.Sprint("odd label list ", kv))
	}
	m := map[string]string{}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// Package expotest holds the check every expo.TextGatherer is held to.
package expotest

import (
	"bytes"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/wgpulse/wgpulse/collector/expo"
)

// TextGatherer gathers families and writes the same ones as text.
type TextGatherer interface {
	prometheus.Gatherer
	expo.TextGatherer
}

// TextMatchesGather fails t unless g's WriteText (what a text scrape gets)
// writes byte for byte what expfmt writes for g's Gather (what the protobuf
// path sees), and returns that text.
func TextMatchesGather(t testing.TB, g TextGatherer) string {
	t.Helper()
	want := Text(t, g)
	var got bytes.Buffer
	w := expo.NewTextWriter(&got)
	if err := g.WriteText(w); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got.String()); diff != "" {
		t.Errorf("WriteText differs from expfmt of Gather (-want +got):\n%s", diff)
	}
	return got.String()
}

// Text is what expfmt writes for g's Gather: the text a scrape of g gets
// through promhttp.
func Text(t testing.TB, g prometheus.Gatherer) string {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
			t.Fatal(err)
		}
	}
	return b.String()
}

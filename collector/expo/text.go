package expo

import (
	"bufio"
	"io"
	"math"
	"strconv"
	"strings"

	dto "github.com/prometheus/client_model/go"
)

// TextGatherer is a gatherer that can also write its families straight to
// the text exposition format, with no MetricFamily built: at 10,000 peers
// the families of one scrape are ~20 MB of short-lived objects, which is
// what sets a large node's RSS through the GC's heap target. Its Gather
// must describe the same series (the protobuf path uses it).
type TextGatherer interface {
	WriteText(w *TextWriter) error
}

// Label is one name="value" pair of a series. Verbatim says the value needs
// no escaping (a base64 key: no backslash, newline or quote), so it is
// copied without the scan: keys are half the bytes of a large scrape.
type Label struct {
	Name, Value string
	Verbatim    bool
}

// TextWriter writes families in the Prometheus text format 0.0.4, exactly as
// expfmt writes the same MetricFamily: HELP and TYPE lines once per family
// (only when it has a series), then one line per series with the labels in
// the order given (callers pass them sorted by name).
type TextWriter struct {
	w       *bufio.Writer
	buf     []byte
	pending struct {
		name, help string
		typ        dto.MetricType
		set        bool
	}
}

// NewTextWriter buffers writes to w; Flush ends them.
func NewTextWriter(w io.Writer) *TextWriter {
	return &TextWriter{w: bufio.NewWriterSize(w, 64<<10), buf: make([]byte, 0, 256)}
}

// Family starts a family; its header is written with its first series.
func (t *TextWriter) Family(name, help string, typ dto.MetricType) {
	t.pending.name, t.pending.help, t.pending.typ, t.pending.set = name, help, typ, true
}

// Series writes one series of the current family.
func (t *TextWriter) Series(v float64, labels ...Label) { t.line("", false, 0, v, labels) }

// Histogram writes one classic histogram of the current family, as expfmt
// writes a dto.Histogram whose buckets end below +Inf: a _bucket line per
// upper bound with its cumulative count (cum[i] for upper[i]) and the "le"
// label last, the +Inf bucket (count), then _sum and _count.
func (t *TextWriter) Histogram(upper []float64, cum []uint64, count uint64, sum float64, labels ...Label) {
	for i, u := range upper {
		t.line("_bucket", true, u, float64(cum[i]), labels)
	}
	t.line("_bucket", true, math.Inf(+1), float64(count), labels)
	t.line("_sum", false, 0, sum, labels)
	t.line("_count", false, 0, float64(count), labels)
}

// line writes the family's name with suffix, the labels (then le, when
// hasLE) and the value.
func (t *TextWriter) line(suffix string, hasLE bool, le, v float64, labels []Label) {
	// Built in bufio's free space when the line fits (no copy), else in buf.
	b := t.w.AvailableBuffer()
	scratch := cap(b) < 512
	if scratch {
		b = t.buf[:0]
	}
	if t.pending.set {
		t.pending.set = false
		b = append(b, "# HELP "...)
		b = append(b, t.pending.name...)
		b = append(b, ' ')
		b = appendEscaped(b, t.pending.help, false)
		b = append(b, "\n# TYPE "...)
		b = append(b, t.pending.name...)
		b = append(b, ' ')
		b = append(b, strings.ToLower(t.pending.typ.String())...)
		b = append(b, '\n')
	}
	b = append(b, t.pending.name...)
	b = append(b, suffix...)
	if len(labels) > 0 || hasLE {
		b = append(b, '{')
		for i, l := range labels {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, l.Name...)
			b = append(b, `="`...)
			if l.Verbatim {
				b = append(b, l.Value...)
			} else {
				b = appendEscaped(b, l.Value, true)
			}
			b = append(b, '"')
		}
		if hasLE {
			if len(labels) > 0 {
				b = append(b, ',')
			}
			b = append(b, `le="`...)
			b = appendFloat(b, le)
			b = append(b, '"')
		}
		b = append(b, '}')
	}
	b = append(b, ' ')
	b = appendFloat(b, v)
	b = append(b, '\n')
	_, _ = t.w.Write(b) // the first error is kept by bufio and returned by Flush
	if scratch {
		t.buf = b[:0] // keeps a grown scratch for the next line
	}
}

// Writer is the buffered stream, for other encoders to write families into
// between this writer's (their output and ours stay in order).
func (t *TextWriter) Writer() io.Writer { return t.w }

// Flush writes what is buffered and returns the first write error.
func (t *TextWriter) Flush() error { return t.w.Flush() }

// appendEscaped escapes a HELP text (\ and newline) or a label value (also ").
// Nearly every value needs nothing (keys are base64, names and addresses are
// plain): one pass over the bytes decides, and the value is copied whole.
// (strings.ContainsAny built its byte set on every call: 17% of a 10,000-peer
// scrape.)
func appendEscaped(b []byte, s string, quote bool) []byte {
	clean := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '\\' || c == '\n' || (c == '"' && quote) {
			clean = false
			break
		}
	}
	if clean {
		return append(b, s...)
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			b = append(b, `\\`...)
		case c == '\n':
			b = append(b, `\n`...)
		case c == '"' && quote:
			b = append(b, `\"`...)
		default:
			b = append(b, c)
		}
	}
	return b
}

// appendFloat formats a value as expfmt does.
func appendFloat(b []byte, f float64) []byte {
	switch {
	case f == 1:
		return append(b, '1')
	case f == 0:
		return append(b, '0')
	case f == -1:
		return append(b, "-1"...)
	case math.IsNaN(f):
		return append(b, "NaN"...)
	case math.IsInf(f, +1):
		return append(b, "+Inf"...)
	case math.IsInf(f, -1):
		return append(b, "-Inf"...)
	}
	return strconv.AppendFloat(b, f, 'g', -1, 64)
}

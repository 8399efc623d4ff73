package main

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

// Every row of a tick starts each column at the same place, and columns
// stay put from one tick to the next once a cell has widened (the time
// reaching 1m0s, a handshake age of 1m5s), also when it narrows again.
func TestDemoTableColumnsStayAligned(t *testing.T) {
	var tb table
	ticks := [][][]string{
		{{"[59s]", "tunnel", "faults", "age"}, {"", "dc1-primary", "none", "5s"}},
		{{"[1m0s]", "tunnel", "faults", "age"}, {"", "dc1-primary", "loss=20", "1m5s"}},
		{{"[1m1s]", "tunnel", "faults", "age"}, {"", "dc1-primary", "none", "6s"}},
	}
	var prev []int
	for k, rows := range ticks {
		var buf bytes.Buffer
		tb.write(&buf, rows)
		t.Logf("tick %d:\n%s", k, buf.String())
		lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
		if len(lines) != len(rows) {
			t.Fatalf("tick %d: %d lines for %d rows", k, len(lines), len(rows))
		}
		// Where columns 1.. start (column 0 is empty in data rows).
		starts := func(r int) []int {
			var s []int
			for c := 1; c < len(rows[r]); c++ {
				s = append(s, strings.Index(lines[r], rows[r][c]))
			}
			return s
		}
		head := starts(0)
		for r := 1; r < len(rows); r++ {
			if got := starts(r); !slices.Equal(got, head) {
				t.Errorf("tick %d: row %d columns start at %v, the header's at %v", k, r, got, head)
			}
		}
		if k == 2 && !slices.Equal(head, prev) {
			t.Errorf("columns moved from %v to %v when cells narrowed", prev, head)
		}
		prev = head
	}
}

package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// TestFigureOnlyFromASampleWhileAllAreOpen: the memory figure comes from a
// sample taken, start to end, after every stream's first event and before
// any stream closed; with no such sample there is no figure and the run
// fails, as it does when the target under test fails a stream.
func TestFigureOnlyFromASampleWhileAllAreOpen(t *testing.T) {
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	both := []stream{
		{first: at(100), closed: at(1000), intact: true},
		{first: at(300), closed: at(1200), intact: true},
	}
	slow := []stream{ // the second opens after the first has closed
		{first: at(100), closed: at(500), intact: true},
		{first: at(600), closed: at(1200), intact: true},
	}
	cut := []stream{
		{first: at(100), closed: at(1000), intact: true},
		{closed: at(50), why: "connection refused"},
	}
	samples := []sample{
		{at(200), at(201), 5000},  // before the second stream opened: not counted
		{at(400), at(401), 7000},  // both open
		{at(999), at(1001), 9000}, // the first closed during the reading: not counted
		{at(1100), at(1101), 9500},
	}
	for _, c := range []struct {
		name    string
		streams []stream
		allow   bool
		code    int
		want    string
	}{
		{"all open together", both, false, 0, "samples_in_window=1 rss_idle_kib=1000 rss_peak_open_kib=7000 per_stream_kib=3000.0 rss_peak_run_kib=9500"},
		{"never all open", slow, false, 1, "premise not met"},
		{"the target fails a stream", cut, false, 1, "1 of 2 streams failed"},
		{"a baseline fails a stream", cut, true, 0, "open=1 intact=1 failed=1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := report(&out, &errOut, c.streams, samples, 1000, t0, c.allow, "")
			if code != c.code || !strings.Contains(out.String()+errOut.String(), c.want) {
				t.Errorf("exit %d, printed %q %q; want exit %d and %q", code, out.String(), errOut.String(), c.code, c.want)
			}
		})
	}
}

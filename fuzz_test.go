package llmretry

import (
	"net/http"
	"testing"
	"time"
)

// The header parsers see whatever a server (or a proxy in between) sends.
// They must never panic, and a wait they accept is always positive.

func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"3", "1.5", "-1", "0", "NaN", "Inf", "1e309", "Wed, 21 Oct 2015 07:28:00 GMT",
		"Wednesday, 21-Oct-15 07:28:00 GMT", "Wed Oct 21 07:28:00 2015", " 7 ", "", "0x10", "1_000"} {
		f.Add(s)
	}
	now := time.Date(2015, 10, 21, 7, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, v string) {
		d, ok := ParseRetryAfter(v, now)
		if ok && d <= 0 {
			t.Fatalf("ParseRetryAfter(%q) = %v, ok", v, d)
		}
		if !ok && d != 0 {
			t.Fatalf("ParseRetryAfter(%q) = %v, not ok", v, d)
		}
	})
}

func FuzzHeaderWait(f *testing.F) {
	f.Add("250", "", "")
	f.Add("", "12.5", "")
	f.Add("", "", "120")
	f.Add("nan", "-1", "Fri, 27 Nov 2026 12:00:30 GMT")
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, ms, xms, ra string) {
		h := http.Header{}
		h.Set("Retry-After-Ms", ms)
		h.Set("X-Ms-Retry-After-Ms", xms)
		h.Set("Retry-After", ra)
		d, src, ok := HeaderWait(h, now)
		if ok && (d <= 0 || src == SourceBackoff) {
			t.Fatalf("HeaderWait(%q, %q, %q) = %v %v", ms, xms, ra, d, src)
		}
		if !ok && (d != 0 || src != SourceBackoff) {
			t.Fatalf("HeaderWait(%q, %q, %q) = %v %v, not ok", ms, xms, ra, d, src)
		}
	})
}

func FuzzShouldRetryHeader(f *testing.F) {
	for _, s := range []string{"true", "false", "TRUE", " false ", "yes", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		retry, ok := shouldRetryHeader(http.Header{"X-Should-Retry": {v}})
		if !ok && retry {
			t.Fatalf("%q: retry without a verdict", v)
		}
	})
}

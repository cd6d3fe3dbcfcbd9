package llmretry

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/llmretry/llmretry/internal/wire"
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

// The body and message parsers read what an upstream wrote. They must never
// panic; a wait they find is positive; a cause they keep is safe to log.

func FuzzClassifyErrorBody(f *testing.F) {
	for _, s := range []string{
		`{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}`,
		`{"error":{"message":"Rate limit reached. Please try again in 16.062s.","type":"requests","code":"rate_limit_exceeded"}}`,
		`{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`,
		`{"type":"error","error":{"type":"rate_limit_error","message":"x","details":{"error_code":"enforced_spend_limit_reached"}}}`,
		`[{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"53.5s"}]}}]`,
		`{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]}]}}`,
		`{"error":{"message":"Please retry after 6 seconds","code":"429"}}`,
		`{"error":null}`, `[]`, `{"error":{"code":{"x":1}}}`, "",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		v, ok := classifyErrorBody(body)
		if !ok && (v != bodyVerdict{}) {
			t.Fatalf("a verdict from a body that is not an error: %+v", v)
		}
		if v.waitOK && v.wait <= 0 {
			t.Fatalf("non-positive wait %v", v.wait)
		}
		for i := 0; i < len(v.cause); i++ {
			if c := v.cause[i]; c < ' ' || c > '~' {
				t.Fatalf("cause with byte %#x: %q", c, v.cause)
			}
		}
		if len(v.cause) > 2*maxUpstreamWord {
			t.Fatalf("cause of %d bytes", len(v.cause))
		}
	})
}

func FuzzMessageWait(f *testing.F) {
	for _, s := range []string{"Please try again in 16.062s.", "try again in 1m2.5s", "Please retry after 6 seconds",
		"try again in 9999999h", "try again in 1e3s", "retry after -5 seconds", "try again in 5µs", "try again in ", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, msg string) {
		if d, ok := messageWait(msg); ok != (d > 0) {
			t.Fatalf("messageWait(%q) = %v %v", msg, d, ok)
		}
	})
}

func FuzzResetWait(f *testing.F) {
	f.Add("1s", "0", "6m0s", "5", "2026-11-27T12:00:30Z", "0")
	f.Add("20ms", "", "", "", "", "")
	f.Add("-1s", "0", "99999999999h", "0", "not a time", "0")
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, req, reqLeft, tok, tokLeft, anth, anthLeft string) {
		h := http.Header{}
		h.Set("X-Ratelimit-Reset-Requests", req)
		h.Set("X-Ratelimit-Remaining-Requests", reqLeft)
		h.Set("X-Ratelimit-Reset-Tokens", tok)
		h.Set("X-Ratelimit-Remaining-Tokens", tokLeft)
		h.Set("Anthropic-Ratelimit-Requests-Reset", anth)
		h.Set("Anthropic-Ratelimit-Requests-Remaining", anthLeft)
		if d, ok := resetWait(h, now); ok != (d > 0) {
			t.Fatalf("resetWait = %v %v", d, ok)
		}
	})
}

// A model is renamed in whatever body a caller sends, as aim renames it:
// never a panic, the bytes around the model kept, and a JSON body stays
// JSON with the new name and the same fields.
func FuzzRenameModelInJSON(f *testing.F) {
	for _, s := range []string{`{"model":"gpt-4o","messages":[]}`, `{"model":1}`, `{"a":{"model":"x"},"model":"y"}`,
		`[{"model":"x"}]`, `{"model":"\u00e9\"x"}`, `{`, ``, `{"model":"a","model":"b"}`, `  {"model" : "m" }  `} {
		f.Add([]byte(s), "openai/gpt-4o")
	}
	f.Fuzz(func(t *testing.T, body []byte, name string) {
		bm, err := wire.ReadModel(bytes.NewReader(body))
		if err != nil || bm.Problem != "" || bm.End == 0 {
			return // such a body is refused where a model is renamed
		}
		quoted, _ := json.Marshal(name)
		out, err := io.ReadAll(wire.Replace(io.NopCloser(bytes.NewReader(body)), bm.Start, bm.End, quoted))
		if err != nil {
			t.Fatal(err)
		}
		var in, got map[string]any
		if json.Unmarshal(body, &in) != nil || json.Unmarshal(out, &got) != nil {
			t.Fatalf("valid JSON %q became invalid: %q", body, out)
		}
		if utf8.ValidString(name) && got["model"] != name {
			t.Fatalf("model in %q is %v after renaming to %q", out, got["model"], name)
		}
		if len(in) != len(got) {
			t.Fatalf("renaming changed the fields: %q -> %q", body, out)
		}
	})
}

package llmretry

import (
	"bytes"
	"encoding/json"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Provider rules: what LLM APIs say in their error bodies and rate-limit
// headers, beyond the status code. The README's table links each rule to
// the provider's documentation.

// errorBodyLimit bounds the peek at an error body.
const errorBodyLimit = 64 << 10

// bodyVerdict is what an error body says.
type bodyVerdict struct {
	// final: waiting will not help (quota or spend limit used up).
	final bool
	// daily: the quota used up is a daily one (Gemini's "PerDay" quotas,
	// which reset at midnight Pacific time).
	daily bool
	// transient: a known retryable error (overloaded, rate limited).
	transient bool
	cause     string
	wait      time.Duration
	src       WaitSource
	waitOK    bool
}

// errorEnvelope covers the error shapes of OpenAI (and compatible servers,
// OpenRouter, Groq, Azure), Anthropic and Gemini.
type errorEnvelope struct {
	Error *struct {
		Message string          `json:"message"`
		Type    string          `json:"type"`
		Code    json.RawMessage `json:"code"`   // a string (OpenAI) or a number (Gemini, OpenRouter)
		Status  string          `json:"status"` // Gemini: RESOURCE_EXHAUSTED
		Details json.RawMessage `json:"details"`
	} `json:"error"`
}

// googleDetail is one entry of a Gemini error's details.
type googleDetail struct {
	Type       string `json:"@type"`
	RetryDelay string `json:"retryDelay"`
	Violations []struct {
		QuotaID string `json:"quotaId"`
	} `json:"violations"`
}

// classifyErrorBody reads a provider's JSON error. ok is false when body
// is not one.
func classifyErrorBody(body []byte) (v bodyVerdict, ok bool) {
	body = bytes.TrimSpace(body)
	if len(body) > 0 && body[0] == '[' { // Gemini sometimes wraps the error in a list
		var list []json.RawMessage
		if json.Unmarshal(body, &list) != nil || len(list) == 0 {
			return v, false
		}
		body = list[0]
	}
	var env errorEnvelope
	if json.Unmarshal(body, &env) != nil || env.Error == nil {
		return v, false
	}
	e := env.Error
	code := strings.Trim(string(e.Code), `"`)
	switch {
	case code == "insufficient_quota" || e.Type == "insufficient_quota":
		return bodyVerdict{final: true, cause: "insufficient_quota"}, true
	case e.Type == "billing_error":
		return bodyVerdict{final: true, cause: "billing_error"}, true
	}
	v.cause = upstreamWord(firstNonEmpty(e.Type, e.Status, code))
	if len(e.Details) > 0 {
		switch e.Details[0] {
		case '{': // Anthropic: {"error_code": "enforced_spend_limit_reached"}
			var d struct {
				ErrorCode string `json:"error_code"`
			}
			if json.Unmarshal(e.Details, &d) == nil && d.ErrorCode == "enforced_spend_limit_reached" {
				return bodyVerdict{final: true, cause: d.ErrorCode}, true
			}
		case '[': // Gemini: google.rpc.QuotaFailure, google.rpc.RetryInfo
			var ds []googleDetail
			if json.Unmarshal(e.Details, &ds) == nil {
				for _, d := range ds {
					switch {
					case strings.HasSuffix(d.Type, "google.rpc.QuotaFailure"):
						for _, q := range d.Violations {
							if strings.Contains(q.QuotaID, "PerDay") {
								return bodyVerdict{final: true, daily: true, cause: "daily quota " + upstreamWord(q.QuotaID)}, true
							}
						}
					case strings.HasSuffix(d.Type, "google.rpc.RetryInfo"):
						if w, ok := parseProtoDuration(d.RetryDelay); ok {
							v.wait, v.src, v.waitOK = w, SourceRetryInfo, true
						}
					}
				}
			}
		}
	}
	if !v.waitOK {
		if w, ok := messageWait(e.Message); ok {
			v.wait, v.src, v.waitOK = w, SourceMessage, true
		}
	}
	v.transient = transientErrorKind(e.Type, code, e.Status)
	return v, true
}

// transientErrorKind reports the error kinds that name a passing state.
func transientErrorKind(kinds ...string) bool {
	for _, k := range kinds {
		switch strings.ToLower(k) {
		case "overloaded_error", "overloaded", "rate_limit_error", "rate_limit_exceeded",
			"api_error", "server_error", "internal_error", "service_unavailable", "timeout",
			"resource_exhausted", "unavailable", "internal", "deadline_exceeded":
			return true
		}
		if n, err := strconv.Atoi(k); err == nil && RetryableStatus(n) {
			return true
		}
	}
	return false
}

// parseProtoDuration parses a protobuf Duration in its JSON form: "53s",
// "0.5s", "1.000340s".
func parseProtoDuration(s string) (time.Duration, bool) {
	s = strings.TrimSpace(s)
	if !strings.HasSuffix(s, "s") {
		return 0, false
	}
	return parseFloatUnit(s[:len(s)-1], float64(time.Second))
}

// messageWait finds a wait written in an error message: OpenAI and Groq's
// "Please try again in 16.062s" (also "1m2.5s", "20ms"), Azure's "Please
// retry after 6 seconds".
func messageWait(msg string) (time.Duration, bool) {
	for _, phrase := range []string{"try again in ", "retry after "} {
		i := indexFold(msg, phrase)
		if i < 0 {
			continue
		}
		rest := msg[i+len(phrase):]
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			continue
		}
		tok := strings.TrimRight(fields[0], ".,;)")
		if len(fields) > 1 && strings.HasPrefix(strings.ToLower(fields[1]), "second") {
			if d, ok := parseFloatUnit(tok, float64(time.Second)); ok {
				return d, true
			}
			continue
		}
		if d, ok := parseGoDuration(tok); ok {
			return d, true
		}
	}
	return 0, false
}

// indexFold is strings.Index ignoring ASCII case, on msg's own bytes.
// (Searching strings.ToLower(msg) instead gave an index into a string whose
// length differs when msg is not valid UTF-8, and slicing msg with it
// panicked.)
func indexFold(msg, phrase string) int {
	for i := 0; i+len(phrase) <= len(msg); i++ {
		if strings.EqualFold(msg[i:i+len(phrase)], phrase) {
			return i
		}
	}
	return -1
}

// goDurationUnits are the units of a Go duration string, longest first
// where one is a prefix of another.
var goDurationUnits = [...]struct {
	name string
	unit time.Duration
}{{"ns", time.Nanosecond}, {"us", time.Microsecond}, {"µs", time.Microsecond}, {"μs", time.Microsecond},
	{"ms", time.Millisecond}, {"s", time.Second}, {"m", time.Minute}, {"h", time.Hour}}

// parseGoDuration reads a positive Go duration ("16.062s", "1m2.5s",
// "20ms", "6m0s") as OpenAI writes them in messages and reset headers. Each
// number follows the header rule, digits[.digits]; a sign is garbage. A value
// too large for a Duration saturates at maxWait, as an equally huge
// Retry-After does, where time.ParseDuration would fail and send the retry
// on backoff instead.
func parseGoDuration(s string) (time.Duration, bool) {
	if s == "" {
		return 0, false
	}
	var total float64
	for s != "" {
		i := 0
		for i < len(s) && (s[i] >= '0' && s[i] <= '9' || s[i] == '.') {
			i++
		}
		num := s[:i]
		if !isDecimal(num) {
			return 0, false
		}
		s = s[i:]
		var unit time.Duration
		for _, u := range goDurationUnits {
			if strings.HasPrefix(s, u.name) {
				unit, s = u.unit, s[len(u.name):]
				break
			}
		}
		if unit == 0 {
			return 0, false
		}
		f, err := strconv.ParseFloat(num, 64)
		if err != nil && !isRangeErr(err) {
			return 0, false
		}
		total += f * float64(unit)
	}
	switch {
	case total >= float64(maxWait) || math.IsInf(total, 0):
		return maxWait, true
	case total < 1:
		return 0, false
	}
	return time.Duration(total), true
}

// resetWait reads the rate-limit reset headers of a 429 that carries no
// Retry-After: OpenAI's x-ratelimit-reset-{requests,tokens} (Go durations)
// and Anthropic's anthropic-ratelimit-*-reset (RFC 3339 times). When a
// bucket's remaining count is 0, its reset is the wait (the longest, if
// several are empty); when none says, the shortest reset is the least
// that is needed.
func resetWait(h http.Header, now time.Time) (time.Duration, bool) {
	var empty, any time.Duration
	note := func(d time.Duration, remaining string) {
		if d <= 0 {
			return
		}
		if strings.TrimSpace(remaining) == "0" {
			empty = max(empty, d)
		}
		if any == 0 || d < any {
			any = d
		}
	}
	for _, b := range []string{"requests", "tokens"} {
		if v := h.Get("X-Ratelimit-Reset-" + b); v != "" {
			if d, ok := parseGoDuration(strings.TrimSpace(v)); ok {
				note(d, h.Get("X-Ratelimit-Remaining-"+b))
			}
		}
	}
	for _, b := range []string{"requests", "tokens", "input-tokens", "output-tokens"} {
		if v := h.Get("Anthropic-Ratelimit-" + b + "-Reset"); v != "" {
			if t, err := time.Parse(time.RFC3339, strings.TrimSpace(v)); err == nil {
				note(t.Sub(now), h.Get("Anthropic-Ratelimit-"+b+"-Remaining"))
			}
		}
	}
	if empty > 0 {
		return empty, true
	}
	return any, any > 0
}

// pacific is the time zone Gemini's daily quotas reset in (at midnight),
// loaded once, when first needed; without the zone database it is PST.
var pacific = sync.OnceValue(func() *time.Location {
	if loc, err := time.LoadLocation("America/Los_Angeles"); err == nil {
		return loc
	}
	return time.FixedZone("PST", -8*60*60)
})

// untilPacificMidnight is how long from now until the next midnight in
// Pacific time, when Gemini's daily quotas reset.
func untilPacificMidnight(now time.Time) time.Duration {
	t := now.In(pacific())
	return time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, t.Location()).Sub(now)
}

// ProviderErrors is the built-in rule for what LLM APIs say beyond the
// status code. On a response that StatusCodes would retry, it reads the JSON
// error body (a bounded peek, put back for the caller) and the rate-limit
// headers: a quota or spend limit that waiting will not clear stops; a wait
// written in the body ("try again in 16.062s", RetryInfo) or in a reset
// header is honoured when no Retry-After family header gave one. It passes
// on everything else, and when the body stalls (the status decides then).
func ProviderErrors(a Attempt) Decision {
	if a.Response == nil || a.Response.StatusCode < 400 {
		return Decision{}
	}
	d := StatusCodes(a)
	if d.Action != Retry {
		return Decision{}
	}
	body, err := a.Body()
	if err == errBodyStalled {
		return Decision{}
	}
	if bv, ok := classifyErrorBody(body); ok {
		if bv.final {
			d.Action = Stop
			d.Cause += ": " + bv.cause
			// The quota's window, when known: a daily quota's, or the
			// wait the headers asked for (already in d).
			if bv.daily {
				d.Wait, d.Source = untilPacificMidnight(a.Now), SourceQuotaReset
			}
			return d
		}
		if bv.cause != "" {
			d.Cause += ": " + bv.cause
		}
		if d.Wait == 0 && bv.waitOK {
			d.Wait, d.Source = bv.wait, bv.src
		}
	}
	if d.Wait == 0 && a.Response.StatusCode == http.StatusTooManyRequests {
		if w, ok := resetWait(a.Response.Header, a.Now); ok {
			d.Wait, d.Source = w, SourceRateLimitReset
		}
	}
	return d
}

// maxUpstreamWord bounds an error kind taken from a response body.
const maxUpstreamWord = 64

// upstreamWord makes an error kind that an upstream wrote ("error.type",
// "error.code", a quotaId) safe to log: it goes into causes, events and log
// lines, and an upstream may echo anything there, a key included. Only a
// word of letters, digits, '_', '-' and '.', at most 64 bytes, is kept, and
// not one that mixes upper case, lower case and digits, as API keys do and
// error codes ("rate_limit_exceeded", "RESOURCE_EXHAUSTED", "429",
// "GenerateRequestsPerDayPerProjectPerModel-FreeTier") do not. Anything else
// is replaced whole, never cut, so no part of a secret survives.
func upstreamWord(s string) string {
	if s == "" {
		return ""
	}
	if len(s) > maxUpstreamWord {
		return "(unrecognised)"
	}
	var upper, lower, digit bool
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= 'A' && c <= 'Z':
			upper = true
		case c >= 'a' && c <= 'z':
			lower = true
		case c >= '0' && c <= '9':
			digit = true
		case c == '_' || c == '-' || c == '.':
		default:
			return "(unrecognised)"
		}
	}
	if upper && lower && digit {
		return "(unrecognised)"
	}
	return s
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}

package llmretry

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// WaitSource says where a wait came from.
type WaitSource int

const (
	// SourceBackoff: no server hint; the Policy's exponential backoff.
	SourceBackoff WaitSource = iota
	// SourceRetryAfterMs: the retry-after-ms header (OpenAI, Azure).
	SourceRetryAfterMs
	// SourceMsRetryAfterMs: the x-ms-retry-after-ms header (Azure).
	SourceMsRetryAfterMs
	// SourceRetryAfter: the Retry-After header, seconds or HTTP-date.
	SourceRetryAfter
	// SourceRetryInfo: google.rpc.RetryInfo.retryDelay in a Gemini error body.
	SourceRetryInfo
	// SourceMessage: "Please try again in 16.062s" in an error message.
	SourceMessage
	// SourceRateLimitReset: x-ratelimit-reset-* or anthropic-ratelimit-*-reset.
	SourceRateLimitReset
	// SourceCooldown: the rest of a wait another request to the same
	// upstream was told to observe.
	SourceCooldown
	// SourceFailover: no wait; the next attempt goes at once to another key
	// or target (see NewFailoverTransport).
	SourceFailover
	// SourceQuotaReset: when a quota that was used up resets (a Gemini
	// daily quota, at midnight Pacific time). It is never waited on: a key
	// out of quota rests until then.
	SourceQuotaReset
)

var sourceNames = [...]string{
	SourceBackoff:        "backoff",
	SourceRetryAfterMs:   "retry-after-ms",
	SourceMsRetryAfterMs: "x-ms-retry-after-ms",
	SourceRetryAfter:     "retry-after",
	SourceRetryInfo:      "retry-info",
	SourceMessage:        "error-message",
	SourceRateLimitReset: "ratelimit-reset",
	SourceCooldown:       "cooldown",
	SourceFailover:       "failover",
	SourceQuotaReset:     "quota-reset",
}

func (s WaitSource) String() string {
	if s >= 0 && int(s) < len(sourceNames) {
		return sourceNames[s]
	}
	return "WaitSource(" + strconv.Itoa(int(s)) + ")"
}

// maxWait stands for "longer than anyone would wait": a parsable hint too
// large for a time.Duration is still a request to wait too long.
const maxWait = time.Duration(math.MaxInt64)

// HeaderWait reads the wait a response's headers ask for, in the order the
// official SDKs read them: retry-after-ms, x-ms-retry-after-ms, then
// Retry-After as seconds (integer or fractional) or an HTTP-date relative to
// now. Negative, zero, NaN, infinite and unparsable values are ignored, so
// ok is false and backoff applies; a zero wait is ignored too, so that a
// server saying "0" cannot drive a hot loop.
func HeaderWait(h http.Header, now time.Time) (wait time.Duration, src WaitSource, ok bool) {
	if v := h.Get("Retry-After-Ms"); v != "" {
		if d, ok := parseFloatUnit(v, float64(time.Millisecond)); ok {
			return d, SourceRetryAfterMs, true
		}
	}
	if v := h.Get("X-Ms-Retry-After-Ms"); v != "" {
		if d, ok := parseFloatUnit(v, float64(time.Millisecond)); ok {
			return d, SourceMsRetryAfterMs, true
		}
	}
	if v := h.Get("Retry-After"); v != "" {
		if d, ok := ParseRetryAfter(v, now); ok {
			return d, SourceRetryAfter, true
		}
	}
	return 0, SourceBackoff, false
}

// ParseRetryAfter parses a Retry-After value: delay-seconds (digits,
// optionally with a fraction: "3", "1.5") or an HTTP-date in any form
// http.ParseTime takes, or in RFC 1123 form with the zone written "UTC" or
// "+0000" (what Go's time.RFC1123 and RFC1123Z produce), measured from now.
// ok is false for anything unusable: any other shape ("1e3", "+5", "-1",
// "Inf"), zero, or a date not after now. A number too large for a Duration
// is a request to wait too long, not garbage.
func ParseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if c := v[0]; c >= '0' && c <= '9' || c == '.' {
		return parseFloatUnit(v, float64(time.Second))
	}
	t, ok := parseHTTPDate(v)
	if !ok {
		return 0, false
	}
	d := t.Sub(now)
	if d <= 0 {
		return 0, false
	}
	return d, true
}

// parseHTTPDate reads an HTTP-date as http.ParseTime does, and also the RFC
// 1123 forms with a "UTC" or numeric zone, but only when that zone is zero
// hours from UTC: HTTP-dates are always in GMT, and time.Parse gives an
// unknown zone abbreviation ("PST") a zero offset it does not mean.
func parseHTTPDate(v string) (time.Time, bool) {
	if t, err := http.ParseTime(v); err == nil {
		return t, true
	}
	if t, err := time.Parse(time.RFC1123Z, v); err == nil {
		_, off := t.Zone()
		return t, off == 0
	}
	if t, err := time.Parse(time.RFC1123, v); err == nil {
		name, _ := t.Zone()
		return t, name == "UTC"
	}
	return time.Time{}, false
}

// parseFloatUnit parses digits[.digits] (or .digits) as a number of units.
// Anything else (a sign, an exponent, "Inf", "NaN", hex, underscores) is
// garbage. A value too large for a Duration saturates at maxWait rather than
// wrapping: it still asks for a wait too long to honour.
func parseFloatUnit(v string, unit float64) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if !isDecimal(v) {
		return 0, false
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil && !isRangeErr(err) {
		return 0, false
	}
	if f <= 0 {
		return 0, false
	}
	ns := f * unit
	if math.IsInf(ns, 0) || ns >= float64(maxWait) {
		return maxWait, true
	}
	if ns < 1 {
		return 0, false
	}
	return time.Duration(ns), true
}

// isDecimal reports whether v is digits with at most one '.', and at least
// one digit.
func isDecimal(v string) bool {
	digits, dots := 0, 0
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case c >= '0' && c <= '9':
			digits++
		case c == '.':
			dots++
		default:
			return false
		}
	}
	return digits > 0 && dots <= 1
}

func isRangeErr(err error) bool {
	ne, ok := err.(*strconv.NumError)
	return ok && ne.Err == strconv.ErrRange
}

// shouldRetryHeader reads x-should-retry, the server's own verdict that the
// OpenAI and Anthropic SDKs let override the status rule. ok is false when
// the header is absent or says something else than true or false.
func shouldRetryHeader(h http.Header) (retry, ok bool) {
	v := h.Get("X-Should-Retry")
	if v == "" {
		return false, false
	}
	v = strings.TrimSpace(v)
	switch {
	case strings.EqualFold(v, "true"):
		return true, true
	case strings.EqualFold(v, "false"):
		return false, true
	}
	return false, false
}

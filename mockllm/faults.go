package mockllm

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Kind is what a Fault does to one request.
type Kind int

const (
	// OK answers normally.
	OK Kind = iota
	// Status answers with an error status in the API's error shape, with
	// the Fault's headers.
	Status
	// Quota answers 429 with the API's "quota used up" error: OpenAI
	// insufficient_quota, Anthropic enforced_spend_limit_reached, Gemini a
	// per-day QuotaFailure.
	Quota
	// RetryInfo answers 429 RESOURCE_EXHAUSTED with a google.rpc.RetryInfo
	// of the Fault's Delay (in every API's path: the body is what counts).
	RetryInfo
	// Reset cuts the connection before any response.
	Reset
	// Stall waits Delay before answering normally (or until the client
	// goes away); with a MaxDelay, a wait drawn evenly from Delay to
	// MaxDelay.
	Stall
	// FirstEventError answers 200 text/event-stream whose first event is an
	// overloaded error.
	FirstEventError
	// Drop streams Events events, then cuts the connection.
	Drop
	// Slow streams with Delay between events (drawn from Delay to
	// MaxDelay, if set, once per request).
	Slow
	// Cut streams the reply but cuts the connection after exactly Bytes
	// bytes of the event stream: the cut can fall inside an event, inside
	// a JSON string, even inside a multi-byte UTF-8 character. With Bytes
	// at or past the stream's end, the whole stream is sent and the
	// connection is still cut before the response ends. A reply that is
	// not streamed is served whole, as with Drop.
	Cut
)

// Fault is one scripted behaviour.
type Fault struct {
	Kind   Kind
	Code   int               // for Status
	Header map[string]string // for Status
	Delay  time.Duration     // for RetryInfo, Stall, Slow
	// MaxDelay, above Delay, makes a Stall or Slow wait a draw from the
	// range: a model's latency varies, and clients in lockstep measure
	// their own bursts rather than what sits between them and the model.
	MaxDelay time.Duration
	Events   int     // for Drop
	Bytes    int     // for Cut
	Weight   float64 // in a mix: the share of requests, 0..1
}

// Script says which Fault each request gets. In sequence mode the n-th
// request gets the n-th Fault and every request after the last is OK. In
// mix mode (any Fault has a weight) each request draws a Fault by weight,
// from a seeded source, and the remaining share is OK.
type Script struct {
	Faults []Fault
	Mix    bool
}

// ParseFaults parses a fault spec: steps separated by commas, each
//
//	ok | STATUS[:retry-after=V][:retry-after-ms=V][:x-should-retry=V] |
//	quota | retryinfo=DUR | reset | stall=DUR | sse-error | drop=N | cut=N | slow=DUR
//
// optionally followed by @P% to make the script a mix ("503@20%,reset@5%").
// stall and slow also take a range, DUR..DUR ("stall=10ms..30ms"), from
// which each request draws its own wait. drop=N cuts a stream after N whole
// events, cut=N after N bytes of it. The empty spec is every request OK.
func ParseFaults(spec string) (Script, error) {
	var s Script
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return s, nil
	}
	total := 0.0
	for i, step := range strings.Split(spec, ",") {
		step = strings.TrimSpace(step)
		body, weight, hasWeight := strings.Cut(step, "@")
		f, err := parseStep(body)
		if err != nil {
			return Script{}, fmt.Errorf("fault %d %q: %w", i+1, step, err)
		}
		if hasWeight {
			p, err := strconv.ParseFloat(strings.TrimSuffix(weight, "%"), 64)
			if err != nil || p < 0 || p > 100 || p != p {
				return Script{}, fmt.Errorf("fault %d %q: weight must be a percentage from 0 to 100", i+1, step)
			}
			f.Weight = p / 100
			total += f.Weight
			s.Mix = true
		}
		s.Faults = append(s.Faults, f)
	}
	if s.Mix {
		for i, f := range s.Faults {
			if f.Weight == 0 {
				return Script{}, fmt.Errorf("fault %d: in a mix every fault needs a weight (@P%%)", i+1)
			}
		}
		if total > 1+1e-9 {
			return Script{}, fmt.Errorf("weights add up to %.0f%%, more than 100%%", total*100)
		}
	}
	return s, nil
}

func parseStep(step string) (Fault, error) {
	name, arg, _ := strings.Cut(step, "=")
	if code, err := strconv.Atoi(strings.SplitN(step, ":", 2)[0]); err == nil {
		return parseStatus(code, step)
	}
	dur := func() (time.Duration, error) {
		d, err := time.ParseDuration(arg)
		if err != nil || d < 0 {
			return 0, fmt.Errorf("want a duration such as 2s, got %q", arg)
		}
		return d, nil
	}
	switch name {
	case "ok":
		return Fault{Kind: OK}, nil
	case "quota":
		return Fault{Kind: Quota}, nil
	case "reset":
		return Fault{Kind: Reset}, nil
	case "sse-error":
		return Fault{Kind: FirstEventError}, nil
	case "retryinfo":
		d, err := dur()
		return Fault{Kind: RetryInfo, Delay: d}, err
	case "stall", "slow":
		kind := Stall
		if name == "slow" {
			kind = Slow
		}
		lo, hi, isRange := strings.Cut(arg, "..")
		arg = lo
		d, err := dur()
		if err != nil || !isRange {
			return Fault{Kind: kind, Delay: d}, err
		}
		arg = hi
		upTo, err := dur()
		if err == nil && upTo < d {
			err = fmt.Errorf("range %s..%s runs backwards", lo, hi)
		}
		return Fault{Kind: kind, Delay: d, MaxDelay: upTo}, err
	case "drop":
		n, err := strconv.Atoi(arg)
		if err != nil || n < 0 {
			return Fault{}, fmt.Errorf("want a number of events, got %q", arg)
		}
		return Fault{Kind: Drop, Events: n}, nil
	case "cut":
		n, err := strconv.Atoi(arg)
		if err != nil || n < 0 {
			return Fault{}, fmt.Errorf("want a number of bytes, got %q", arg)
		}
		return Fault{Kind: Cut, Bytes: n}, nil
	}
	return Fault{}, fmt.Errorf("unknown fault %q (want ok, a status, quota, retryinfo=, reset, stall=, sse-error, drop=, cut= or slow=)", name)
}

func parseStatus(code int, step string) (Fault, error) {
	if code < 400 || code > 599 {
		return Fault{}, fmt.Errorf("status %d is not an error status", code)
	}
	f := Fault{Kind: Status, Code: code, Header: map[string]string{}}
	parts := strings.Split(step, ":")
	for _, p := range parts[1:] {
		k, v, ok := strings.Cut(p, "=")
		if !ok {
			return Fault{}, fmt.Errorf("option %q: want name=value", p)
		}
		switch strings.ToLower(k) {
		case "retry-after", "retry-after-ms", "x-ms-retry-after-ms", "x-should-retry":
			f.Header[k] = v
		default:
			return Fault{}, fmt.Errorf("unknown option %q (want retry-after, retry-after-ms, x-ms-retry-after-ms or x-should-retry)", k)
		}
	}
	return f, nil
}

// pick returns the Fault for request number n (0-based), drawing r in
// [0, 1) for a mix.
func (s Script) pick(n int, r float64) Fault {
	if !s.Mix {
		if n < len(s.Faults) {
			return s.Faults[n]
		}
		return Fault{Kind: OK}
	}
	acc := 0.0
	for _, f := range s.Faults {
		acc += f.Weight
		if r < acc {
			return f
		}
	}
	return Fault{Kind: OK}
}

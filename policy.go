package llmretry

import "time"

// Policy says how many attempts to make and how long to wait between them.
// A zero field means its default (see DefaultPolicy).
type Policy struct {
	// MaxAttempts counts every attempt, the first included.
	MaxAttempts int
	// BaseDelay is the backoff before the first retry; it doubles for each
	// retry after that.
	BaseDelay time.Duration
	// MaxDelay caps the computed backoff. It does not cap a wait the server
	// asked for; MaxRetryAfter does.
	MaxDelay time.Duration
	// MaxRetryAfter is the longest server-requested wait that is honoured.
	// A server that asks for longer ends retrying at once, with no sleep:
	// waiting a day on a 429 is never what the caller wanted.
	MaxRetryAfter time.Duration
}

// Defaults, as the official OpenAI and Anthropic SDKs use for the first
// three, and anthropic-python's ceiling on a server wait.
const (
	defaultMaxAttempts   = 3
	defaultBaseDelay     = 500 * time.Millisecond
	defaultMaxDelay      = 8 * time.Second
	defaultMaxRetryAfter = 60 * time.Second
)

// DefaultPolicy is 3 attempts (the first included), 500 ms base delay, 8 s
// cap on backoff and 60 s longest server-requested wait.
func DefaultPolicy() Policy {
	return Policy{
		MaxAttempts:   defaultMaxAttempts,
		BaseDelay:     defaultBaseDelay,
		MaxDelay:      defaultMaxDelay,
		MaxRetryAfter: defaultMaxRetryAfter,
	}
}

// withDefaults fills zero (and negative) fields with their defaults.
func (p Policy) withDefaults() Policy {
	if p.MaxAttempts <= 0 {
		p.MaxAttempts = defaultMaxAttempts
	}
	if p.BaseDelay <= 0 {
		p.BaseDelay = defaultBaseDelay
	}
	if p.MaxDelay <= 0 {
		p.MaxDelay = defaultMaxDelay
	}
	if p.MaxDelay < p.BaseDelay {
		p.MaxDelay = p.BaseDelay
	}
	if p.MaxRetryAfter <= 0 {
		p.MaxRetryAfter = defaultMaxRetryAfter
	}
	return p
}

// Backoff is the wait before retry number retry (1 for the first retry):
// BaseDelay doubled per retry, capped at MaxDelay, spread by ±25% jitter.
// r must be in [0, 1); it picks the point in the jitter range, so a fixed r
// gives an exact result. The spread is clipped at MaxDelay, so MaxDelay is a
// hard ceiling. It never overflows, whatever retry is.
func (p Policy) Backoff(retry int, r float64) time.Duration {
	p = p.withDefaults()
	d := p.BaseDelay
	for i := 1; i < retry && d < p.MaxDelay; i++ {
		if d > p.MaxDelay/2 {
			d = p.MaxDelay
			break
		}
		d *= 2
	}
	d = min(d, p.MaxDelay)
	lo := d - d/4
	hi := min(d+d/4, p.MaxDelay)
	if r < 0 || r >= 1 || r != r {
		r = 0.5
	}
	return lo + time.Duration(r*float64(hi-lo))
}

// serverWaitSpread is the jitter added on top of a server-requested wait:
// up to a tenth of it, at most one second. A server wait is a floor, so the
// spread only ever lengthens it, while keeping a fleet told "retry after 10"
// from returning in the same instant.
func serverWaitSpread(wait time.Duration, r float64) time.Duration {
	spread := min(wait/10, time.Second)
	if r < 0 || r >= 1 || r != r {
		return 0
	}
	return time.Duration(r * float64(spread))
}

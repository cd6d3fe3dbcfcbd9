package llmretry

import (
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Cooldowns: a 429 whose limit binds beyond one request holds later
// requests for the same key and model until its wait is over, instead of
// letting each discover the 429 on its own. The hold is a MarkCooldown in
// the Transport's HealthStore, so Transports (and, through redisstate, a
// fleet) that share a store share it.
//
// Only a 429 whose wait is within Policy.MaxRetryAfter starts a cooldown,
// and it holds only requests with the same scheme, host, credential and
// model. A 429 is a statement about that key's quota on that model, which
// every replica behind a load balancer enforces alike; but a lone 429 among
// successes (a burst that one request hit) says little about the next
// request. So a cooldown starts at once when the 429 says a rate-limit
// bucket is empty (x-ratelimit-remaining-*: 0, anthropic-ratelimit-*-
// remaining: 0), and otherwise at the second 429 in a row for the same key
// and model, as Envoy ejects a host on consecutive failures. A 503 or 529
// with Retry-After is about the state of the server that sent it (one
// replica, or the provider's whole fleet, which a single caller's pause does
// not relieve): it is retried after its wait, budgeted, but holds no one
// else. Requests a cooldown held are released spread over a tenth of its
// wait, and a request whose deadline comes sooner fails fast.

// errCooldown is the cause when a cooldown outlasts the request's deadline.
var errCooldown = errors.New("upstream cooling down after a server-requested wait")

// hold waits out a cooldown of wait before a request's first attempt,
// spread so that the requests it holds are not released at once. It fails
// at once when the wait would outlast the request's deadline.
func (t *Transport) hold(req *http.Request, wait time.Duration) error {
	wait += cooldownSpread(wait, t.cfg.rand())
	ctx := req.Context()
	v := verdict{cause: "cooldown", reason: ReasonDeadline, wait: wait}
	if passesDeadline(ctx, t.cfg.clock.Now(), wait) {
		return t.giveUp(req, nil, 0, v, errCooldown, nil)
	}
	t.retrying(req, nil, 0, v, nil, wait, SourceCooldown, nil, placement{})
	if err := sleep(ctx, t.cfg.clock, wait); err != nil {
		return t.giveUp(req, nil, 0, verdict{cause: "cooldown", reason: ReasonContextDone}, err, nil)
	}
	return nil
}

// cooldownSpread is how much later than the end of a cooldown a request it
// held is released: up to a tenth of its wait, at least 50 ms and at most
// 1 s of spread, so that the held requests do not all return at once.
func cooldownSpread(wait time.Duration, r float64) time.Duration {
	if r < 0 || r >= 1 || r != r {
		return 0
	}
	return time.Duration(r * float64(min(max(wait/10, 50*time.Millisecond), time.Second)))
}

// maxStreaks bounds how many keys' and models' runs of 429s are remembered.
const maxStreaks = 1024

// limitStreaks counts, per key and model, the 429s in a row since their
// last success.
type limitStreaks struct {
	size atomic.Int32 // entries: a success skips the lookup when there are none
	mu   sync.Mutex
	n    map[Mark]int
}

// hit counts a 429 for up and returns how many in a row it makes.
func (s *limitStreaks) hit(up Mark) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n == nil {
		s.n = make(map[Mark]int)
	}
	if _, ok := s.n[up]; !ok && len(s.n) >= maxStreaks {
		clear(s.n) // forget old runs rather than grow without bound
	}
	s.n[up]++
	s.size.Store(int32(len(s.n)))
	return s.n[up]
}

// clear ends up's run of 429s.
func (s *limitStreaks) clear(up Mark) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.n, up)
	s.size.Store(int32(len(s.n)))
}

// bucketEmpty reports a 429 that says one of its rate-limit buckets has
// nothing left: the limit binds for every request on the key until it
// resets, not only for the one that hit it.
func bucketEmpty(h http.Header) bool {
	for name, vals := range h {
		if len(vals) == 0 || strings.TrimSpace(vals[0]) != "0" {
			continue
		}
		lower := strings.ToLower(name)
		if strings.HasPrefix(lower, "x-ratelimit-remaining-") ||
			strings.HasPrefix(lower, "anthropic-ratelimit-") && strings.HasSuffix(lower, "-remaining") {
			return true
		}
	}
	return false
}

package main

// The retry throttles of other systems, as Budgets, from their published
// rules (shared/reference/storms.md), so that the storm table compares
// llmretry's budget with each on the same traffic. Each sees every attempt's
// outcome through OnAttempt; first attempts are never blocked, as in
// llmretry (the SRE book's throttle would also reject first attempts; here
// it gates retries only).

import (
	"math/rand/v2"
	"sync"
	"time"

	"github.com/llmretry/llmretry"
)

// grpcThrottle is gRPC's retry throttling (gRFC A6): tokens start at
// maxTokens (10); each failed attempt takes one, each success gives back
// tokenRatio (0.1); retries are allowed while tokens > maxTokens/2.
type grpcThrottle struct {
	mu     sync.Mutex
	tokens float64
}

func newGRPCThrottle() *grpcThrottle { return &grpcThrottle{tokens: 10} }

func (g *grpcThrottle) OnRequest() {}

func (g *grpcThrottle) AllowRetry() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.tokens > 5
}

func (g *grpcThrottle) OnAttempt(r llmretry.AttemptResult) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if r.Failed {
		g.tokens = max(g.tokens-1, 0)
	} else {
		g.tokens = min(g.tokens+0.1, 10)
	}
}

// awsQuota is the AWS SDKs' standard-mode retry quota: 500 tokens; a retry
// costs 5; a retry that succeeds gives its 5 back, a first attempt that
// succeeds gives 1; no retry when fewer than 5 are left.
type awsQuota struct {
	mu     sync.Mutex
	tokens int
}

func newAWSQuota() *awsQuota { return &awsQuota{tokens: 500} }

func (a *awsQuota) OnRequest() {}

func (a *awsQuota) AllowRetry() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.tokens < 5 {
		return false
	}
	a.tokens -= 5
	return true
}

func (a *awsQuota) OnAttempt(r llmretry.AttemptResult) {
	if r.Failed {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if r.Retry {
		a.tokens = min(a.tokens+5, 500)
	} else {
		a.tokens = min(a.tokens+1, 500)
	}
}

// stamps keeps event times over a trailing window.
type stamps struct{ ts []time.Time }

func (s *stamps) add(t time.Time) { s.ts = append(s.ts, t) }

func (s *stamps) count(since time.Time) int {
	i := 0
	for i < len(s.ts) && s.ts[i].Before(since) {
		i++
	}
	s.ts = s.ts[i:]
	return len(s.ts)
}

// sreThrottle is the SRE book's client-side adaptive throttling, applied to
// retries: over the last 2 minutes, with requests the attempts sent and
// accepts those that succeeded, a retry is dropped with probability
// max(0, (requests - K*accepts) / (requests + 1)), K = 2.
type sreThrottle struct {
	mu               sync.Mutex
	requests, accept stamps
	rng              *rand.Rand
}

func newSREThrottle() *sreThrottle { return &sreThrottle{rng: rand.New(rand.NewPCG(5, 9))} }

func (s *sreThrottle) OnRequest() {}

func (s *sreThrottle) AllowRetry() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	since := time.Now().Add(-2 * time.Minute)
	req, acc := float64(s.requests.count(since)), float64(s.accept.count(since))
	return s.rng.Float64() >= max(0, (req-2*acc)/(req+1))
}

func (s *sreThrottle) OnAttempt(r llmretry.AttemptResult) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests.add(time.Now())
	if !r.Failed {
		s.accept.add(time.Now())
	}
}

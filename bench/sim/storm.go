package main

// The storm-control simulation: the real Transport, budget and cooldowns,
// run in a testing/synctest bubble (virtual time) against modelled
// upstreams, under open-loop load. It is driven by TestStormTable, which
// prints the table recorded in BENCHMARKS.md and checks the targets.

import (
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llmretry/llmretry"
)

// stormPolicy is one column group: how storm control is set.
type stormPolicy struct {
	name string
	opts func() []llmretry.Option
}

var stormPolicies = []stormPolicy{
	{"no storm control", func() []llmretry.Option {
		return []llmretry.Option{llmretry.WithBudget(nil), llmretry.WithHealthStore(nil)}
	}},
	{"old budget", func() []llmretry.Option {
		return []llmretry.Option{llmretry.WithBudget(&windowBudget{ratio: 0.1, reserve: 10}), llmretry.WithHealthStore(&hostKeyCooldowns{llmretry.NewLocalHealthStore()})}
	}},
	{"gRPC throttle (10, 0.1)", func() []llmretry.Option { return peer(newGRPCThrottle()) }},
	{"AWS standard quota (500/5/+1)", func() []llmretry.Option { return peer(newAWSQuota()) }},
	{"Finagle RetryBudget (20%, 10/s)", func() []llmretry.Option { return peer(&windowBudget{ratio: 0.2, reserve: 100, additive: true}) }},
	{"SRE adaptive throttle (K=2)", func() []llmretry.Option { return peer(newSREThrottle()) }},
	{"new budget", func() []llmretry.Option { return nil }},
}

// peer runs a peer's throttle with the current cooldowns, so that the
// columns differ only in the budget.
func peer(b llmretry.Budget) []llmretry.Option { return []llmretry.Option{llmretry.WithBudget(b)} }

// windowBudget allows a retry while retries over the last 10 s stay within
// max(reserve, ratio x requests), or with additive, reserve + ratio x
// requests, whether they worked or not: llmretry's old budget (0.1, 10) and
// Finagle's RetryBudget (0.2, plus 10 retries a second in reserve).
type windowBudget struct {
	ratio, reserve float64
	additive       bool
	mu             sync.Mutex
	reqs, ret      stamps
}

func (b *windowBudget) OnRequest() {
	b.mu.Lock()
	b.reqs.add(time.Now())
	b.mu.Unlock()
}

func (b *windowBudget) AllowRetry() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	since := time.Now().Add(-10 * time.Second)
	share := b.ratio * float64(b.reqs.count(since))
	limit := max(b.reserve, share)
	if b.additive {
		limit = b.reserve + share
	}
	if float64(b.ret.count(since)+1) > limit {
		return false
	}
	b.ret.add(time.Now())
	return true
}

func (b *windowBudget) OnAttempt(llmretry.AttemptResult) {}

// hostKeyCooldowns scopes cooldowns as they were: by host and key, whatever
// the model. (What started one is the Transport's, and now only a 429 does;
// the old Transport also let a 503's or 529's wait start one.)
type hostKeyCooldowns struct{ *llmretry.LocalHealthStore }

func (c *hostKeyCooldowns) Until(m llmretry.Mark) time.Time {
	m.Model = ""
	return c.LocalHealthStore.Until(m)
}

func (c *hostKeyCooldowns) Put(m llmretry.Mark, until time.Time) {
	m.Model = ""
	c.LocalHealthStore.Put(m, until)
}

// upstream models a provider: given a request's id, model and attempt
// number, it answers after some virtual time.
type upstream interface {
	serve(id int, model string, attempt int) (code int, header http.Header)
}

// draw is a number in [0, 1) fixed by (seed, id, attempt): every policy sees
// the same fault for the same attempt of the same request, so that they
// differ only where storm control acts.
func draw(seed uint64, id, attempt int) float64 {
	x := splitmix(splitmix(splitmix(seed)^uint64(id)) ^ uint64(attempt))
	return float64(x>>11) / (1 << 53)
}

// splitmix is SplitMix64's finaliser: every input bit moves every output
// bit, so draws for neighbouring ids and attempts are independent.
func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}

// faulty fails each attempt independently with probability f, with a 503,
// a 529 or a 500, after latency.
type faulty struct {
	f       float64
	latency time.Duration
}

func (u faulty) serve(id int, _ string, attempt int) (int, http.Header) {
	time.Sleep(u.latency)
	if r := draw(1, id, attempt); r < u.f {
		return [...]int{503, 529, 500}[int(r/u.f*3)%3], nil
	}
	return 200, nil
}

// saturated has slots in service at once, each held for service; an
// attempt that finds them all busy gets a 529 at once.
type saturated struct {
	mu      sync.Mutex
	busy    int
	slots   int
	service time.Duration
}

func (u *saturated) serve(int, string, int) (int, http.Header) {
	time.Sleep(time.Millisecond)
	u.mu.Lock()
	if u.busy >= u.slots {
		u.mu.Unlock()
		return 529, nil
	}
	u.busy++
	u.mu.Unlock()
	time.Sleep(u.service)
	u.mu.Lock()
	u.busy--
	u.mu.Unlock()
	return 200, nil
}

// ratedCapacity serves rate requests a second (a token bucket holding one
// second's worth) and answers an attempt that finds no token 529
// at once: an upstream whose capacity is a rate, where a retry that gets
// through takes a token another request would have had.
type ratedCapacity struct {
	mu      sync.Mutex
	rate    float64
	tokens  float64
	last    time.Time
	service time.Duration
}

func (u *ratedCapacity) serve(int, string, int) (int, http.Header) {
	time.Sleep(time.Millisecond)
	now := time.Now()
	u.mu.Lock()
	if !u.last.IsZero() {
		u.tokens = min(u.rate, u.tokens+now.Sub(u.last).Seconds()*u.rate)
	}
	u.last = now
	if u.tokens < 1 {
		u.mu.Unlock()
		return 529, nil
	}
	u.tokens--
	u.mu.Unlock()
	time.Sleep(u.service)
	return 200, nil
}

// rateLimited lets through rate requests a second per limited model (a
// token bucket with a burst of one second's worth) and answers the rest 429
// with a Retry-After of the whole seconds until a token is there. Models
// not in limited are never limited.
type rateLimited struct {
	mu      sync.Mutex
	rate    float64
	limited map[string]bool
	tokens  map[string]float64
	last    map[string]time.Time
	latency time.Duration
	limits  atomic.Int64 // 429s sent
}

func newRateLimited(rate float64, models ...string) *rateLimited {
	u := &rateLimited{rate: rate, limited: map[string]bool{}, tokens: map[string]float64{}, last: map[string]time.Time{}, latency: 200 * time.Millisecond}
	for _, m := range models {
		u.limited[m] = true
	}
	return u
}

func (u *rateLimited) serve(_ int, model string, _ int) (int, http.Header) {
	time.Sleep(time.Millisecond)
	if !u.limited[model] {
		time.Sleep(u.latency)
		return 200, nil
	}
	now := time.Now()
	u.mu.Lock()
	tok, seen := u.tokens[model], u.last[model]
	if seen.IsZero() {
		tok = u.rate
	} else {
		tok = min(u.rate, tok+now.Sub(seen).Seconds()*u.rate)
	}
	u.last[model] = now
	if tok < 1 {
		u.tokens[model] = tok
		u.mu.Unlock()
		u.limits.Add(1)
		wait := math.Ceil((1 - tok) / u.rate)
		return 429, http.Header{"Retry-After": {strconv.Itoa(int(wait))}}
	}
	u.tokens[model] = tok - 1
	u.mu.Unlock()
	time.Sleep(u.latency)
	return 200, nil
}

// scenario is one row group: an upstream, and the traffic sent to it.
type scenario struct {
	name     string
	requests int
	perSec   float64  // open-loop arrivals, Poisson
	models   []string // requests cycle through these
	report   string   // the model to report on, "" for all
	limited  bool     // count 429s sent while limited
	make     func() upstream
}

// result is one cell.
type result struct {
	success  float64 // share of requests answered 200
	attempts float64 // attempts per request
	p50, p99 time.Duration
	limits   int64 // 429s sent
	ran      bool  // the run took place (the table leaves out the columns that did not)
}

// baseFunc adapts an upstream to an http.RoundTripper.
type baseFunc func(*http.Request) (*http.Response, error)

func (f baseFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// runStorm sends sc's traffic through a Transport set up by p, and returns
// what happened. It must run in a synctest bubble: it sleeps virtual time.
func runStorm(sc scenario, p stormPolicy) result {
	up := sc.make()
	var attempts atomic.Int64
	base := baseFunc(func(r *http.Request) (*http.Response, error) {
		id, _ := strconv.Atoi(r.Header.Get("X-Id"))
		attempt, _ := strconv.Atoi(r.Header.Get("X-Attempt"))
		attempts.Add(1)
		code, h := up.serve(id, r.Header.Get("X-Model"), attempt)
		if h == nil {
			h = http.Header{}
		}
		h.Set("Content-Type", "application/json")
		return &http.Response{StatusCode: code, Header: h, Body: io.NopCloser(strings.NewReader("{}")), Request: r}, nil
	})
	var rmu sync.Mutex
	rng := rand.New(rand.NewPCG(7, 11))
	jitter := func() float64 {
		rmu.Lock()
		defer rmu.Unlock()
		return rng.Float64()
	}
	opts := append([]llmretry.Option{llmretry.WithRand(jitter), llmretry.WithAttemptHeader("X-Attempt")}, p.opts()...)
	tr := llmretry.NewTransport(base, opts...)

	type outcome struct {
		model string
		ok    bool
		took  time.Duration
	}
	out := make([]outcome, sc.requests)
	arrivals := rand.New(rand.NewPCG(3, 5))
	var wg sync.WaitGroup
	for i := range sc.requests {
		model := sc.models[i%len(sc.models)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := `{"model":"` + model + `","messages":[{"role":"user","content":"hi"}]}`
			req, _ := http.NewRequest(http.MethodPost, "https://api.test/v1/chat/completions", strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer key-1")
			req.Header.Set("X-Id", strconv.Itoa(i))
			req.Header.Set("X-Model", model)
			start := time.Now()
			resp, err := tr.RoundTrip(req)
			ok := err == nil && resp.StatusCode == 200
			if resp != nil {
				resp.Body.Close()
			}
			out[i] = outcome{model, ok, time.Since(start)}
		}()
		time.Sleep(time.Duration(arrivals.ExpFloat64() / sc.perSec * float64(time.Second)))
	}
	wg.Wait()

	var r result
	var took []time.Duration
	n := 0
	for _, o := range out {
		if sc.report != "" && o.model != sc.report {
			continue
		}
		n++
		if o.ok {
			r.success++
		}
		took = append(took, o.took)
	}
	r.success /= float64(n)
	r.attempts = float64(attempts.Load()) / float64(sc.requests)
	slices.Sort(took)
	r.p50, r.p99 = took[len(took)/2], took[len(took)*99/100]
	if rl, ok := up.(*rateLimited); ok {
		r.limits = rl.limits.Load()
	}
	r.ran = true
	return r
}

// stormScenarios are the rows: independent fault rates, a full outage, an
// upstream offered 1.5 times its capacity, a sustained per-key rate limit
// with Retry-After, and a per-model limit beside a healthy model.
func stormScenarios(scale int) []scenario {
	var ss []scenario
	for _, f := range []float64{0.05, 0.10, 0.30, 0.50} {
		ss = append(ss, scenario{
			name: fmt.Sprintf("independent faults %.0f%%", f*100), requests: 4000 * scale, perSec: 50,
			models: []string{"gpt-4o"}, make: func() upstream { return faulty{f: f, latency: 200 * time.Millisecond} },
		})
	}
	ss = append(ss,
		scenario{
			name: "full outage", requests: 4000 * scale, perSec: 50, models: []string{"gpt-4o"},
			make: func() upstream { return faulty{f: 1, latency: 20 * time.Millisecond} },
		},
		scenario{
			// Capacity C = 20 requests a second, offered 30.
			name: "overload at 1.5 C (C a rate)", requests: 4000 * scale, perSec: 30, models: []string{"gpt-4o"},
			make: func() upstream { return &ratedCapacity{rate: 20, service: time.Second} },
		},
		scenario{
			// Capacity C = 20 slots / 1 s = 20 requests a second, offered 30.
			name: "overload at 1.5 C (C in slots)", requests: 4000 * scale, perSec: 30, models: []string{"gpt-4o"},
			make: func() upstream { return &saturated{slots: 20, service: time.Second} },
		},
		scenario{
			name: "per-key rate limit (10/s, offered 15/s)", requests: 2000 * scale, perSec: 15, models: []string{"gpt-4o"},
			limited: true, make: func() upstream { return newRateLimited(10, "gpt-4o") },
		},
		scenario{
			name: "per-model limit: the healthy model", requests: 3000 * scale, perSec: 30, models: []string{"gpt-4o", "gpt-4o-mini"},
			report: "gpt-4o-mini", limited: true, make: func() upstream { return newRateLimited(10, "gpt-4o") },
		},
		scenario{
			name: "per-model limit: the limited model", requests: 3000 * scale, perSec: 30, models: []string{"gpt-4o", "gpt-4o-mini"},
			report: "gpt-4o", limited: true, make: func() upstream { return newRateLimited(10, "gpt-4o") },
		},
	)
	return ss
}

// stormTable renders results[row][policy] as a Markdown table.
func stormTable(ss []scenario, results [][]result) string {
	var b strings.Builder
	b.WriteString("| scenario | storm control | success | attempts/request | p50 | p99 | 429s sent |\n| --- | --- | --- | --- | --- | --- | --- |\n")
	for i, sc := range ss {
		for j, p := range stormPolicies {
			r := results[i][j]
			if !r.ran {
				continue
			}
			limits := "-"
			if sc.limited {
				limits = strconv.FormatInt(r.limits, 10)
			}
			fmt.Fprintf(&b, "| %s | %s | %.2f%% | %.3f | %v | %v | %s |\n", sc.name, p.name, r.success*100, r.attempts,
				r.p50.Round(time.Millisecond), r.p99.Round(time.Millisecond), limits)
		}
	}
	return b.String()
}

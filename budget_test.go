package llmretry

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestRatioBudget(t *testing.T) {
	clk := newFakeClock()
	b := NewRatioBudget(BudgetConfig{Clock: clk})
	// A quiet client still has its reserve.
	for i := range 10 {
		if !b.AllowRetry() {
			t.Fatalf("reserve retry %d refused", i+1)
		}
	}
	if b.AllowRetry() {
		t.Fatal("11th retry with no requests allowed")
	}
	// 200 requests allow 10% = 20 retries in the window, of which 10 are spent.
	for range 200 {
		b.OnRequest()
	}
	for i := range 10 {
		if !b.AllowRetry() {
			t.Fatalf("retry %d of 20 refused", 11+i)
		}
	}
	if b.AllowRetry() {
		t.Fatal("21st retry allowed for 200 requests")
	}
	// The window moves on: old counts fall out.
	clk.Advance(11 * time.Second)
	if !b.AllowRetry() {
		t.Fatal("no reserve after the window passed")
	}
}

func TestRetryAllowed(t *testing.T) {
	cases := []struct {
		c    BudgetCounts
		want bool
	}{
		{BudgetCounts{}, true}, {BudgetCounts{Retries: 9}, true}, {BudgetCounts{Retries: 10}, false},
		{BudgetCounts{Requests: 1000, Retries: 99}, true}, {BudgetCounts{Requests: 1000, Retries: 100}, false},
		{BudgetCounts{Requests: 1_000_000, Retries: 99_999}, true}, {BudgetCounts{Requests: 1_000_000, Retries: 100_000}, false},
		// A retry that worked is not spent, and pays for one that failed.
		{BudgetCounts{Requests: 1000, Retries: 699, RetriesOK: 300}, true},
		{BudgetCounts{Requests: 1000, Retries: 700, RetriesOK: 300}, false},
		// Load-driven failures: successes no longer pay.
		{BudgetCounts{Requests: 1000, Retries: 700, RetriesOK: 300, LowSent: 500, HighSent: 500, HighFailed: 400}, false},
		{BudgetCounts{Requests: 1000, Retries: 99, RetriesOK: 50, LowSent: 500, HighSent: 500, HighFailed: 400}, true},
	}
	for _, tc := range cases {
		if got := RetryAllowed(BudgetBooks{Own: tc.c}, 0.1, 10); got != tc.want {
			t.Errorf("RetryAllowed(%+v) = %v", tc.c, got)
		}
	}
}

// A retry cancelled during its wait was never sent, yet it stayed under
// way, at its expected cost, for its whole window: in an outage each one
// cost a whole retry of the budget.
func TestAbandonedRetryIsNoLongerUnderWay(t *testing.T) {
	clk := newFakeClock()
	b := NewRatioBudget(BudgetConfig{Clock: clk})
	for i := range 10 {
		if !b.AllowRetry() {
			t.Fatalf("reserve retry %d refused", i+1)
		}
		b.OnAttempt(AttemptResult{Retry: true, Abandoned: true, Failed: true, Load: 3})
	}
	c := b.Counts()
	if c.Retries != 10 || c.RetriesAbandoned != 10 || c.RetriesOK != 0 || c.RetriesFailed != 0 {
		t.Fatalf("counts %+v, want 10 retries, all abandoned", c)
	}
	if c.LowSent+c.HighSent != 0 {
		t.Fatalf("counts %+v: a retry never sent counted as a sample of the load", c)
	}
	for i := range 10 {
		if !b.AllowRetry() {
			t.Fatalf("retry %d refused: the abandoned ones still count as under way", i+1)
		}
	}
	if b.AllowRetry() {
		t.Fatal("a retry beyond the reserve of 10 allowed")
	}
}

// The rule's fleet case, which redisstate decides on: each process takes
// its share of the fleet's headroom at the last sync, plus what its own
// counts since add; the limit's reserve is a floor, so requests since the
// sync earn only what they raise it by.
func TestRetryAllowedFleetShare(t *testing.T) {
	// grants is how many retries, each under way, the books allow.
	grants := func(b BudgetBooks, ratio float64) int {
		n := 0
		for n < 10000 && RetryAllowed(b, ratio, 10) {
			b.Own.Retries++
			n++
		}
		return n
	}
	cases := []struct {
		name string
		b    BudgetBooks
		want int
	}{
		{"no fleet: the local budget", BudgetBooks{Own: BudgetCounts{Requests: 200}}, 20},
		{"one process: as local", BudgetBooks{Fleet: BudgetCounts{Requests: 150}, Procs: 1, Own: BudgetCounts{Requests: 50}}, 20},
		{"two processes: half each", BudgetBooks{Fleet: BudgetCounts{Requests: 200}, Procs: 2}, 10},
		{"requests since, within the reserve", BudgetBooks{Fleet: BudgetCounts{Requests: 50}, Procs: 1, Own: BudgetCounts{Requests: 50}}, 10},
		{"requests since, past the reserve", BudgetBooks{Fleet: BudgetCounts{Requests: 50}, Procs: 2, Own: BudgetCounts{Requests: 150}}, 15},
		{"retries spent since", BudgetBooks{Fleet: BudgetCounts{Requests: 200}, Procs: 2, Own: BudgetCounts{Retries: 4, RetriesFailed: 4}}, 6},
		{"retries under way at the sync that worked since pay back", BudgetBooks{Fleet: BudgetCounts{Requests: 200, Retries: 2}, Procs: 1, Own: BudgetCounts{RetriesOK: 2}}, 22},
		{"a deficit is not shared out", BudgetBooks{Fleet: BudgetCounts{Requests: 200, Retries: 40, RetriesFailed: 40}, Procs: 4, Own: BudgetCounts{Requests: 250}}, 5},
	}
	for _, tc := range cases {
		if got := grants(tc.b, 0.1); got != tc.want {
			t.Errorf("%s: %d retries granted, want %d", tc.name, got, tc.want)
		}
	}

	// However the fleet's requests fall, its processes together never
	// grant more than one budget holding all their counts would. (A ratio
	// of 1/8 and failure rates of 1 and 3/4 keep the sums exact.)
	rng := rand.New(rand.NewPCG(3, 4))
	for range 2000 {
		procs := 1 + rng.IntN(6)
		var fleet BudgetCounts
		fleet.Requests = int64(rng.IntN(400))
		fleet.Retries = int64(rng.IntN(80))
		fleet.RetriesFailed = int64(rng.IntN(int(fleet.Retries) + 1))
		if rng.IntN(2) == 0 { // attempts failing at 3/4: a retry under way costs a half
			fleet.LowSent, fleet.LowFailed = 400, 300
		}
		all := fleet
		sum := 0
		for range procs {
			own := BudgetCounts{Requests: int64(rng.IntN(200))}
			n := grants(BudgetBooks{Fleet: fleet, Procs: procs, Own: own}, 0.125)
			sum += n
			own.Retries = int64(n)
			all.add(own)
		}
		all.Retries -= int64(sum) // one budget's own grants, counted afresh
		if one := grants(BudgetBooks{Own: all}, 0.125); sum > one {
			t.Fatalf("fleet %+v, %d processes: they granted %d retries, one budget grants %d", fleet, procs, sum, one)
		}
	}
}

func TestLoadDriven(t *testing.T) {
	cases := []struct {
		c    BudgetCounts
		want bool
	}{
		{BudgetCounts{LowSent: 500, LowFailed: 50, HighSent: 500, HighFailed: 450}, true},
		{BudgetCounts{LowSent: 500, LowFailed: 250, HighSent: 500, HighFailed: 260}, false}, // independent 50%
		{BudgetCounts{LowSent: 500, LowFailed: 500, HighSent: 500, HighFailed: 500}, false}, // full outage
		{BudgetCounts{LowSent: 19, LowFailed: 0, HighSent: 500, HighFailed: 500}, false},    // too few on one side
		{BudgetCounts{LowSent: 25, LowFailed: 10, HighSent: 25, HighFailed: 16}, false},     // a gap chance makes
		{BudgetCounts{LowSent: 40, LowFailed: 0, HighSent: 40, HighFailed: 40}, true},
	}
	for _, tc := range cases {
		if got := tc.c.LoadDriven(); got != tc.want {
			t.Errorf("LoadDriven(%+v) = %v", tc.c, got)
		}
	}
}

// The old budget allowed retries up to 10% of requests whether they worked
// or not, so at a 30-50% failure rate it refused retries that would have
// succeeded: in the gateway comparison it refused 64 of them. Retries that
// work now pay for themselves: at 50% independent failures, with 3
// attempts, not one retry is refused.
func TestSuccessfulRetriesAreNotRefused(t *testing.T) {
	clk := newFakeClock()
	b := NewRatioBudget(BudgetConfig{Clock: clk})
	refused := 0
	fail := func(i, attempt int) bool { return (i>>attempt)&1 == 0 } // each attempt fails half the time
	for i := range 4000 {
		clk.Advance(10 * time.Millisecond) // 100 requests a second
		b.OnRequest()
		for attempt := 0; attempt < 3; attempt++ {
			if attempt > 0 && !b.AllowRetry() {
				refused++
				break
			}
			failed := fail(i, attempt)
			b.OnAttempt(AttemptResult{Retry: attempt > 0, Failed: failed, Load: 1 + i%3})
			if !failed {
				break
			}
		}
	}
	if refused != 0 {
		t.Fatalf("%d retries refused at 50%% independent failures", refused)
	}
}

// A full outage, where no retry works, still costs at most a tenth more
// attempts than requests (and the reserve).
func TestFullOutageCostsATenth(t *testing.T) {
	clk := newFakeClock()
	b := NewRatioBudget(BudgetConfig{Clock: clk})
	attempts := 0
	for i := range 5000 {
		clk.Advance(2 * time.Millisecond) // 500 requests a second: 5000 a window
		b.OnRequest()
		for attempt := 0; attempt < 3; attempt++ {
			if attempt > 0 && !b.AllowRetry() {
				break
			}
			attempts++
			b.OnAttempt(AttemptResult{Retry: attempt > 0, Failed: true, Load: 1 + i%5})
		}
	}
	if got := float64(attempts) / 5000; got > 1.10+10.0/5000 {
		t.Fatalf("%.3f attempts per request in a full outage", got)
	}
}

// An upstream at its capacity: attempts sent at high load fail, at low load
// succeed, and retries succeed as often as first attempts (half the time).
// At 50% independent failures every retry would be sent (1.75 attempts per
// request); here the load signal makes the failed retries alone count, held
// to a tenth of requests.
func TestLoadDrivenFailuresHoldFailedRetriesToATenth(t *testing.T) {
	clk := newFakeClock()
	b := NewRatioBudget(BudgetConfig{Clock: clk})
	attempts := 0
	rng := rand.New(rand.NewPCG(1, 2))
	for range 5000 {
		clk.Advance(2 * time.Millisecond)
		b.OnRequest()
		for attempt := 0; attempt < 3; attempt++ {
			if attempt > 0 && !b.AllowRetry() {
				break
			}
			attempts++
			load := 4 + rng.IntN(2)*4 // 4 or 8 in flight
			failed := load == 8
			b.OnAttempt(AttemptResult{Retry: attempt > 0, Failed: failed, Load: load})
			if !failed {
				break
			}
		}
	}
	if !b.Counts().LoadDriven() {
		t.Fatal("failures that rise with load not seen as load-driven")
	}
	if got := float64(attempts) / 5000; got > 1.25 {
		t.Fatalf("%.3f attempts per request with load-driven failures, want at most 1.25", got)
	}
}

// A Window under 10 ns used to divide by zero in the first AllowRetry.
func TestTinyBudgetWindowDoesNotPanic(t *testing.T) {
	for _, w := range []time.Duration{1, 5, 9, 10} {
		b := NewRatioBudget(BudgetConfig{Window: w})
		b.OnRequest()
		b.AllowRetry()
		b.OnAttempt(AttemptResult{Retry: true})
		_ = b.Counts()
	}
}

func TestBudgetSpentReturnsLastResponse(t *testing.T) {
	srv := newScripted(t, status(503, "down"))
	clk := newFakeClock()
	var stops []StopEvent
	b := NewRatioBudget(BudgetConfig{Reserve: 1, Clock: clk})
	_, c := testTransport(t, clk, WithBudget(b), WithOnStop(func(e StopEvent) { stops = append(stops, e) }))
	for i := range 3 {
		resp, err := c.Do(post(t, srv.URL, "x"))
		if err != nil {
			t.Fatal(err)
		}
		if readAll(t, resp) != "down" {
			t.Fatalf("request %d: body not intact", i)
		}
	}
	// One retry from the reserve, then first attempts only: 2 + 1 + 1.
	if srv.Hits() != 4 {
		t.Fatalf("hits %d, want 4", srv.Hits())
	}
	if len(stops) != 3 || stops[0].Reason != ReasonBudget || stops[0].Attempts != 2 || stops[1].Reason != ReasonBudget || stops[2].Reason != ReasonBudget {
		t.Fatalf("stops %+v", stops)
	}
}

func TestBudgetSharedBetweenTransports(t *testing.T) {
	srv := newScripted(t, reset)
	clk := newFakeClock()
	b := NewRatioBudget(BudgetConfig{Reserve: 2, Clock: clk})
	_, c1 := testTransport(t, clk, WithBudget(b))
	_, c2 := testTransport(t, clk, WithBudget(b))
	_, err := c1.Do(post(t, srv.URL, "x")) // spends both reserve retries
	var e *Error
	if !errors.As(err, &e) || e.Reason != ReasonExhausted || e.Attempts != 3 {
		t.Fatalf("first: %v", err)
	}
	_, err = c2.Do(post(t, srv.URL, "x"))
	if !errors.As(err, &e) || e.Reason != ReasonBudget || e.Attempts != 1 {
		t.Fatalf("second: %v", err)
	}
}

func TestCooldown(t *testing.T) {
	srv := newScripted(t, status(429, "", "Retry-After", "5", "X-Ratelimit-Remaining-Requests", "0"), status(200, "ok"))
	clk := newFakeClock()
	var events []RetryEvent
	_, c := testTransport(t, clk, WithPolicy(Policy{MaxAttempts: 1}), WithOnRetry(func(e RetryEvent) { events = append(events, e) }))
	send := func(key string, deadline time.Duration) (*http.Response, error) {
		req := post(t, srv.URL, "x")
		req.Header.Set("Authorization", "Bearer "+key)
		if deadline > 0 {
			req = req.WithContext(deadlineCtx{req.Context(), clk.Now().Add(deadline)})
		}
		return c.Do(req)
	}
	resp, err := send("k1", 0)
	if err != nil || resp.StatusCode != 429 {
		t.Fatalf("first: %v", err)
	}
	readAll(t, resp)

	// The same upstream and key, with a deadline too short: fails fast.
	_, err = send("k1", time.Second)
	var e *Error
	if !errors.As(err, &e) || e.Reason != ReasonDeadline || e.Attempts != 0 || !errors.Is(err, errCooldown) || srv.Hits() != 1 {
		t.Fatalf("short deadline: %v, hits %d", err, srv.Hits())
	}
	// Another key on the same host is another upstream: no wait.
	resp, err = send("k2", 0)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	if len(clk.Waits()) != 0 {
		t.Fatalf("waits %v", clk.Waits())
	}
	// The same key waits out the rest before its first attempt.
	resp, err = send("k1", 0)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	// 5 s, and the release spread (half of a tenth, at the fixed jitter).
	if w := clk.Waits(); len(w) != 1 || w[0] != 5250*time.Millisecond {
		t.Fatalf("waits %v, want [5.25s]", w)
	}
	if len(events) != 1 || events[0].Attempt != 0 || events[0].Source != SourceCooldown {
		t.Fatalf("events %+v", events)
	}
}

func TestCooldownMarkNeverHoldsTheCredential(t *testing.T) {
	req, _ := http.NewRequest("POST", "https://api.example.com/v1beta/models?key=AIza-SECRET", nil)
	req.Header.Set("X-Api-Key", "sk-ant-SECRET")
	m := cooldownMarkOf(req)
	if s := fmt.Sprintf("%+v", m); strings.Contains(s, "SECRET") || m.Key == "" || m.Host != "api.example.com" {
		t.Fatalf("mark %s", s)
	}
	req2, _ := http.NewRequest("POST", "https://api.example.com/other?key=AIza-SECRET", nil)
	req2.Header.Set("X-Api-Key", "sk-ant-SECRET")
	if cooldownMarkOf(req2) != m {
		t.Fatal("same credential, different mark")
	}
	req2.Header.Set("X-Api-Key", "sk-ant-OTHER")
	if cooldownMarkOf(req2) == m {
		t.Fatal("different credential, same mark")
	}
	// The key in any spelling of its parameter is the same credential.
	req3, _ := http.NewRequest("POST", "https://api.example.com/other?%6Bey=AIza-SECRET", nil)
	req3.Header.Set("X-Api-Key", "sk-ant-SECRET")
	if cooldownMarkOf(req3) != m {
		t.Fatal("?%6Bey= is not ?key=")
	}
}

// cooldownMarkOf is the cooldown mark a plain Transport keeps for req.
func cooldownMarkOf(req *http.Request) Mark {
	j := journey{rt: ownRoute(nil), req: req}
	return j.mark(MarkCooldown, j.rt.targets[0], j.rt.targets[0].keys[0])
}

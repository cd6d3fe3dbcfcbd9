package redisstate

import (
	"bytes"
	"context"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmretry/llmretry"
)

// fakeNow makes s read a time the test moves.
func fakeNow(s *State) func(time.Duration) {
	var mu sync.Mutex
	now := time.Now()
	s.now = func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	return func(d time.Duration) {
		mu.Lock()
		now = now.Add(d)
		mu.Unlock()
	}
}

// Retries granted from the fleet's share were not counted in the local
// budget, so a process whose syncs fell behind got a whole fresh local
// budget on top of what it had spent.
func TestFleetGrantedRetriesCountInTheLocalFallback(t *testing.T) {
	s := newState(t, "books", func(c *Config) {
		c.Budget.Reserve = 1
		c.Stale = time.Second // the syncs fall behind within the window
	})
	advance := fakeNow(s)
	for range 200 {
		s.OnRequest()
	}
	syncAll(t, s)
	granted := 0
	for s.AllowRetry() {
		granted++
	}
	if granted != 20 {
		t.Fatalf("granted %d from the fleet's share, want 20", granted)
	}
	advance(s.cfg.Stale + time.Millisecond) // the syncs fall behind
	if s.AllowRetry() {
		t.Fatal("the local fallback granted a retry beyond the 20 already spent")
	}
}

// Counts that piled up while Redis was unreachable were all published into
// the current slice; they land in the slices they were made in now.
func TestOutageCountsLandInTheirSlices(t *testing.T) {
	s := newState(t, "slices")
	advance := fakeNow(s)
	first := s.slice(s.now())
	for range 3 {
		s.OnRequest()
	}
	advance(s.cfg.Budget.Window / budgetBuckets) // the next slice
	for range 5 {
		s.OnRequest()
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Sync(cancelled); err == nil {
		t.Fatal("a sync with a cancelled context succeeded")
	}
	syncAll(t, s)
	tag := "{" + s.cfg.Prefix + ":" + s.cfg.Name + "}"
	for sl, want := range map[int64]string{first: "3", first + 1: "5"} {
		got, err := s.cfg.Client.HGet(context.Background(), tag+":budget:"+strconv.FormatInt(sl, 10), "req").Result()
		if err != nil || got != want {
			t.Errorf("slice %d: requests %q (%v), want %s", sl-first, got, err, want)
		}
	}
}

// Overlapping Sync calls on one State each published the same pending
// counts.
func TestOverlappingSyncsPublishOnce(t *testing.T) {
	s := newState(t, "overlap")
	for range 100 {
		s.OnRequest()
	}
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = s.Sync(context.Background())
		}()
	}
	wg.Wait()
	syncAll(t, s)
	if c := s.Counts(); c.Requests != 100 {
		t.Fatalf("fleet requests %d, want 100", c.Requests)
	}
}

// A Window too short to count in Redis (under 10 ns it divided by zero) is
// refused at construction, with an error that says why.
func TestTinyWindowRefused(t *testing.T) {
	for _, w := range []time.Duration{1, 9, 10, time.Microsecond, 9 * time.Millisecond} {
		_, err := New(Config{Client: newClient(t, redisAddr), Budget: llmretry.BudgetConfig{Window: w}})
		if err == nil || !strings.Contains(err.Error(), "Window") {
			t.Errorf("window %v: %v", w, err)
		}
	}
	if _, err := New(Config{Client: newClient(t, redisAddr), Budget: llmretry.BudgetConfig{Window: 10 * time.Millisecond}}); err != nil {
		t.Errorf("10ms refused: %v", err)
	}
}

// panickyClient is a Redis client on which every call panics.
type panickyClient struct{ redis.UniversalClient }

// Whatever goes wrong inside a sync, the background goroutine does not
// panic: it logs, and the process goes on with local state.
func TestBackgroundSyncNeverPanics(t *testing.T) {
	var logs bytes.Buffer
	s, err := New(Config{Client: panickyClient{}, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	s.syncOnce(context.Background()) // a panic here fails the test
	if !strings.Contains(logs.String(), "sync panicked") {
		t.Fatalf("logs: %s", logs.String())
	}
	if !s.AllowRetry() {
		t.Fatal("no retry from the local budget after a failed sync")
	}
}

// lockedBuffer is a log destination that a sync's goroutine may write to
// while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// redisCounts sums a field over the budget window's slices as Redis holds
// them, to check what was published, not what a State believes.
func redisCounts(t *testing.T, s *State, field string) int64 {
	t.Helper()
	tag := "{" + s.cfg.Prefix + ":" + s.cfg.Name + "}"
	cur := s.slice(s.now())
	var sum int64
	for i := int64(0); i < budgetBuckets; i++ {
		v, err := s.cfg.Client.HGet(context.Background(), tag+":budget:"+strconv.FormatInt(cur-i, 10), field).Int64()
		if err != nil && err != redis.Nil {
			t.Fatal(err)
		}
		sum += v
	}
	return sum
}

// Retries granted while a sync was in flight were counted nowhere: Sync
// took the pending counts out before its script ran, and until the reply
// came they were neither pending nor in the fleet's totals. A process
// spent 40 retries on a budget of 20.
func TestRetriesGrantedDuringAnInFlightSyncAreCounted(t *testing.T) {
	g := newGate(t)
	s := newState(t, "inflight", func(c *Config) {
		c.Client = newClient(t, g.addr())
		c.Timeout = time.Minute // this sync waits for the reply the test holds
	})
	for range 200 {
		s.OnRequest()
	}
	syncAll(t, s)
	granted := 0
	for s.AllowRetry() {
		granted++
	}
	g.hold()
	done := make(chan error, 1)
	go func() { done <- s.Sync(context.Background()) }()
	<-g.sent // the script is in Redis; its reply is held
	for s.AllowRetry() {
		granted++
	}
	g.release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for s.AllowRetry() {
		granted++
	}
	if granted != 20 {
		t.Fatalf("granted %d retries on a budget of 20", granted)
	}
	syncAll(t, s)
	if got := redisCounts(t, s, "ret"); got != 20 {
		t.Fatalf("Redis counted %d retries, want 20", got)
	}
}

// A sync whose script ran in Redis but whose reply was lost was put back
// and published again by the next sync: Redis counted 14 requests for 7.
func TestALostSyncReplyIsNotPublishedTwice(t *testing.T) {
	g := newGate(t)
	s := newState(t, "lost", func(c *Config) { c.Client = newClient(t, g.addr()) })
	syncAll(t, s) // loads the script: the reply lost below is the script's own
	for range 7 {
		s.OnRequest()
	}
	g.drop()
	if err := s.Sync(context.Background()); err == nil {
		t.Fatal("a sync whose reply was lost succeeded")
	}
	syncAll(t, s)
	if got := redisCounts(t, s, "req"); got != 7 {
		t.Fatalf("Redis counted %d requests for 7", got)
	}
	if c := s.Counts(); c.Requests != 7 {
		t.Fatalf("the State counts %d requests for 7", c.Requests)
	}
}

// Config.Timeout bounded a sync only when the go-redis client was built
// with ContextTimeoutEnabled: a 100 ms bound took 550 ms, and with a client
// that has no read timeout, as long as Redis took. Now a caller waits at
// most Timeout, syncs do not pile up behind a slow one, and its late reply
// is counted once.
func TestTimeoutBoundsASyncWhateverTheClientsOptions(t *testing.T) {
	g := newGate(t)
	// The go-redis defaults, but no read timeout at all: nothing in the
	// client bounds the wait.
	rc := redis.NewClient(&redis.Options{Addr: g.addr(), MaxRetries: -1, ReadTimeout: -1})
	t.Cleanup(func() { _ = rc.Close() })
	s := newState(t, "timeout", func(c *Config) {
		c.Client = rc
		c.Timeout = 100 * time.Millisecond
	})
	syncAll(t, s)
	for range 7 {
		s.OnRequest()
	}
	g.hold()
	before := g.scripts.Load()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- s.Sync(context.Background()) }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a sync whose reply is held succeeded")
		}
	case <-time.After(10 * time.Second):
		g.release()
		<-done
		t.Fatal("a sync bounded to 100 ms still waited after 10 s")
	}
	elapsed := time.Since(start)
	t.Logf("a sync bounded to 100 ms returned after %v", elapsed)
	if elapsed > time.Second {
		t.Errorf("a sync bounded to 100 ms took %v", elapsed)
	}
	for range 3 { // the background loop goes on ticking
		if err := s.Sync(context.Background()); err == nil {
			t.Fatal("a sync succeeded while the one in flight is held")
		}
	}
	if n := g.scripts.Load() - before; n != 1 {
		t.Fatalf("%d scripts sent while one was in flight, want 1", n)
	}
	g.release()
	s.awaitFlight() // the late reply lands, and is applied
	if got, c := redisCounts(t, s, "req"), s.Counts(); got != 7 || c.Requests != 7 {
		t.Fatalf("after the late reply: Redis counted %d requests, the State %d, for 7", got, c.Requests)
	}
	syncAll(t, s) // the batch is acknowledged: not sent again
	if got := redisCounts(t, s, "req"); got != 7 {
		t.Fatalf("Redis counted %d requests for 7", got)
	}
	if c := s.Counts(); c.Requests != 7 {
		t.Fatalf("the State counts %d requests for 7", c.Requests)
	}
}

// One non-numeric field in a shared hash, written by anyone, made every
// process's sync fail until someone deleted it. Junk is skipped, and said
// once.
func TestJunkInTheSharedHashesNeverFailsTheSync(t *testing.T) {
	var logs lockedBuffer
	s := newState(t, "junk", func(c *Config) { c.Logger = slog.New(slog.NewTextHandler(&logs, nil)) })
	syncAll(t, s)
	ctx := context.Background()
	rc := s.cfg.Client
	tag := "{" + s.cfg.Prefix + ":" + s.cfg.Name + "}"
	slice := tag + ":budget:" + strconv.FormatInt(s.slice(s.now()), 10)
	older := tag + ":budget:" + strconv.FormatInt(s.slice(s.now())-1, 10)
	for key, fv := range map[string][]any{
		slice:              {"req", "lots", "colour", "blue"},
		older:              {"ret", "1e3", "ok", "-4", "req", "99999999999999999999999"},
		tag + ":procs":     {"intruder", "yesterday"},
		tag + ":health:v2": {"not a mark", strconv.FormatInt(s.now().Add(time.Hour).UnixMilli(), 10), `quota "https" "h" "" "k" ""`, "soon"},
		tag + ":cooldowns": {"https://h#k#m", "never"}, // the old version's hash
	} {
		if err := rc.HSet(ctx, key, fv...).Err(); err != nil {
			t.Fatal(err)
		}
		rc.PExpire(ctx, key, time.Minute)
	}
	for range 7 {
		s.OnRequest()
	}
	for range 3 {
		syncAll(t, s)
	}
	if c := s.Counts(); c.Requests != 7 {
		t.Fatalf("fleet requests %d, want 7", c.Requests)
	}
	const skipped = "skipping what this version did not write"
	if n := strings.Count(logs.String(), skipped); n != 8 {
		t.Errorf("%d notes of junk, want one for each of 8:\n%s", n, logs.String())
	}
	for _, v := range []string{"value=lots\n", "value=blue\n", "value=1e3\n", "value=-4\n", "value=99999999999999999999999\n",
		"value=yesterday\n", `field="not a mark"`, "value=soon\n"} {
		if !strings.Contains(logs.String(), v) {
			t.Errorf("no note of %q:\n%s", v, logs.String())
		}
	}
}

// grantAll spends every retry b allows (at most 1000), and says how many.
func grantAll(b llmretry.Budget) int {
	n := 0
	for n < 1000 && b.AllowRetry() {
		n++
	}
	return n
}

// The fleet's books had a formula of their own: a retry under way cost a
// whole retry there, and a tenth of one in a local budget at 50% failures;
// and a process's own requests earned a tenth of themselves on top of the
// fleet's reserve, where a local budget's limit is the larger of the two,
// not their sum. One process, whose fleet is itself, now grants what a
// local budget given the same counts grants.
func TestLocalAndFleetBooksUseOneFormula(t *testing.T) {
	for _, tc := range []struct {
		name          string
		before, after int // requests before and after the sync
		failEvery     int // first attempts: one in failEvery fails (0: none sent)
	}{
		{"retries under way at 50% failures", 200, 0, 2},
		{"retries under way in an outage", 200, 0, 1},
		{"requests since the sync, within the reserve", 50, 50, 0},
		{"requests since the sync, past the reserve", 150, 150, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newState(t, "formula")
			b := llmretry.NewRatioBudget(llmretry.BudgetConfig{})
			request := func(i int) {
				for _, x := range []llmretry.Budget{s, b} {
					x.OnRequest()
					if tc.failEvery > 0 {
						x.OnAttempt(llmretry.AttemptResult{Failed: i%tc.failEvery == 0, Load: 1})
					}
				}
			}
			for i := range tc.before {
				request(i)
			}
			syncAll(t, s)
			for i := range tc.after {
				request(i)
			}
			local, fleet := grantAll(b), grantAll(s)
			if local != fleet {
				t.Fatalf("a local budget grants %d retries, the fleet's books %d", local, fleet)
			}
		})
	}
}

// A takeover in either direction keeps the counts. When the syncs fall
// behind, the local budget goes on from what the fleet's books granted;
// when Redis is back, the fleet's books go on from what the local budget
// granted meanwhile. Either way the process grants, in all, what one
// budget would have.
func TestTakeoverKeepsTheCounts(t *testing.T) {
	feed := func(s *State) {
		for i := range 200 {
			s.OnRequest()
			s.OnAttempt(llmretry.AttemptResult{Failed: i%2 == 0, Load: 1})
		}
	}
	one := llmretry.NewRatioBudget(llmretry.BudgetConfig{})
	for i := range 200 {
		one.OnRequest()
		one.OnAttempt(llmretry.AttemptResult{Failed: i%2 == 0, Load: 1})
	}
	want := grantAll(one)

	t.Run("fleet to local", func(t *testing.T) {
		s := newState(t, "to-local", func(c *Config) { c.Stale = time.Second })
		advance := fakeNow(s)
		feed(s)
		syncAll(t, s)
		granted := 0
		for granted < want/2 && s.AllowRetry() {
			granted++
		}
		advance(s.cfg.Stale + time.Millisecond) // the syncs fall behind
		granted += grantAll(s)
		if granted != want {
			t.Fatalf("granted %d across the takeover, one budget grants %d", granted, want)
		}
	})
	t.Run("local to fleet", func(t *testing.T) {
		s := newState(t, "to-fleet")
		feed(s) // never synced: the local budget decides
		granted := 0
		for granted < want/2 && s.AllowRetry() {
			granted++
		}
		syncAll(t, s) // Redis is back
		granted += grantAll(s)
		if granted != want {
			t.Fatalf("granted %d across the takeover, one budget grants %d", granted, want)
		}
		syncAll(t, s)
		if got := redisCounts(t, s, "ret"); got != int64(want) {
			t.Fatalf("Redis counted %d retries, want %d", got, want)
		}
	})
}

// Two processes on one Redis grant retries while their syncs overlap the
// grants: background syncs every millisecond with a 2 ms bound, syncs
// asked for by the workers, and every fifth reply lost after its script
// ran. Every count each made is in the fleet's books once: no grant made
// during a sync is lost, no batch sent again is applied twice.
func TestTwoProcessesCountExactlyWithSyncsOverlappingGrants(t *testing.T) {
	name := fleetName(t)
	type tally struct{ req, ret, ok, fail, aban atomic.Int64 }
	var gates []*gate
	var states []*State
	for range 2 {
		g := newGate(t)
		g.dropEvery = 5
		gates = append(gates, g)
		states = append(states, newState(t, "two", func(c *Config) {
			c.Name = name
			c.Client = newClient(t, g.addr())
			c.SyncInterval = time.Millisecond
			c.Timeout = 2 * time.Millisecond
		}))
	}
	var want tally
	var wg sync.WaitGroup
	for _, s := range states {
		s.Start()
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 1000 {
					s.OnRequest()
					want.req.Add(1)
					s.OnAttempt(llmretry.AttemptResult{Failed: i%2 == 0, Load: 1 + w})
					if i%10 == 0 {
						_ = s.Sync(context.Background())
					}
					if !s.AllowRetry() {
						continue
					}
					want.ret.Add(1)
					switch i % 3 {
					case 0:
						s.OnAttempt(llmretry.AttemptResult{Retry: true, Load: 1 + w})
						want.ok.Add(1)
					case 1:
						s.OnAttempt(llmretry.AttemptResult{Retry: true, Failed: true, Load: 1 + w})
						want.fail.Add(1)
					default:
						s.OnAttempt(llmretry.AttemptResult{Retry: true, Abandoned: true})
						want.aban.Add(1)
					}
				}
			}()
		}
	}
	wg.Wait()
	for i, s := range states {
		_ = s.Close() // its last sync may time out or lose its reply: the next ones publish
		s.awaitFlight()
		s.cfg.Timeout = time.Minute
		gates[i].mu.Lock()
		gates[i].dropEvery, gates[i].dropNext = 0, false
		gates[i].mu.Unlock()
	}
	syncAll(t, states[0], states[1], states[0])
	for _, g := range gates {
		g.mu.Lock()
		dropped := g.dropped
		g.mu.Unlock()
		if dropped == 0 {
			t.Fatal("no reply was lost: the test did not test what it says")
		}
		t.Logf("%d scripts, %d replies lost", g.scripts.Load(), dropped)
	}
	if want.ret.Load() == 0 || want.aban.Load() == 0 {
		t.Fatalf("no retries granted: %d", want.ret.Load())
	}
	c := states[0].Counts()
	got := []int64{c.Requests, c.Retries, c.RetriesOK, c.RetriesFailed, c.RetriesAbandoned}
	exact := []int64{want.req.Load(), want.ret.Load(), want.ok.Load(), want.fail.Load(), want.aban.Load()}
	for i, field := range []string{"req", "ret", "ok", "fail", "aban"} {
		if got[i] != exact[i] {
			t.Errorf("%s: the fleet's books hold %d, the processes counted %d", field, got[i], exact[i])
		}
		if r := redisCounts(t, states[0], field); r != exact[i] {
			t.Errorf("%s: Redis holds %d, the processes counted %d", field, r, exact[i])
		}
	}
}

package redisstate

import (
	"bytes"
	"context"
	"log/slog"
	"strconv"
	"strings"
	"sync"
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
	s := newState(t, "books", func(c *Config) { c.Budget.Reserve = 1 })
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
	s.syncOnce() // a panic here fails the test
	if !strings.Contains(logs.String(), "sync panicked") {
		t.Fatalf("logs: %s", logs.String())
	}
	if !s.AllowRetry() {
		t.Fatal("no retry from the local budget after a failed sync")
	}
}

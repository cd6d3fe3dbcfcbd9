// Package redisstate shares llmretry's retry budget and health marks
// (cooldowns, quotas, ejections: llmretry.HealthStore) across a fleet
// through Redis, so that every process pointed at the same Redis spends
// one budget and knows what the others learnt about their upstreams.
//
// Redis is never on a request's path: requests decide on local state (the
// fleet's totals as of the last sync, plus this process's own counts since;
// the health marks as of the last sync, plus this process's own), and a
// background loop syncs with Redis every SyncInterval in one atomic
// script. If Redis is slow or down, requests go on with local state and a
// warning is logged; a Redis outage never fails or blocks a request, and
// no caller waits on Redis longer than Config.Timeout.
//
// The books are exact. The counts a sync publishes go as a batch numbered
// by this process, kept until Redis acknowledges it: a sync whose reply is
// lost or late is sent again with the same number, and the script applies
// a batch only once. Until then its counts go on counting in this
// process's decisions. Fields in the shared keys that this version did not
// write (a foreign value, junk) are skipped and logged once.
package redisstate

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmretry/llmretry"
)

// Config sets up a State. Zero fields take their defaults.
type Config struct {
	// Client is the Redis connection (required). Its timeouts need no
	// particular setting: Timeout bounds every wait on it.
	Client redis.UniversalClient
	// Name is the budget's name: processes with the same Name and Prefix
	// share one budget and one set of health marks. Default "default".
	Name string
	// Prefix starts every key. Default "llmretry".
	Prefix string
	// Budget sets the ratio, reserve and window, as for llmretry's
	// RatioBudget; its Clock is ignored.
	Budget llmretry.BudgetConfig
	// SyncInterval is how often the fleet state is synced. Default 100 ms.
	SyncInterval time.Duration
	// Timeout bounds how long a caller of Sync (the background loop, or
	// Close) waits for Redis, whatever the Client's own options. A sync
	// given up on may still run in Redis; its counts are kept and sent
	// again, and applied once. Default 500 ms.
	Timeout time.Duration
	// Stale is how old the last good sync may be before decisions fall back
	// to this process's own budget. Default 5 x SyncInterval.
	Stale time.Duration
	// MaxRest is the longest a health mark read from Redis may still run:
	// a mark that ends later is cut to end MaxRest from when it is read,
	// in Redis too, so a hostile or mistaken end (a Retry-After of 31
	// years) does not rest a key for that long, nor survive an upgrade.
	// Default 24 h, the Transport's own ceiling by default. Set it to the
	// longest Failover.MaxRest of the Transports that share the State (the
	// command does): a shorter one cuts their rests short for the fleet,
	// and a longer one keeps marks in Redis that each Transport cuts to
	// its own MaxRest when it reads them anyway.
	MaxRest time.Duration
	// Logger gets a warning when Redis fails and a note when it is back,
	// and a warning for each field in Redis this version did not write.
	// Default: silent.
	Logger *slog.Logger
}

const (
	// budgetBuckets is how many slices the window is counted in.
	budgetBuckets = 10
	// minWindow is the shortest budget window: Redis expires keys in whole
	// milliseconds, and a window is counted in budgetBuckets slices.
	minWindow = 10 * time.Millisecond
	// defaultMaxRest is Config.MaxRest's default.
	defaultMaxRest = 24 * time.Hour
)

// State is a fleet-wide llmretry.Budget and llmretry.HealthStore. Give the
// same State to every Transport of the process with llmretry.WithBudget and
// llmretry.WithHealthStore.
type State struct {
	cfg Config
	// local is this process's own budget: it counts everything this
	// process does (every retry granted, from the fleet's books or its
	// own), holds its load signal, and decides alone when the syncs fall
	// behind.
	local *llmretry.RatioBudget
	// health mirrors the fleet's marks as of the last sync, and this
	// process's own: requests ask it, never Redis.
	health *llmretry.LocalHealthStore
	now    func() time.Time // time.Now; tests move it

	mu sync.Mutex
	books
	// pushes are the marks Put since the last sync, to publish: their
	// end in Unix ms.
	pushes map[llmretry.Mark]int64
	flights
	failing bool
	junk    junkNotes

	id string // this process's name in the fleet
	// stop ends the background loop, and any sync it waits on; done is
	// closed once it has ended.
	stop context.CancelFunc
	done chan struct{}
}

// New returns a State; call Start to sync in the background, and Close.
// It refuses a configuration it could not run: no Client, or a budget
// Window under 10 ms (Redis counts expiry in milliseconds).
func New(cfg Config) (*State, error) {
	if cfg.Client == nil {
		return nil, errors.New("redisstate: Config.Client is required")
	}
	if w := cfg.Budget.Window; w > 0 && w < minWindow {
		return nil, fmt.Errorf("redisstate: Config.Budget.Window %v is under %v, the least it can count in Redis", w, minWindow)
	}
	if cfg.Name == "" {
		cfg.Name = "default"
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "llmretry"
	}
	if cfg.SyncInterval <= 0 {
		cfg.SyncInterval = 100 * time.Millisecond
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 500 * time.Millisecond
	}
	if cfg.Stale <= 0 {
		cfg.Stale = 5 * cfg.SyncInterval
	}
	if cfg.MaxRest <= 0 {
		cfg.MaxRest = defaultMaxRest
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	var id [8]byte
	_, _ = rand.Read(id[:])
	s := &State{
		cfg: cfg, health: llmretry.NewLocalHealthStore(), now: time.Now,
		books:  books{pending: map[int64]*llmretry.BudgetCounts{}, procs: 1},
		pushes: map[llmretry.Mark]int64{},
		id:     hex.EncodeToString(id[:]),
	}
	// The local budget runs on the State's clock, so that it and the
	// fleet's books count the same time (and tests can move both).
	cfg.Budget.Clock = stateClock{s}
	s.local = llmretry.NewRatioBudget(cfg.Budget)
	s.cfg.Budget = s.local.Config() // the same defaults as a local budget
	s.cfg.Budget.Clock = nil
	return s, nil
}

// stateClock is the State's now, as an llmretry.Clock for its local
// budget, which only reads the time.
type stateClock struct{ s *State }

func (c stateClock) Now() time.Time { return c.s.now() }

func (stateClock) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	t := time.NewTimer(d)
	return t.C, t.Stop
}

func (stateClock) AfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}

// Start syncs with Redis every SyncInterval until Close.
func (s *State) Start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stop != nil {
		return
	}
	ctx, stop := context.WithCancel(context.Background())
	s.stop, s.done = stop, make(chan struct{})
	go s.loop(ctx, s.done)
}

// Close stops the background sync, after a last one that publishes what
// this process counted. It waits at most Timeout for Redis; a sync still
// in flight after that ends on its own, when the Client gives up on it.
func (s *State) Close() error {
	s.mu.Lock()
	stop, done := s.stop, s.done
	s.stop = nil
	s.mu.Unlock()
	if stop == nil {
		return nil
	}
	stop()
	<-done
	return s.Sync(context.Background())
}

func (s *State) loop(ctx context.Context, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(s.cfg.SyncInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.syncOnce(ctx)
		}
	}
}

// syncOnce is one background sync. A panic in it (a bug, or a Redis reply
// of a shape never seen) is logged, never allowed to end the process.
func (s *State) syncOnce(ctx context.Context) {
	defer func() {
		if p := recover(); p != nil {
			s.cfg.Logger.Error("llmretry redisstate: sync panicked; going on with local state", "panic", fmt.Sprint(p))
		}
	}()
	_ = s.Sync(ctx)
}

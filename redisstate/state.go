// Package redisstate shares llmretry's retry budget and cooldowns across a
// fleet through Redis, so that every process pointed at the same Redis
// spends one budget and honours one upstream's Retry-After together.
//
// Redis is never on a request's path: requests decide on local state (the
// fleet's totals as of the last sync, plus this process's own counts since),
// and a background loop syncs with Redis every SyncInterval in one atomic
// script. If Redis is slow or down, requests go on with local state and a
// warning is logged; a Redis outage never fails or blocks a request.
package redisstate

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmretry/llmretry"
)

// Config sets up a State. Zero fields take their defaults.
type Config struct {
	// Client is the Redis connection (required).
	Client redis.UniversalClient
	// Name is the budget's name: processes with the same Name and Prefix
	// share one budget and one set of cooldowns. Default "default".
	Name string
	// Prefix starts every key. Default "llmretry".
	Prefix string
	// Budget sets the ratio, reserve and window, as for llmretry's
	// RatioBudget; its Clock is ignored.
	Budget llmretry.BudgetConfig
	// SyncInterval is how often the fleet state is synced. Default 100 ms.
	SyncInterval time.Duration
	// Timeout bounds one sync. Default 500 ms.
	Timeout time.Duration
	// Stale is how old the last good sync may be before decisions fall back
	// to this process's own budget. Default 5 x SyncInterval.
	Stale time.Duration
	// Logger gets a warning when Redis fails and a note when it is back.
	// Default: silent.
	Logger *slog.Logger
}

// budgetBuckets is how many slices the window is counted in.
const budgetBuckets = 10

// minWindow is the shortest budget window: Redis expires keys in whole
// milliseconds, and a window is counted in budgetBuckets slices.
const minWindow = 10 * time.Millisecond

// State is a fleet-wide llmretry.Budget and llmretry.Cooldowns. Give the
// same State to every Transport of the process with llmretry.WithBudget and
// llmretry.WithCooldowns.
type State struct {
	cfg   Config
	local *llmretry.RatioBudget
	cool  *llmretry.LocalCooldowns
	now   func() time.Time // time.Now; tests move it

	mu       sync.Mutex
	pending  map[int64]*llmretry.BudgetCounts // counted here, not yet published: by time slice
	fleet    llmretry.BudgetCounts            // the fleet's window totals at the last sync
	procs    int64                            // processes that synced within the window
	lastSync time.Time                        // of the last good sync
	failing  bool
	pushes   map[string]int64 // cooldowns to publish: upstream -> until (Unix ms)

	syncMu sync.Mutex // one Sync at a time

	id   string // this process's name in the fleet
	stop chan struct{}
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
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Budget.Clock = nil // decisions here run on the real clock
	local := llmretry.NewRatioBudget(cfg.Budget)
	cfg.Budget = local.Config() // the same defaults as a local budget
	var id [8]byte
	_, _ = rand.Read(id[:])
	return &State{
		cfg: cfg, local: local, cool: llmretry.NewLocalCooldowns(), now: time.Now,
		pending: map[int64]*llmretry.BudgetCounts{}, pushes: map[string]int64{},
		id: hex.EncodeToString(id[:]), procs: 1,
	}, nil
}

// Start syncs with Redis every SyncInterval until Close.
func (s *State) Start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stop != nil {
		return
	}
	s.stop, s.done = make(chan struct{}), make(chan struct{})
	go s.loop(s.stop, s.done)
}

// Close stops the background sync, after a last one that publishes what
// this process counted.
func (s *State) Close() error {
	s.mu.Lock()
	stop, done := s.stop, s.done
	s.stop = nil
	s.mu.Unlock()
	if stop == nil {
		return nil
	}
	close(stop)
	<-done
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
	defer cancel()
	return s.Sync(ctx)
}

func (s *State) loop(stop, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(s.cfg.SyncInterval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			s.syncOnce()
		}
	}
}

// syncOnce is one background sync. A panic in it (a bug, or a Redis reply
// of a shape never seen) is logged, never allowed to end the process.
func (s *State) syncOnce() {
	defer func() {
		if p := recover(); p != nil {
			s.cfg.Logger.Error("llmretry redisstate: sync panicked; going on with local state", "panic", fmt.Sprint(p))
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
	defer cancel()
	_ = s.Sync(ctx)
}

// slice is the number of the budget slice that t falls in.
func (s *State) slice(t time.Time) int64 {
	return t.UnixNano() / int64(s.cfg.Budget.Window/budgetBuckets)
}

// count adds d to what is pending in now's slice. s.mu is held.
func (s *State) count(now time.Time, d llmretry.BudgetCounts) {
	sl := s.slice(now)
	c := s.pending[sl]
	if c == nil {
		c = &llmretry.BudgetCounts{}
		s.pending[sl] = c
	}
	c.Requests += d.Requests
	c.Retries += d.Retries
	c.RetriesOK += d.RetriesOK
}

// pendingSum is what this process counted since its last good sync, in
// slices still within the window. s.mu is held.
func (s *State) pendingSum(now time.Time) llmretry.BudgetCounts {
	cur := s.slice(now)
	var sum llmretry.BudgetCounts
	for sl, c := range s.pending {
		if cur-sl < budgetBuckets {
			sum.Requests += c.Requests
			sum.Retries += c.Retries
			sum.RetriesOK += c.RetriesOK
		}
	}
	return sum
}

// OnRequest records a first attempt. It never touches Redis.
func (s *State) OnRequest() {
	s.local.OnRequest()
	now := s.now()
	s.mu.Lock()
	s.count(now, llmretry.BudgetCounts{Requests: 1})
	s.mu.Unlock()
}

// OnAttempt records how an attempt ended. It never touches Redis. The load
// signal (llmretry.BudgetCounts.LoadDriven) is this process's own.
func (s *State) OnAttempt(r llmretry.AttemptResult) {
	s.local.OnAttempt(r)
	if r.Retry && !r.Failed {
		now := s.now()
		s.mu.Lock()
		s.count(now, llmretry.BudgetCounts{RetriesOK: 1})
		s.mu.Unlock()
	}
}

// AllowRetry spends one retry of the fleet's budget, as known at the last
// sync plus this process's counts since, by llmretry.RetryAllowed's rule.
// When the last good sync is older than Stale, it decides on this process's
// own budget instead, which has counted every retry this process was
// granted, from the fleet's share or its own. It never touches Redis.
func (s *State) AllowRetry() bool {
	now := s.now()
	loadDriven := s.local.Counts().LoadDriven()
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.Sub(s.lastSync) > s.cfg.Stale {
		if !s.local.AllowRetry() {
			return false
		}
		s.count(now, llmretry.BudgetCounts{Retries: 1})
		return true
	}
	// Between syncs every process spends from the same snapshot, unseen
	// by the others. So each takes its share of the fleet's headroom at
	// the last sync, plus what its own counts since allow: together they
	// stay within the fleet's budget.
	ratio := s.cfg.Budget.Ratio
	mine := s.pendingSum(now)
	limit := max(float64(s.cfg.Budget.Reserve), ratio*float64(s.fleet.Requests))
	spent, earned := float64(s.fleet.Retries), ratio*float64(mine.Requests)
	if !loadDriven {
		spent -= 2 * float64(s.fleet.RetriesOK)
		earned += 2 * float64(mine.RetriesOK)
	}
	share := max(limit-spent, 0)/float64(s.procs) + earned
	if float64(mine.Retries+1) > share {
		return false
	}
	s.count(now, llmretry.BudgetCounts{Retries: 1})
	s.local.RecordRetry()
	return true
}

// Counts returns the fleet's counts in the window, as known now: its
// requests, retries and retries that worked, and this process's load
// signal.
func (s *State) Counts() llmretry.BudgetCounts {
	now := s.now()
	c := s.local.Counts()
	s.mu.Lock()
	defer s.mu.Unlock()
	mine := s.pendingSum(now)
	c.Requests = s.fleet.Requests + mine.Requests
	c.Retries = s.fleet.Retries + mine.Retries
	c.RetriesOK = s.fleet.RetriesOK + mine.RetriesOK
	return c
}

// Active reports whether any cooldown, this process's or the fleet's as of
// the last sync, may still run.
func (s *State) Active(now time.Time) bool { return s.cool.Active(now) }

// Until returns when up's cooldown ends.
func (s *State) Until(up llmretry.Upstream) time.Time { return s.cool.Until(up) }

// Extend records a cooldown here at once and publishes it at the next sync.
func (s *State) Extend(up llmretry.Upstream, now time.Time, wait time.Duration) {
	s.cool.Extend(up, now, wait)
	until := now.Add(wait).UnixMilli()
	k := up.String()
	s.mu.Lock()
	if until > s.pushes[k] {
		s.pushes[k] = until
	}
	s.mu.Unlock()
}

// syncScript adds this process's counts to the slices they were made in,
// publishes its cooldowns (keeping the later end), forgets cooldowns that
// are over, and returns the window's totals and every running cooldown,
// atomically.
//
// KEYS[1] the cooldown hash; KEYS[2] the hash of processes and when each
// last synced; KEYS[3..] the window's slices, current first. ARGV: key TTL
// (ms), now (Unix ms), this process's id, the number n of slices with
// counts, then n groups of (slice's place in KEYS[3..] counted from 0,
// requests, retries, retries that worked), then pairs of upstream, until
// (Unix ms). It returns the window's requests, retries and retries that
// worked, how many processes synced within it, then pairs of upstream,
// until.
var syncScript = redis.NewScript(`
local ttl = ARGV[1]
local now = tonumber(ARGV[2])
local n = tonumber(ARGV[4])
for j = 0, n - 1 do
  local k = KEYS[3 + tonumber(ARGV[5 + 4*j])]
  local req, ret, ok = tonumber(ARGV[6 + 4*j]), tonumber(ARGV[7 + 4*j]), tonumber(ARGV[8 + 4*j])
  if req > 0 then redis.call('HINCRBY', k, 'req', req) end
  if ret > 0 then redis.call('HINCRBY', k, 'ret', ret) end
  if ok > 0 then redis.call('HINCRBY', k, 'ok', ok) end
  redis.call('PEXPIRE', k, ttl)
end
redis.call('HSET', KEYS[2], ARGV[3], now)
redis.call('PEXPIRE', KEYS[2], ttl)
local procs = 0
local seen = redis.call('HGETALL', KEYS[2])
for i = 1, #seen, 2 do
  if now - tonumber(seen[i+1]) > tonumber(ttl) then
    redis.call('HDEL', KEYS[2], seen[i])
  else
    procs = procs + 1
  end
end
for i = 5 + 4*n, #ARGV, 2 do
  local old = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if tonumber(ARGV[i+1]) > old then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i+1]) end
end
local req, ret, ok = 0, 0, 0
for i = 3, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'req', 'ret', 'ok')
  req = req + tonumber(v[1] or '0')
  ret = ret + tonumber(v[2] or '0')
  ok = ok + tonumber(v[3] or '0')
end
local out = {req, ret, ok, procs}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if tonumber(all[i+1]) <= now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    table.insert(out, all[i]); table.insert(out, all[i+1])
  end
end
return out
`)

// Sync publishes this process's counts and cooldowns and reads the
// fleet's, in one atomic script. The background loop calls it; tests and
// callers that want a sync now may too. Syncs run one at a time, and the
// counts a sync publishes are taken out of what is pending first, so no
// count is published twice. Counts made while Redis was unreachable go into
// the slices they were made in; those older than the window are dropped.
// On failure the counts stay pending for the next sync and a warning is
// logged once per outage.
func (s *State) Sync(ctx context.Context) error {
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	now := s.now()
	cur := s.slice(now)
	s.mu.Lock()
	pending, pushes := s.pending, s.pushes
	s.pending, s.pushes = map[int64]*llmretry.BudgetCounts{}, map[string]int64{}
	s.mu.Unlock()

	tag := "{" + s.cfg.Prefix + ":" + s.cfg.Name + "}" // one hash slot, for Redis Cluster
	keys := []string{tag + ":cooldowns", tag + ":procs"}
	for i := int64(0); i < budgetBuckets; i++ {
		keys = append(keys, tag+":budget:"+strconv.FormatInt(cur-i, 10))
	}
	sliceLen := s.cfg.Budget.Window / budgetBuckets
	args := []any{(s.cfg.Budget.Window + 2*sliceLen).Milliseconds(), now.UnixMilli(), s.id, 0}
	n := 0
	for sl, c := range pending {
		if age := cur - sl; age >= 0 && age < budgetBuckets {
			args = append(args, age, c.Requests, c.Retries, c.RetriesOK)
			n++
		}
	}
	args[3] = n
	for k, until := range pushes {
		args = append(args, k, until)
	}
	raw, err := syncScript.Run(ctx, s.cfg.Client, keys, args...).Slice()
	if err == nil && len(raw) < 4 {
		err = fmt.Errorf("sync script returned %d values", len(raw))
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		// Keep what was not published for the next sync, in its slices.
		for sl, c := range pending {
			if cur-sl < budgetBuckets {
				s.count(time.Unix(0, sl*int64(sliceLen)), *c)
			}
		}
		for k, until := range pushes {
			if until > s.pushes[k] {
				s.pushes[k] = until
			}
		}
		if !s.failing {
			s.failing = true
			s.cfg.Logger.Warn("llmretry redisstate: Redis sync failed; going on with local state", "error", err)
		}
		return err
	}
	if s.failing {
		s.failing = false
		s.cfg.Logger.Info("llmretry redisstate: Redis sync works again")
	}
	s.fleet = llmretry.BudgetCounts{Requests: toInt(raw[0]), Retries: toInt(raw[1]), RetriesOK: toInt(raw[2])}
	s.procs = max(toInt(raw[3]), 1)
	s.lastSync = now
	for i := 4; i+1 < len(raw); i += 2 {
		k, _ := raw[i].(string)
		until := toInt(raw[i+1])
		if up, ok := llmretry.ParseUpstream(k); ok && until > now.UnixMilli() {
			s.cool.Extend(up, now, time.Duration(until-now.UnixMilli())*time.Millisecond)
		}
	}
	return nil
}

// toInt reads a script reply that is an integer or a decimal string.
func toInt(v any) int64 {
	switch x := v.(type) {
	case int64:
		return x
	case string:
		n, _ := strconv.ParseInt(x, 10, 64)
		return n
	}
	return 0
}

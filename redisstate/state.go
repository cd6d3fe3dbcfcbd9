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
	"strings"
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

// State is a fleet-wide llmretry.Budget and llmretry.Cooldowns. Give the
// same State to every Transport of the process with llmretry.WithBudget and
// llmretry.WithCooldowns.
type State struct {
	cfg   Config
	local *llmretry.RatioBudget
	cool  *llmretry.LocalCooldowns

	mu         sync.Mutex
	pendingReq int64 // counted here since the last sync
	pendingRet int64
	fleetReq   int64 // the fleet's window totals at the last sync
	fleetRet   int64
	procs      int64     // processes that synced within the window
	lastSync   time.Time // of the last good sync
	failing    bool
	pushes     map[string]int64 // cooldowns to publish: upstream -> until (Unix ms)

	id   string // this process's name in the fleet
	stop chan struct{}
	done chan struct{}
}

// New returns a State; call Start to sync in the background, and Close.
func New(cfg Config) (*State, error) {
	if cfg.Client == nil {
		return nil, errors.New("redisstate: Config.Client is required")
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
		cfg: cfg, local: local, cool: llmretry.NewLocalCooldowns(),
		pushes: map[string]int64{}, id: hex.EncodeToString(id[:]), procs: 1,
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
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
			_ = s.Sync(ctx)
			cancel()
		}
	}
}

// OnRequest records a first attempt. It never touches Redis.
func (s *State) OnRequest() {
	s.local.OnRequest()
	s.mu.Lock()
	s.pendingReq++
	s.mu.Unlock()
}

// AllowRetry spends one retry of the fleet's budget, as known at the last
// sync plus this process's counts since. When the last good sync is older
// than Stale, it decides on this process's own budget instead. It never
// touches Redis.
func (s *State) AllowRetry() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if time.Since(s.lastSync) > s.cfg.Stale {
		if !s.local.AllowRetry() {
			return false
		}
		s.pendingRet++
		return true
	}
	// Between syncs every process spends from the same snapshot, unseen
	// by the others. So each takes its share of the fleet's headroom at
	// the last sync, plus the ratio of its own requests since: together
	// they stay within the fleet's budget.
	limit := max(float64(s.cfg.Budget.Reserve), s.cfg.Budget.Ratio*float64(s.fleetReq))
	headroom := max(limit-float64(s.fleetRet), 0)
	mine := headroom/float64(s.procs) + s.cfg.Budget.Ratio*float64(s.pendingReq)
	if float64(s.pendingRet+1) > mine {
		return false
	}
	s.pendingRet++
	return true
}

// Counts returns the fleet's requests and retries in the window, as known
// now.
func (s *State) Counts() (requests, retries int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fleetReq + s.pendingReq, s.fleetRet + s.pendingRet
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

// syncScript adds this process's counts to the current slice, publishes
// its cooldowns (keeping the later end), forgets cooldowns that are over,
// and returns the window's totals and every running cooldown, atomically.
//
// KEYS[1] the cooldown hash; KEYS[2] the hash of processes and when each
// last synced; KEYS[3..] the window's slices, current first. ARGV:
// requests, retries, slice TTL (ms), now (Unix ms), this process's id, then
// pairs of upstream, until (Unix ms). It returns the window's requests and
// retries, how many processes synced within it, then pairs of upstream,
// until.
var syncScript = redis.NewScript(`
local cur = KEYS[3]
if tonumber(ARGV[1]) > 0 then redis.call('HINCRBY', cur, 'req', ARGV[1]) end
if tonumber(ARGV[2]) > 0 then redis.call('HINCRBY', cur, 'ret', ARGV[2]) end
redis.call('PEXPIRE', cur, ARGV[3])
local now = tonumber(ARGV[4])
redis.call('HSET', KEYS[2], ARGV[5], now)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local procs = 0
local seen = redis.call('HGETALL', KEYS[2])
for i = 1, #seen, 2 do
  if now - tonumber(seen[i+1]) > tonumber(ARGV[3]) then
    redis.call('HDEL', KEYS[2], seen[i])
  else
    procs = procs + 1
  end
end
for i = 6, #ARGV, 2 do
  local old = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if tonumber(ARGV[i+1]) > old then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i+1]) end
end
local req, ret = 0, 0
for i = 3, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'req', 'ret')
  req = req + tonumber(v[1] or '0')
  ret = ret + tonumber(v[2] or '0')
end
local out = {req, ret, procs}
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
// callers that want a sync now may too. On failure the counts stay pending
// for the next sync and a warning is logged once per outage.
func (s *State) Sync(ctx context.Context) error {
	now := time.Now()
	s.mu.Lock()
	dreq, dret := s.pendingReq, s.pendingRet
	pushes := s.pushes
	s.pushes = map[string]int64{}
	s.mu.Unlock()

	sliceLen := s.cfg.Budget.Window / budgetBuckets
	slice := now.UnixNano() / int64(sliceLen)
	tag := "{" + s.cfg.Prefix + ":" + s.cfg.Name + "}" // one hash slot, for Redis Cluster
	keys := []string{tag + ":cooldowns", tag + ":procs"}
	for i := int64(0); i < budgetBuckets; i++ {
		keys = append(keys, tag+":budget:"+strconv.FormatInt(slice-i, 10))
	}
	args := []any{dreq, dret, (s.cfg.Budget.Window + 2*sliceLen).Milliseconds(), now.UnixMilli(), s.id}
	for k, until := range pushes {
		args = append(args, k, until)
	}
	raw, err := syncScript.Run(ctx, s.cfg.Client, keys, args...).Slice()
	if err == nil && len(raw) < 3 {
		err = fmt.Errorf("sync script returned %d values", len(raw))
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		// Keep what was not published for the next sync.
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
	s.pendingReq -= dreq
	s.pendingRet -= dret
	s.fleetReq, s.fleetRet, s.procs = toInt(raw[0]), toInt(raw[1]), max(toInt(raw[2]), 1)
	s.lastSync = now
	for i := 3; i+1 < len(raw); i += 2 {
		k, _ := raw[i].(string)
		until := toInt(raw[i+1])
		if up, ok := parseUpstream(k); ok && until > now.UnixMilli() {
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

// parseUpstream reads back an llmretry.Upstream from its String form.
func parseUpstream(k string) (llmretry.Upstream, bool) {
	scheme, rest, ok := strings.Cut(k, "://")
	if !ok {
		return llmretry.Upstream{}, false
	}
	host, cred, ok := strings.Cut(rest, "#")
	if !ok {
		return llmretry.Upstream{}, false
	}
	return llmretry.Upstream{Scheme: scheme, Host: host, Credential: cred}, true
}

package redisstate

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/llmretry/llmretry"
)

// A sync is a flight: one run of the sync script, in a goroutine of its
// own, so that a caller stops waiting at Config.Timeout whatever the
// go-redis client's options (a client built without ContextTimeoutEnabled
// ignores a context's deadline). At most one flight is in the air: a sync
// asked for while one is waits for it, so a slow Redis never has syncs
// piling up on it. A flight given up on lands when it lands, and is
// applied then: its reply acknowledges the batches Redis applied, which
// leave this process's own counts as they join the fleet's, so nothing is
// counted twice and nothing is lost.

// flights is a State's record of its syncs. s.mu guards it.
type flights struct {
	flight  *flight // in the air, or nil
	landed  *flight // the last to land
	started int64   // flights started
}

// flight is one sync.
type flight struct {
	n    int64         // its place among the State's flights, from 1
	done chan struct{} // closed once it landed and was applied
	err  error
}

// errTimeout is why a sync's caller stopped waiting at Config.Timeout.
var errTimeout = errors.New("no reply from Redis in time")

// Sync publishes this process's counts and health marks and reads the
// fleet's, in one atomic script, and waits for it at most Config.Timeout
// (and no longer than ctx allows). The background loop calls it; tests and
// callers that want a sync now may too. What was counted before the call
// is in the sync it waits for: if a sync is already in flight, Sync waits
// for it to land, then sends its own. On failure the counts stay in this
// process's books and go again with the next sync; a warning is logged
// once per outage. Counts made while Redis was unreachable go into the
// slices they were made in; those older than the window are dropped.
func (s *State) Sync(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeoutCause(ctx, s.cfg.Timeout, errTimeout)
	defer cancel()
	s.mu.Lock()
	after := s.started // a flight started before this call may miss its counts
	for {
		if f := s.flight; f != nil {
			s.mu.Unlock()
			landed, err := s.await(ctx, f)
			if !landed || f.n > after {
				return err
			}
			s.mu.Lock()
			continue
		}
		if f := s.landed; f != nil && f.n > after {
			s.mu.Unlock()
			return f.err
		}
		f := s.launch()
		s.mu.Unlock()
		_, err := s.await(ctx, f)
		return err
	}
}

// await waits for f to land, or for ctx to end. It returns f's error, or,
// when the wait ended first, why; and whether f landed.
func (s *State) await(ctx context.Context, f *flight) (landed bool, err error) {
	select {
	case <-f.done:
		return true, f.err
	case <-ctx.Done():
	}
	if !errors.Is(context.Cause(ctx), errTimeout) {
		return false, fmt.Errorf("redisstate: sync: %w", ctx.Err())
	}
	err = fmt.Errorf("redisstate: sync: no reply from Redis within %v: %w", s.cfg.Timeout, context.DeadlineExceeded)
	s.mu.Lock()
	s.failed(err)
	s.mu.Unlock()
	return false, err
}

// awaitFlight waits until no flight is in the air: for tests, which must
// not end with a goroutine still running.
func (s *State) awaitFlight() {
	s.mu.Lock()
	f := s.flight
	s.mu.Unlock()
	if f != nil {
		<-f.done
	}
}

// launch starts a flight: it cuts what is pending into a batch, and sends
// every batch not yet acknowledged and the marks to publish. s.mu is held.
func (s *State) launch() *flight {
	now := s.now()
	cur := s.slice(now)
	if len(s.pending) > 0 {
		s.lastSeq++
		b := batch{seq: s.lastSeq, counts: make(map[int64]llmretry.BudgetCounts, len(s.pending))}
		for sl, c := range s.pending {
			b.counts[sl] = *c
		}
		s.unacked = append(s.unacked, b)
		s.pending = map[int64]*llmretry.BudgetCounts{}
	}
	// A batch with no slice left in the window has nothing to publish.
	live := s.unacked[:0]
	for _, b := range s.unacked {
		for sl := range b.counts {
			if cur-sl < budgetBuckets {
				live = append(live, b)
				break
			}
		}
	}
	clear(s.unacked[len(live):])
	s.unacked = live

	tag := "{" + s.cfg.Prefix + ":" + s.cfg.Name + "}"
	keys := []string{tag + ":health:" + healthVersion, tag + ":procs", tag + ":seqs"}
	for i := int64(0); i < budgetBuckets; i++ {
		keys = append(keys, tag+":budget:"+strconv.FormatInt(cur-i, 10))
	}
	sliceLen := s.cfg.Budget.Window / budgetBuckets
	args := []any{(s.cfg.Budget.Window + 2*sliceLen).Milliseconds(), now.UnixMilli(), s.id,
		s.cfg.MaxRest.Milliseconds(), maxSyncedMarks, len(s.unacked)}
	for _, b := range s.unacked {
		args = append(args, b.seq, 0)
		n, at := 0, len(args)-1
		for sl, c := range b.counts {
			if age := cur - sl; age >= 0 && age < budgetBuckets {
				args = append(args, age, c.Requests, c.Retries, c.RetriesOK, c.RetriesFailed, c.RetriesAbandoned)
				n++
			}
		}
		args[at] = n
	}
	pushes := s.pushes
	s.pushes = map[llmretry.Mark]int64{}
	ceiling := now.Add(s.cfg.MaxRest).UnixMilli()
	for m, until := range pushes {
		args = append(args, markField(m), min(until, ceiling))
	}

	s.started++
	f := &flight{n: s.started, done: make(chan struct{})}
	s.flight = f
	go s.fly(f, now, keys, args, pushes)
	return f
}

// fly runs the script, then applies its reply.
func (s *State) fly(f *flight, now time.Time, keys []string, args []any, pushes map[llmretry.Mark]int64) {
	var raw []any
	err := func() (err error) {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("sync panicked: %v", p)
			}
		}()
		// Timeout bounds the call too, for a client that heeds it.
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
		defer cancel()
		raw, err = syncScript.Run(ctx, s.cfg.Client, keys, args...).Slice()
		return err
	}()
	var r reply
	if err == nil {
		r, err = parseReply(raw)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	defer close(f.done)
	s.flight, s.landed = nil, f
	if err != nil {
		f.err = fmt.Errorf("redisstate: sync: %w", err)
		for m, until := range pushes { // to publish with the next sync
			if until > s.pushes[m] {
				s.pushes[m] = until
			}
		}
		s.failed(f.err)
		return
	}
	// What Redis applied is in its totals now, and no longer this
	// process's own.
	acked := 0
	for acked < len(s.unacked) && s.unacked[acked].seq <= r.last {
		acked++
	}
	s.unacked = append(s.unacked[:0], s.unacked[acked:]...)
	s.fleet, s.procs, s.lastSync = r.totals, max(r.procs, 1), now
	for _, j := range r.junk {
		s.junk.note(s.cfg.Logger, j)
	}
	for _, m := range r.marks {
		if !s.mirror(m.field, m.until, now) {
			s.junk.note(s.cfg.Logger, junkEntry{key: keys[0], field: m.field, value: strconv.FormatInt(m.until.UnixMilli(), 10)})
		}
	}
	if s.failing {
		s.failing = false
		s.cfg.Logger.Info("llmretry redisstate: Redis sync works again")
	}
}

// failed notes a failed sync: a warning, once per outage. s.mu is held.
func (s *State) failed(err error) {
	if !s.failing {
		s.failing = true
		s.cfg.Logger.Warn("llmretry redisstate: Redis sync failed; going on with local state", "error", err)
	}
}

// reply is the sync script's reply, read.
type reply struct {
	totals llmretry.BudgetCounts
	procs  int64
	last   int64 // the number of the last batch applied for this process
	junk   []junkEntry
	marks  []replyMark
}

type replyMark struct {
	field string
	until time.Time
}

// parseReply reads the script's reply. A reply of another shape is an
// error, never a panic.
func parseReply(raw []any) (reply, error) {
	var r reply
	if len(raw) < 8 {
		return r, fmt.Errorf("sync script returned %d values", len(raw))
	}
	var n [8]int64
	for i := range n {
		v, ok := raw[i].(int64)
		if !ok {
			return r, fmt.Errorf("sync script returned %T at %d", raw[i], i)
		}
		n[i] = v
	}
	r.totals = llmretry.BudgetCounts{Requests: n[0], Retries: n[1], RetriesOK: n[2], RetriesFailed: n[3], RetriesAbandoned: n[4]}
	r.procs, r.last = n[5], n[6]
	rest := raw[8:]
	if n[7] < 0 || int64(len(rest)) < 3*n[7] {
		return r, fmt.Errorf("sync script returned %d junk entries in %d values", n[7], len(rest))
	}
	for i := int64(0); i < n[7]; i++ {
		key, _ := rest[3*i].(string)
		field, _ := rest[3*i+1].(string)
		value, _ := rest[3*i+2].(string)
		r.junk = append(r.junk, junkEntry{key, field, value})
	}
	rest = rest[3*n[7]:]
	for i := 0; i+1 < len(rest); i += 2 {
		field, ok := rest[i].(string)
		until, ok2 := rest[i+1].(int64)
		if !ok || !ok2 {
			return r, fmt.Errorf("sync script returned a mark of %T, %T", rest[i], rest[i+1])
		}
		r.marks = append(r.marks, replyMark{field, time.UnixMilli(until)})
	}
	return r, nil
}

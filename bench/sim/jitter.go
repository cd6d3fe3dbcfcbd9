package main

import (
	"container/heap"
	"math"
	"math/rand/v2"
	"time"

	"github.com/llmretry/llmretry"
)

// The jitter simulation of Brooker's "Exponential Backoff And Jitter": n
// clients each update one shared record once, with optimistic concurrency.
// An attempt reads the record's version when it starts and writes after a
// network delay of |N(10 ms, 2 ms)|; the write fails if anyone else wrote
// in between, and the client backs off before trying again. Time is
// simulated, so a run takes microseconds.

const (
	simBase = 5 * time.Millisecond
	simCap  = 2000 * time.Millisecond
)

// backoffMode gives the wait before retry number n (1-based); prev is the
// previous wait (for decorrelated jitter).
type backoffMode struct {
	name string
	wait func(r *rand.Rand, n int, prev time.Duration) time.Duration
}

func expo(n int) time.Duration {
	d := float64(simBase) * math.Pow(2, float64(min(n-1, 40)))
	return time.Duration(min(d, float64(simCap)))
}

var modes = []backoffMode{
	{"no backoff", func(*rand.Rand, int, time.Duration) time.Duration { return 0 }},
	{"exponential, no jitter", func(_ *rand.Rand, n int, _ time.Duration) time.Duration { return expo(n) }},
	{"full jitter", func(r *rand.Rand, n int, _ time.Duration) time.Duration {
		return time.Duration(r.Float64() * float64(expo(n)))
	}},
	{"equal jitter", func(r *rand.Rand, n int, _ time.Duration) time.Duration {
		v := expo(n)
		return v/2 + time.Duration(r.Float64()*float64(v/2))
	}},
	{"decorrelated jitter", func(r *rand.Rand, _ int, prev time.Duration) time.Duration {
		hi := max(prev*3, simBase)
		return min(simCap, simBase+time.Duration(r.Float64()*float64(hi-simBase)))
	}},
	{"llmretry (±25%, cap-clipped)", func(r *rand.Rand, n int, _ time.Duration) time.Duration {
		p := llmretry.Policy{BaseDelay: simBase, MaxDelay: simCap}
		return p.Backoff(n, r.Float64())
	}},
}

type simEvent struct {
	at     time.Duration
	client int
	write  bool // a write arriving; otherwise an attempt starting
}

type eventQueue []simEvent

func (q eventQueue) Len() int { return len(q) }
func (q eventQueue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].client < q[j].client
}
func (q eventQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *eventQueue) Push(x any)   { *q = append(*q, x.(simEvent)) }
func (q *eventQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// contend runs one simulation and returns the calls made and the time the
// last client finished.
func contend(clients int, m backoffMode, r *rand.Rand) (calls int, done time.Duration) {
	version := 0
	read := make([]int, clients)
	retries := make([]int, clients)
	prev := make([]time.Duration, clients)
	q := &eventQueue{}
	for c := range clients {
		heap.Push(q, simEvent{at: 0, client: c})
	}
	delay := func() time.Duration {
		return time.Duration(math.Abs(r.NormFloat64()*2+10) * float64(time.Millisecond))
	}
	for q.Len() > 0 {
		e := heap.Pop(q).(simEvent)
		if !e.write {
			calls++
			read[e.client] = version
			heap.Push(q, simEvent{at: e.at + delay(), client: e.client, write: true})
			continue
		}
		if read[e.client] == version {
			version++
			done = max(done, e.at)
			continue
		}
		retries[e.client]++
		w := m.wait(r, retries[e.client], prev[e.client])
		prev[e.client] = w
		heap.Push(q, simEvent{at: e.at + w, client: e.client})
	}
	return calls, done
}

// jitterTable is the mean of runs simulations per mode and client count.
func jitterTable(runs int, clientCounts []int) [][]string {
	rows := [][]string{}
	for _, m := range modes {
		row := []string{m.name}
		for _, n := range clientCounts {
			r := rand.New(rand.NewPCG(uint64(n), 7))
			var calls int
			var done time.Duration
			for range runs {
				c, d := contend(n, m, r)
				calls += c
				done += d
			}
			row = append(row, fmtCalls(float64(calls)/float64(runs), done/time.Duration(runs)))
		}
		rows = append(rows, row)
	}
	return rows
}

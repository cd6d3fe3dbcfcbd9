package proxy

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmretry/llmretry"
	"github.com/llmretry/llmretry/llmretrytest"
	"github.com/llmretry/llmretry/redisstate"
	"github.com/llmretry/llmretry/redisstate/redistest"
)

// Two proxies sharing Redis: a 429 with Retry-After seen through one makes
// the other wait out the rest before its first attempt.
func TestProxiesShareCooldownsThroughRedis(t *testing.T) {
	rs, err := redistest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Stop()
	var hits atomic.Int32
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			w.Header().Set("Retry-After", "30")
			w.Header().Set("X-Ratelimit-Remaining-Requests", "0") // the bucket is empty: the limit binds for all
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		_, _ = io.WriteString(w, "ok")
	}))
	defer up.Close()
	u, _ := url.Parse(up.URL)

	proxyWith := func(clock llmretry.Clock, p llmretry.Policy) (string, *redisstate.State) {
		st := fleetState(t, rs.Addr)
		base := &http.Transport{}
		t.Cleanup(base.CloseIdleConnections)
		px, err := New(Config{Upstream: u, Base: base, Policy: p, Budget: st, Store: st,
			Options: []llmretry.Option{llmretry.WithClock(clock)}})
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(px)
		t.Cleanup(srv.Close)
		return srv.URL, st
	}
	clockB := llmretrytest.NewClock(time.Now())
	a, stA := proxyWith(llmretrytest.NewClock(time.Now()), llmretry.Policy{MaxAttempts: 1})
	b, stB := proxyWith(clockB, llmretry.Policy{})

	send := func(base string) int {
		resp, err := client(t).Post(base+"/v1/chat/completions", "application/json", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := send(a); code != 429 {
		t.Fatalf("through a: %d", code)
	}
	for _, st := range []*redisstate.State{stA, stB} {
		if err := st.Sync(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if code := send(b); code != 200 || hits.Load() != 2 {
		t.Fatalf("through b: %d, upstream hits %d", code, hits.Load())
	}
	if w := clockB.Waits(); len(w) != 1 || w[0] < 29*time.Second || w[0] > 31*time.Second {
		t.Fatalf("b waited %v before its first attempt, want the rest of a's 30 s", w)
	}
}

// Two proxies routing by config, sharing Redis: a key told to wait through
// one is avoided by the other, which sends to a free key with no wait.
func TestTwoRoutersSharingRedisBothAvoidARestingKey(t *testing.T) {
	rs, err := redistest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Stop()
	var keys struct {
		sync.Mutex
		got []string
	}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		keys.Lock()
		keys.got = append(keys.got, key)
		keys.Unlock()
		if key == "sk-a" {
			w.Header().Set("Retry-After", "20")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		_, _ = io.WriteString(w, "{}")
	}))
	defer up.Close()
	text := "routes:\n  - prefix: /openai\n    targets:\n      - name: openai\n        base_url: " + up.URL +
		"\n        keys: [{id: a, env: A}, {id: b, env: B}]\n"
	router := func() (string, *redisstate.State, *llmretrytest.Clock) {
		fc, err := ParseConfig("fleet.yaml", []byte(text), env(map[string]string{"A": "sk-a", "B": "sk-b"}))
		if err != nil {
			t.Fatal(err)
		}
		st := fleetState(t, rs.Addr)
		base := &http.Transport{}
		t.Cleanup(base.CloseIdleConnections)
		clk := llmretrytest.NewClock(time.Now())
		rt, err := NewRouter(fc, Config{Base: base, Store: st, Options: []llmretry.Option{llmretry.WithClock(clk)}})
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(rt)
		t.Cleanup(srv.Close)
		return srv.URL, st, clk
	}
	one, st1, _ := router()
	two, st2, clk2 := router()
	send := func(base string) *http.Response {
		resp, err := client(t).Post(base+"/openai/chat/completions", "application/json", strings.NewReader(`{"model":"gpt-4o"}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if resp := send(one); resp.StatusCode != 200 {
		t.Fatalf("through one: %d", resp.StatusCode)
	}
	for _, st := range []*redisstate.State{st1, st2} {
		if err := st.Sync(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if resp := send(two); resp.StatusCode != 200 {
		t.Fatalf("through two: %d", resp.StatusCode)
	}
	keys.Lock()
	got := strings.Join(keys.got, " ")
	keys.Unlock()
	if got != "sk-a sk-b sk-b" || len(clk2.Waits()) != 0 {
		t.Fatalf("keys sent %q, waits %v: want the second proxy to avoid a, with no wait", got, clk2.Waits())
	}
}

// fleetState is a process's fleet state on the Redis at addr, named for the
// test and synced only when the test calls Sync.
func fleetState(t *testing.T, addr string) *redisstate.State {
	t.Helper()
	rc := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = rc.Close() })
	st, err := redisstate.New(redisstate.Config{Client: rc, Name: t.Name(), SyncInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

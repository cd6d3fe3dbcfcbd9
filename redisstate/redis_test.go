package redisstate

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/llmretry/llmretry/redisstate/redistest"
)

// redisAddr is the loopback address of the redis-server TestMain started.
var redisAddr string

// TestMain starts a real redis-server (Debian's redis-server package, which
// scripts/test.sh installs) on a free loopback port, and stops it after.
func TestMain(m *testing.M) {
	// go-redis logs dial failures to stderr by default; the Redis-down
	// tests make them on purpose.
	redis.SetLogger(quietLogger{})
	srv, err := redistest.Start()
	if err != nil {
		fmt.Fprintf(os.Stderr, "redisstate tests need redis-server: %v\n", err)
		os.Exit(1)
	}
	redisAddr = srv.Addr
	code := m.Run()
	srv.Stop()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

// newClient is a client on the test server, closed with the test.
func newClient(t *testing.T, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

var runs atomic.Int64

// fleetName names a fleet for this test run alone: the server outlives a
// run, and go test -count=N runs a test N times.
func fleetName(t *testing.T) string {
	return fmt.Sprintf("%s#%d-%d", t.Name(), os.Getpid(), runs.Add(1))
}

// newState is a State on the test server under a name unique to the test.
func newState(t *testing.T, name string, mutate ...func(*Config)) *State {
	t.Helper()
	cfg := Config{Client: newClient(t, redisAddr), Name: fleetName(t) + "/" + name, SyncInterval: time.Hour}
	for _, m := range mutate {
		m(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func syncAll(t *testing.T, ss ...*State) {
	t.Helper()
	for _, s := range ss {
		if err := s.Sync(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

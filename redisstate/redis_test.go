package redisstate

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

// redisAddr is the loopback address of the redis-server TestMain started.
var redisAddr string

// TestMain starts a real redis-server (Debian's redis-server package, which
// scripts/test.sh installs) on a free loopback port, and stops it after.
func TestMain(m *testing.M) {
	srv, addr, err := startRedis()
	if err != nil {
		fmt.Fprintf(os.Stderr, "redisstate tests need redis-server: %v\n(run ./scripts/test.sh, which installs it)\n", err)
		os.Exit(1)
	}
	redisAddr = addr
	code := m.Run()
	srv.stop()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

type redisServer struct{ cmd *exec.Cmd }

func (r *redisServer) stop() {
	_ = r.cmd.Process.Kill()
	_ = r.cmd.Wait()
}

// startRedis runs redis-server on a free port, in memory only, and waits
// until it answers.
func startRedis() (*redisServer, string, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, "", err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command(bin, "--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, "", err
	}
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		signalled := false
		for sc.Scan() {
			if !signalled && strings.Contains(sc.Text(), "Ready to accept connections") {
				close(ready)
				signalled = true
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		return nil, "", fmt.Errorf("redis-server did not start")
	}
	return &redisServer{cmd: cmd}, fmt.Sprintf("127.0.0.1:%d", port), nil
}

// newClient is a client on the test server, closed with the test.
func newClient(t *testing.T, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// newState is a State on the test server under a name unique to the test.
func newState(t *testing.T, name string, mutate ...func(*Config)) *State {
	t.Helper()
	cfg := Config{Client: newClient(t, redisAddr), Name: t.Name() + "/" + name, SyncInterval: time.Hour}
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

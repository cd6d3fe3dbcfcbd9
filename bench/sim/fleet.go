package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmretry/llmretry"
	"github.com/llmretry/llmretry/redisstate"
)

// fleetRun starts a redis-server, then procs "processes" (each its own
// redisstate.State and Transport) send perProc requests each to an
// upstream that always fails; it returns attempts per request.
func fleetRun(procs, perProc int) (float64, error) {
	addr, stop, err := startRedis()
	if err != nil {
		return 0, err
	}
	defer stop()
	var hits atomic.Int64
	srv := failingServer(1.0, &hits)
	defer srv.Close()
	var wg sync.WaitGroup
	for range procs {
		rc := redis.NewClient(&redis.Options{Addr: addr})
		defer rc.Close()
		st, err := redisstate.New(redisstate.Config{Client: rc, Name: "sim", SyncInterval: 5 * time.Millisecond})
		if err != nil {
			return 0, err
		}
		st.Start()
		defer st.Close()
		base := &http.Transport{MaxIdleConnsPerHost: 4}
		defer base.CloseIdleConnections()
		c := &http.Client{Transport: llmretry.NewTransport(base, llmretry.WithBudget(st), llmretry.WithCooldowns(st),
			llmretry.WithClock(instantClock{}))}
		jobs := make(chan struct{})
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range jobs {
					if resp, err := c.Get(srv.URL); err == nil {
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
				}
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(jobs)
			for range perProc {
				jobs <- struct{}{}
			}
		}()
	}
	wg.Wait()
	return float64(hits.Load()) / float64(procs*perProc), nil
}

// startRedis runs redis-server on a free loopback port, in memory only.
func startRedis() (string, func(), error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return "", nil, fmt.Errorf("redis-server not found (apt-get install redis-server)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command(bin, "--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		once := false
		for sc.Scan() {
			if !once && strings.Contains(sc.Text(), "Ready to accept connections") {
				close(ready)
				once = true
			}
		}
	}()
	stop := func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		stop()
		return "", nil, fmt.Errorf("redis-server did not start")
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := redis.NewClient(&redis.Options{Addr: addr}).Ping(ctx).Err(); err != nil {
		stop()
		return "", nil, err
	}
	return addr, stop, nil
}

//go:build llmretry_bench_pprof

// This file is not part of the bench module's build (its build tag is never
// set there). bench/streams/run.sh (PROFILE=DIR) compiles it into a copy of
// the llmretry command with `go build -tags llmretry_bench_pprof -overlay`,
// as if it were a file of cmd/llmretry, so that the proxy can be profiled
// without a line of cmd/ changed: with LLMRETRY_BENCH_PPROF=ADDR set, that
// build serves net/http/pprof on ADDR (on http.DefaultServeMux, which the
// proxy's own listeners never use). With LLMRETRY_BENCH_MAXSTACK=BYTES it
// also caps every goroutine's stack (debug.SetMaxStack), so that the first
// call chain to need more crashes the process with its stack printed: how
// to find what makes a stream's goroutine grow its stack past 8 KiB;
// LLMRETRY_BENCH_MAXSTACK_AFTER=DURATION sets the cap only after that long
// (after a warm-up, to see past the first culprit: a dial, say).
package main

import (
	"net/http"
	_ "net/http/pprof"
	"os"
	"runtime/debug"
	"strconv"
	"time"
)

func init() {
	if addr := os.Getenv("LLMRETRY_BENCH_PPROF"); addr != "" {
		go func() { _ = http.ListenAndServe(addr, nil) }()
	}
	if n, err := strconv.Atoi(os.Getenv("LLMRETRY_BENCH_MAXSTACK")); err == nil && n > 0 {
		after, _ := time.ParseDuration(os.Getenv("LLMRETRY_BENCH_MAXSTACK_AFTER"))
		time.AfterFunc(after, func() { debug.SetMaxStack(n) })
	}
}

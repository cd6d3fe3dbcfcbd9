//go:build llmretry_bench_pprof

// This file is not part of the bench module's build (its build tag is never
// set there). bench/streams/run.sh (PROFILE=DIR) compiles it into a copy of
// the llmretry command with `go build -tags llmretry_bench_pprof -overlay`,
// as if it were a file of cmd/llmretry, so that the proxy can be profiled
// without a line of cmd/ changed: with LLMRETRY_BENCH_PPROF=ADDR set, that
// build serves net/http/pprof on ADDR (on http.DefaultServeMux, which the
// proxy's own listeners never use).
package main

import (
	"net/http"
	_ "net/http/pprof"
	"os"
)

func init() {
	if addr := os.Getenv("LLMRETRY_BENCH_PPROF"); addr != "" {
		go func() { _ = http.ListenAndServe(addr, nil) }()
	}
}

// Command fixedload sends exactly n chat completions (c at a time, over
// keep-alive connections), reads every reply to its end and exits, non-zero
// if any failed: a fixed amount of work, so that the CPU a proxy spent on it
// can be read from /proc and divided by n (bench/proxy/cpu.sh).
//
//	fixedload -url http://127.0.0.1:18180/v1/chat/completions -n 20000 -c 4 [-stream]
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
)

func main() {
	url := flag.String("url", "", "the chat completions URL")
	n := flag.Int("n", 1000, "requests in all")
	c := flag.Int("c", 4, "requests at a time")
	stream := flag.Bool("stream", false, "ask for streamed replies")
	flag.Parse()
	if *url == "" || *n < 1 || *c < 1 {
		fmt.Fprintln(os.Stderr, "usage: fixedload -url URL [-n 1000] [-c 4] [-stream]")
		os.Exit(2)
	}
	body := []byte(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`)
	if *stream {
		body = []byte(`{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
	}
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: *c}}
	var left, bad atomic.Int64
	left.Store(int64(*n))
	var wg sync.WaitGroup
	for range *c {
		wg.Go(func() {
			for left.Add(-1) >= 0 {
				resp, err := hc.Post(*url, "application/json", bytes.NewReader(body))
				if err != nil {
					bad.Add(1)
					continue
				}
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != http.StatusOK {
					bad.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if bad.Load() > 0 {
		fmt.Fprintf(os.Stderr, "fixedload: %d of %d failed\n", bad.Load(), *n)
		os.Exit(1)
	}
}

// Command client holds n streamed chat completions open at once through a
// target, over h2c (HTTP/2 without TLS, so that ten thousand streams fit in a
// few connections and the machine's file-descriptor limit), and reports how
// many arrived whole, exactly once: the load of bench/streams/run.sh.
//
//	client -url http://127.0.0.1:18190/v1/chat/completions -n 10000
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	url := flag.String("url", "", "the chat completions URL")
	n := flag.Int("n", 1000, "streams held open at once")
	flag.Parse()
	if *url == "" || *n < 1 {
		fmt.Fprintln(os.Stderr, "usage: client -url URL [-n 1000]")
		os.Exit(2)
	}
	tr := &http.Transport{}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(true)
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Minute}
	body := []byte(`{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}`)

	var open, intact, failed atomic.Int64
	allOpen := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	for range *n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, *url, bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", "Bearer sk-bench")
			resp, err := hc.Do(req)
			if err != nil {
				failed.Add(1)
				return
			}
			defer resp.Body.Close()
			sc := bufio.NewScanner(resp.Body)
			first, done, events := true, false, 0
			for sc.Scan() {
				line := sc.Text()
				if !strings.HasPrefix(line, "data: ") {
					continue
				}
				events++
				if first {
					first = false
					if open.Add(1) == int64(*n) {
						once.Do(func() { close(allOpen) })
					}
				}
				if line == "data: [DONE]" {
					done = true
				}
			}
			if done && sc.Err() == nil && resp.StatusCode == 200 {
				intact.Add(1)
			} else {
				failed.Add(1)
			}
		}()
	}
	go func() {
		<-allOpen
		fmt.Printf("all %d open after %v\n", *n, time.Since(start).Round(time.Millisecond))
	}()
	wg.Wait()
	fmt.Printf("intact %d failed %d of %d in %v\n", intact.Load(), failed.Load(), *n, time.Since(start).Round(time.Millisecond))
}

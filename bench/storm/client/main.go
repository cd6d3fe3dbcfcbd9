// Command client sends chat completions to an OpenAI-style endpoint, n at
// a time, and prints how many succeeded (a 200 whose body arrived whole)
// and the latency percentiles: the load of bench/storm/run.sh.
//
//	client -url http://127.0.0.1:18190/v1/chat/completions -n 200 -c 8 [-stream]
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"
)

func main() {
	url := flag.String("url", "", "the chat completions URL")
	n := flag.Int("n", 200, "requests")
	c := flag.Int("c", 8, "requests in flight")
	stream := flag.Bool("stream", false, "ask for a stream")
	flag.Parse()
	if *url == "" || *n < 1 || *c < 1 {
		fmt.Fprintln(os.Stderr, "usage: client -url URL [-n 200] [-c 8] [-stream]")
		os.Exit(2)
	}
	body := fmt.Sprintf(`{"model":"gpt-4o-mini","stream":%v,"messages":[{"role":"user","content":"hi"}]}`, *stream)
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: *c}, Timeout: 2 * time.Minute}
	var mu sync.Mutex
	var took []time.Duration
	ok := 0
	jobs := make(chan struct{})
	var wg sync.WaitGroup
	for range *c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				start := time.Now()
				why := send(hc, *url, body, *stream)
				d := time.Since(start)
				mu.Lock()
				took = append(took, d)
				if why == "" {
					ok++
				} else if len(took)-ok <= 5 { // the first few failures, and why
					fmt.Fprintln(os.Stderr, "client: failed:", why)
				}
				mu.Unlock()
			}
		}()
	}
	for range *n {
		jobs <- struct{}{}
	}
	close(jobs)
	wg.Wait()
	slices.Sort(took)
	fmt.Printf("ok %d/%d p50 %.1fms p99 %.1fms\n", ok, *n, ms(took[len(took)/2]), ms(took[len(took)*99/100]))
}

// send returns "" for a 200 whose body arrived whole (a JSON reply, or a
// stream that reached its [DONE]), else what went wrong.
func send(hc *http.Client, url, body string, stream bool) string {
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader([]byte(body)))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer sk-bench")
	resp, err := hc.Do(req)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	switch {
	case err != nil:
		return fmt.Sprintf("reading the body after %d bytes: %v", len(b), err)
	case resp.StatusCode != 200:
		return fmt.Sprintf("status %d: %.300s", resp.StatusCode, b)
	case stream && !bytes.Contains(b, []byte("[DONE]")):
		return fmt.Sprintf("stream ended without [DONE] after %d bytes", len(b))
	case len(b) == 0:
		return "empty body"
	}
	return ""
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

package proxy

import (
	"io"
	"net/http"
	"testing"
	"time"
)

// An untyped reply of unknown length to a request taken early: its header
// waits to sniff (pending), and ReverseProxy's maxLatencyWriter (latency -1)
// flushes it from a timer goroutine (writeHead) while the handler's
// goroutine is in streamBody.Read, whose mayGoOn reads the same fields.
func TestAReplyWaitingToSniffItsTypeDoesNotRaceReverseProxysFlush(t *testing.T) {
	next := make(chan struct{})
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header()["Content-Type"] = nil // no type, none sniffed upstream
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush() // header out, chunked: ContentLength -1
		select {
		case <-next:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "data: one\n\n")
	})
	base, _, _ := start(t, up, takeEvery)
	t.Cleanup(func() { close(next) })
	for range 30 { // the timer goroutine's order against Read varies: try a few
		c, br := rawRequest(t, base, "HTTP/1.1")
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		next <- struct{}{}
		b, err := io.ReadAll(resp.Body)
		if err != nil || string(b) != "data: one\n\n" {
			t.Fatalf("%q %v", b, err)
		}
		c.Close()
	}
}

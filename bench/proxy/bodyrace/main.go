// Command bodyrace is a minimal reproduction of the net/http race that cut
// 0.1-0.7% of the streams through Go's own ReverseProxy
// (bench/proxy/plainproxy) under valgrind, and about one in 200,000 without
// it (golang/go#40747; the server side is golang/go#15527):
//
//  1. A client POSTs a body with a Content-Length, over HTTP/1.1, to an
//     httputil.ReverseProxy on an http.Server.
//  2. The Transport flushes the request headers, then copies the body to the
//     upstream's socket (straight to the socket: bufio.Writer hands a copy
//     to the connection's ReadFrom once its buffer is empty).
//  3. The upstream has the whole body and starts its answer: headers, then
//     a stream of events.
//  4. ReverseProxy writes the answer's headers to the client. On that first
//     write the HTTP/1.1 server reads what is left of the client's body (nothing)
//     and closes it ((*chunkWriter).writeHeader).
//  5. The Transport's write loop, having copied ContentLength bytes, reads the
//     body once more to see that it ends (transferWriter.writeBody). If it
//     runs only now, that read fails with "http: invalid Read on closed
//     Body", Request.write fails, and the write loop closes the upstream
//     connection while the answer is streaming through it.
//  6. ReverseProxy logs "read error during body copy: use of closed network
//     connection" and aborts the client's connection: the client sees
//     "unexpected EOF" with part of the stream, or none of it.
//
// Step 5 comes after step 4 only when the write loop's goroutine is not run
// for a while after its write to the socket: rare on an idle machine, common
// under valgrind, which runs one thread at a time. -late holds the write
// loop's read after the body's last byte for that long (a reader around the
// outgoing body, the outermost one, so that it is the Transport's own read
// that waits), which makes the race happen on every request; -late 0
// leaves scheduling alone.
//
// -fix limit sends the body through a reader that ends at ContentLength,
// so that the Transport's read after the body never reaches the client's
// body (what bench/proxy/plainproxy does); -fix duplex calls
// http.ResponseController.EnableFullDuplex, so that the server leaves the
// client's body alone when the answer starts (the remedy golang/go#15527
// added in Go 1.21; the body is still closed when the handler returns, so a
// write loop later still than that loses its connection, though not a
// stream).
//
//	go run ./proxy/bodyrace [-n 200] [-late 20ms] [-fix none|limit|duplex]
//
// It prints how many streams were cut and how many upstream connections the
// Transport opened, and exits 1 if any stream was cut.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"time"
)

func main() {
	n := flag.Int("n", 200, "streams, one after another")
	late := flag.Duration("late", 20*time.Millisecond, "how long the Transport's read after the body's last byte is held (0: not at all)")
	fix := flag.String("fix", "none", "none, limit or duplex")
	flag.Parse()
	cut, dials, logged := run(*n, *late, *fix)
	fmt.Printf("%s: %d of %d streams cut, %d upstream connections opened, ReverseProxy logged %d body-copy errors (late %v, fix %s)\n",
		runtime.Version(), cut, *n, dials, logged, *late, *fix)
	if cut > 0 {
		os.Exit(1)
	}
}

// run proxies n streams and returns how many were cut, how many upstream
// connections were opened and how many copy errors ReverseProxy logged.
func run(n int, late time.Duration, fix string) (cut int, dials int64, logged int64) {
	// The upstream: reads the request, then streams 5 events 10 ms apart.
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 5 {
			fmt.Fprintf(w, "data: %d\n\n", i)
			w.(http.Flusher).Flush()
			time.Sleep(10 * time.Millisecond)
		}
		_, _ = io.WriteString(w, "data: [DONE]\n\n")
	}))
	defer upstream.Close()
	u, _ := url.Parse(upstream.URL)

	var opened atomic.Int64
	t := http.DefaultTransport.(*http.Transport).Clone()
	dial := t.DialContext
	t.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		opened.Add(1)
		return dial(ctx, network, addr)
	}
	var errs atomic.Int64
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			if fix == "limit" && r.Out.ContentLength > 0 {
				r.Out.Body = io.NopCloser(io.LimitReader(r.Out.Body, r.Out.ContentLength))
			}
			if late > 0 && r.Out.ContentLength > 0 {
				r.Out.Body = &lateReader{rc: r.Out.Body, left: r.Out.ContentLength, late: late}
			}
		},
		Transport: t,
		ErrorLog:  log.New(countWriter{&errs}, "", 0),
	}
	var h http.Handler = rp
	if fix == "duplex" {
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_ = http.NewResponseController(w).EnableFullDuplex()
			rp.ServeHTTP(w, r)
		})
	}
	proxy := httptest.NewServer(h) // HTTP/1.1
	defer proxy.Close()

	client := proxy.Client()
	body := []byte(`{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
	for range n {
		resp, err := client.Post(proxy.URL+"/v1/chat/completions", "application/json", bytes.NewReader(body))
		if err != nil {
			cut++
			continue
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !strings.HasSuffix(string(b), "data: [DONE]\n\n") {
			cut++
		}
	}
	return cut, opened.Load(), errs.Load()
}

// lateReader holds the first Read after the body's last byte for late: what
// the Transport's write loop does when it is not scheduled for that long.
type lateReader struct {
	rc   io.ReadCloser
	left int64
	late time.Duration
}

func (l *lateReader) Read(p []byte) (int, error) {
	if l.left == 0 {
		time.Sleep(l.late)
		l.left = -1
	}
	n, err := l.rc.Read(p)
	if l.left > 0 {
		l.left -= int64(n)
	}
	return n, err
}

func (l *lateReader) Close() error { return l.rc.Close() }

// countWriter counts ReverseProxy's log lines about a broken body copy.
type countWriter struct{ n *atomic.Int64 }

func (c countWriter) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte("read error during body copy")) {
		c.n.Add(1)
	}
	return len(p), nil
}

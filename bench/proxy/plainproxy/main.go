// Command plainproxy is Go's own httputil.ReverseProxy with no retries, set
// up as the llmretry proxy sets up its own (upstream keep-alive pool,
// pooled 4 KiB copy buffers, HTTP/1.1 and h2c from clients): the baseline
// that shows what llmretry's proxy adds, in CPU (bench/proxy) and in
// memory per open stream (bench/streams).
//
// One line differs from a textbook ReverseProxy: a request body of known
// length goes upstream through a reader that stops at that length, so that
// net/http's Transport never reads the client's body again after sending
// it. Without it, net/http cuts a proxied stream now and then (0.1-0.7% of
// them under valgrind, about one in 200,000 in bench/proxy/cpu.sh): see
// bench/proxy/bodyrace and BENCHMARKS.md, "Why Go's ReverseProxy cut
// streams".
//
//	plainproxy LISTEN UPSTREAM
package main

import (
	"io"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"sync"
)

var pool = sync.Pool{New: func() any { return new([4 << 10]byte) }}

type buffers struct{}

func (buffers) Get() []byte  { return pool.Get().(*[4 << 10]byte)[:] }
func (buffers) Put(b []byte) { pool.Put((*[4 << 10]byte)(b)) }

func main() {
	if len(os.Args) != 3 {
		log.Fatal("usage: plainproxy LISTEN UPSTREAM")
	}
	u, err := url.Parse(os.Args[2])
	if err != nil {
		log.Fatal(err)
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns, t.MaxIdleConnsPerHost = 0, 1024
	t.DisableCompression = true
	srv := &http.Server{Addr: os.Args[1], Handler: newProxy(u, t), Protocols: new(http.Protocols)}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	log.Fatal(srv.ListenAndServe())
}

// newProxy is the ReverseProxy to upstream u through t.
func newProxy(u *url.URL, t http.RoundTripper) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			r.Out.Host = u.Host
			// net/http's Transport, having sent ContentLength bytes, reads
			// the body once more to see that it ends; if the upstream has
			// answered by then, the HTTP/1.1 server has already closed the
			// client's body (on the first write of the reply), that read
			// fails, and the Transport closes the upstream connection under
			// the reply it is streaming (golang/go#40747). A reader that
			// ends at the length answers that read itself.
			if r.Out.ContentLength > 0 {
				r.Out.Body = io.NopCloser(io.LimitReader(r.Out.Body, r.Out.ContentLength))
			}
		},
		Transport:  t,
		BufferPool: buffers{},
	}
}

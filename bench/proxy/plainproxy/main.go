// Command plainproxy is Go's own httputil.ReverseProxy with no retries, set
// up as the llmretry proxy sets up its own (upstream keep-alive pool,
// pooled 4 KiB copy buffers, HTTP/1.1 and h2c from clients): the baseline
// that shows what llmretry's proxy adds, in CPU (bench/proxy) and in
// memory per open stream (bench/streams).
//
//	plainproxy LISTEN UPSTREAM
package main

import (
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
	rp := &httputil.ReverseProxy{
		Rewrite:    func(r *httputil.ProxyRequest) { r.SetURL(u); r.Out.Host = u.Host },
		Transport:  t,
		BufferPool: buffers{},
	}
	srv := &http.Server{Addr: os.Args[1], Handler: rp, Protocols: new(http.Protocols)}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	log.Fatal(srv.ListenAndServe())
}

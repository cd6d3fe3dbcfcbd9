// Command plainproxy is Go's own httputil.ReverseProxy with no retries, set
// up as the llmretry proxy sets up its own (upstream keep-alive pool,
// pooled copy buffers): the baseline that shows what llmretry's proxy adds.
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

var pool = sync.Pool{New: func() any { return new([32 << 10]byte) }}

type buffers struct{}

func (buffers) Get() []byte  { return pool.Get().(*[32 << 10]byte)[:] }
func (buffers) Put(b []byte) { pool.Put((*[32 << 10]byte)(b)) }

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
	log.Fatal(http.ListenAndServe(os.Args[1], rp))
}

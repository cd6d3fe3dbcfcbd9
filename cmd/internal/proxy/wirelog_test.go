package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// wireLog is a mock upstream that keeps, for each request, everything it
// received: the request line, every header, the body, and after it how
// the body came (chunked) and its trailers.
type wireLog struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []string
}

func newWireLog(t *testing.T, answer http.HandlerFunc) *wireLog {
	t.Helper()
	wl := &wireLog{}
	wl.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b strings.Builder
		b.WriteString(r.Method + " " + r.RequestURI + " " + r.Proto + "\n")
		_ = r.Header.Write(&b)
		body, _ := io.ReadAll(r.Body)
		b.Write(body)
		if len(r.TransferEncoding) > 0 {
			b.WriteString("\n[transfer-encoding: " + strings.Join(r.TransferEncoding, ", ") + "]")
		}
		if len(r.Trailer) > 0 {
			b.WriteString("\n[trailers]\n")
			_ = r.Trailer.Write(&b)
		}
		wl.mu.Lock()
		wl.reqs = append(wl.reqs, b.String())
		wl.mu.Unlock()
		if answer != nil {
			answer(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"x"}`)
	}))
	t.Cleanup(wl.Close)
	return wl
}

func (wl *wireLog) seen() []string {
	wl.mu.Lock()
	defer wl.mu.Unlock()
	return append([]string(nil), wl.reqs...)
}

// rawDo sends a request as written (request line and headers, then body)
// on a connection of its own, so that no client library tidies it, and
// reads the answer.
func rawDo(t *testing.T, base, head, body string) (*http.Response, string) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if body != "" {
		head += "Content-Length: " + strconv.Itoa(len(body)) + "\r\n"
	}
	if _, err := io.WriteString(conn, head+"Connection: close\r\n\r\n"+body); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

// keyedRoute is a config whose one route holds a key, with clients or
// without, and whatever else extra adds at the top level.
func keyedRoute(upstream, clients, extra string) string {
	return clients + extra + `
routes:
  - prefix: /openai
    targets:
      - name: up
        base_url: ` + upstream + `/v1
        keys: [{id: k, env: KEY}]
`
}

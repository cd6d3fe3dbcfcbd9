package proxy

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// readRawToEnd reads a chunked body's raw bytes up to and including the
// empty line that ends the last chunk's trailers.
func readRawToEnd(t *testing.T, br *bufio.Reader) string {
	t.Helper()
	var b strings.Builder
	last := false
	for {
		line, err := br.ReadString('\n')
		b.WriteString(line)
		if err != nil {
			t.Fatalf("%q %v", b.String(), err)
		}
		switch {
		case line == "0\r\n":
			last = true
		case last && line == "\r\n":
			return b.String()
		}
	}
}

// A trailer the upstream sends once reaches the client once. Here the whole
// upstream reply (one event, then the trailer) is in before the proxy writes
// the header, so res.Trailer has its value when ReverseProxy copies it into
// the client's header after the (shortened) body; goOn copies it again.
func TestATrailerKnownBeforeTheReplyGoesOnAloneIsSentOnce(t *testing.T) {
	for _, c := range []struct{ name, announce, key string }{
		{"announced", "X-Done", "X-Done"},
		{"unannounced", "", http.TrailerPrefix + "X-Done"},
	} {
		t.Run(c.name, func(t *testing.T) {
			up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				w.Header().Set("Content-Type", "text/event-stream")
				if c.announce != "" {
					w.Header().Set("Trailer", c.announce)
				}
				_, _ = io.WriteString(w, "data: one\n\n")
				w.(http.Flusher).Flush()
				w.Header().Set(c.key, "yes")
			})
			base, _, _ := start(t, up, takeEvery)
			conn, br := rawRequest(t, base, "HTTP/1.1")
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := http.ReadResponse(br, nil); err != nil {
				t.Fatal(err)
			}
			raw := readRawToEnd(t, br)
			if n := strings.Count(raw, "X-Done: yes\r\n"); n != 1 {
				t.Fatalf("the trailer is sent %d times: %q", n, raw)
			}
		})
	}
}

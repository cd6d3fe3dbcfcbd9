package h1

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// Whatever an upstream sends, the client returns a response or an error,
// never panics, and ends once the upstream closes.
func FuzzUpstreamReply(f *testing.F) {
	for _, seed := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Trailer: 1\r\n\r\n",
		"HTTP/1.1 103 Early Hints\r\nLink: <a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
		"HTTP/1.1 101 Switching Protocols\r\n\r\n",
		"HTTP/1.0 200 OK\r\n\r\nuntil close",
		"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n",
		"garbage",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, reply string) {
		d := &pipeDialer{serve: func(c net.Conn, br *bufio.Reader) {
			if _, ok := readRequest(br); !ok {
				return
			}
			_, _ = io.WriteString(c, reply)
		}}
		tr := &Transport{Fallback: noFallback{t}, DialContext: d.dial, MaxResponseHeaderBytes: 4 << 10}
		defer tr.CloseIdleConnections()
		req, _ := http.NewRequest(http.MethodPost, "http://model/v1/chat/completions", strings.NewReader("{}"))
		resp, err := tr.RoundTrip(req)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	})
}

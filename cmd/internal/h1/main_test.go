package h1

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"
)

// Nothing this client starts may outlive a test: it starts no goroutine of
// its own, and a timer's callback only closes connections.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// noFallback fails a test that sends anything to the fallback.
type noFallback struct{ t *testing.T }

func (f noFallback) RoundTrip(r *http.Request) (*http.Response, error) {
	f.t.Errorf("%s %s went to the fallback", r.Method, r.URL)
	return nil, io.EOF
}

func newTransport(t *testing.T) *Transport {
	tr := &Transport{Fallback: noFallback{t}}
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

// get sends a GET and returns the whole body.
func get(t *testing.T, tr http.RoundTripper, url string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// rawServer answers each connection with serve, on a real TCP listener, and
// counts the connections.
type rawServer struct {
	ln    net.Listener
	conns atomic.Int64
	done  chan struct{}
}

func newRawServer(t *testing.T, serve func(c net.Conn, br *bufio.Reader)) *rawServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &rawServer{ln: ln, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.conns.Add(1)
			go func() {
				defer c.Close()
				serve(c, bufio.NewReader(c))
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-s.done })
	return s
}

func (s *rawServer) URL() string { return "http://" + s.ln.Addr().String() }

// readRequest reads one request and its body; false once the client closed
// the connection.
func readRequest(br *bufio.Reader) (*http.Request, bool) {
	req, err := http.ReadRequest(br)
	if err != nil {
		return nil, false
	}
	_, _ = io.Copy(io.Discard, req.Body)
	return req, true
}

// pipeDialer connects the transport to serve over net.Pipe: in a synctest
// bubble, both ends then block durably and the clock is the bubble's.
type pipeDialer struct {
	serve  func(c net.Conn, br *bufio.Reader)
	dialed atomic.Int64
	closed atomic.Int64 // connections whose client end was closed
}

func (d *pipeDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	client, server := net.Pipe()
	d.dialed.Add(1)
	go func() {
		defer server.Close()
		d.serve(server, bufio.NewReader(server))
		d.closed.Add(1)
	}()
	return client, nil
}

// serveOK answers every request on the connection with "ok" until the
// client closes it.
func serveOK(c net.Conn, br *bufio.Reader) {
	for {
		if _, ok := readRequest(br); !ok {
			return
		}
		if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); err != nil {
			return
		}
	}
}

func mustContain(t *testing.T, err error, want string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("error %v, want one saying %q", err, want)
	}
}

package h1

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// An upstream that takes the request and never answers is bounded by
// ResponseHeaderTimeout (minutes, for models that think before their first
// byte), and the error is a timeout, which retry policies know.
func TestUpstreamThatNeverAnswersTimesOutAfterResponseHeaderTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := &pipeDialer{serve: func(c net.Conn, br *bufio.Reader) {
			readRequest(br)
			io.Copy(io.Discard, br) // silent until the client gives up
		}}
		tr := &Transport{Fallback: noFallback{t}, DialContext: d.dial, ResponseHeaderTimeout: 10 * time.Minute}
		start := time.Now()
		req, _ := http.NewRequest(http.MethodPost, "http://thinking-model/v1/chat/completions", strings.NewReader("{}"))
		_, err := tr.RoundTrip(req)
		if waited := time.Since(start); waited != 10*time.Minute {
			t.Fatalf("gave up after %v, want 10m", waited)
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("error %v is not a timeout", err)
		}
		mustContain(t, err, "timeout awaiting upstream response headers")
		synctest.Wait()
		if d.closed.Load() != 1 {
			t.Fatal("the connection was left open")
		}
	})
}

// A header block past MaxResponseHeaderBytes is refused with the reason, and
// no more of it is read than the bound.
func TestOversizedResponseHeadersAreRefusedWithTheReason(t *testing.T) {
	srv := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
		readRequest(br)
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nX-Huge: %s\r\n\r\n", strings.Repeat("a", 10<<20))
	})
	tr := newTransport(t)
	tr.MaxResponseHeaderBytes = 64 << 10
	req, _ := http.NewRequest(http.MethodGet, srv.URL(), nil)
	_, err := tr.RoundTrip(req)
	mustContain(t, err, "upstream response headers exceeded 65536 bytes")
}

// 1xx responses before the final one are read past, shown to a trace that
// asks (ReverseProxy passes them to its client that way), and the final
// response is the one returned.
func TestInterimResponsesAreShownToTheTraceAndSkipped(t *testing.T) {
	srv := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
		readRequest(br)
		io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"+
			"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
	})
	tr := newTransport(t)
	var seen []string
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		seen = append(seen, fmt.Sprint(code, " ", h.Get("Link")))
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, srv.URL(), nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "ok" {
		t.Fatalf("got %d %q", resp.StatusCode, b)
	}
	if len(seen) != 1 || seen[0] != "103 </style.css>; rel=preload" {
		t.Fatalf("trace saw %q", seen)
	}
}

// Only the fallback asks for upgrades; a 101 here is not an answer.
func TestUnaskedSwitchingProtocolsIsAnError(t *testing.T) {
	srv := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
		readRequest(br)
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
	})
	req, _ := http.NewRequest(http.MethodGet, srv.URL(), nil)
	_, err := newTransport(t).RoundTrip(req)
	mustContain(t, err, "switched protocols though no upgrade was asked for")
}

// Closing a stream before its end closes the connection at once: reading on
// to the end, as ReadResponse's own body would, could take forever.
func TestClosingAStreamEarlyClosesItsConnectionRatherThanReadingOn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := &pipeDialer{serve: func(c net.Conn, br *bufio.Reader) {
			readRequest(br)
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
			io.WriteString(c, "9\r\ndata: 1\n\n\r\n")
			io.Copy(io.Discard, br) // the stream goes on, until the client leaves
		}}
		tr := &Transport{Fallback: noFallback{t}, DialContext: d.dial}
		req, _ := http.NewRequest(http.MethodPost, "http://model/v1/chat/completions", strings.NewReader("{}"))
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		line, _ := bufio.NewReader(resp.Body).ReadString('\n')
		if line != "data: 1\n" {
			t.Fatalf("first line %q", line)
		}
		resp.Body.Close()
		synctest.Wait()
		if d.closed.Load() != 1 {
			t.Fatal("the stream's connection is still open after Close")
		}
		// And the next request does not get it.
		req, _ = http.NewRequest(http.MethodGet, "http://model/v1/models", nil)
		resp, err = tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if d.dialed.Load() != 2 {
			t.Fatalf("%d connections dialled, want 2", d.dialed.Load())
		}
	})
}

// The request's context ending unblocks whatever waits on the upstream:
// the response headers, or a body read in the middle of a stream. The
// error is the context's, which retry policies do not retry.
func TestCancelUnblocksTheWaitForHeadersAndAStreamRead(t *testing.T) {
	for _, during := range []string{"headers", "body"} {
		t.Run(during, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				d := &pipeDialer{serve: func(c net.Conn, br *bufio.Reader) {
					readRequest(br)
					if during == "body" {
						io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
					}
					io.Copy(io.Discard, br)
				}}
				tr := &Transport{Fallback: noFallback{t}, DialContext: d.dial}
				ctx, cancel := context.WithCancel(context.Background())
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://model/v1/chat/completions", strings.NewReader("{}"))
				errc := make(chan error, 1)
				go func() {
					resp, err := tr.RoundTrip(req)
					if err == nil {
						_, err = resp.Body.Read(make([]byte, 64))
						resp.Body.Close()
					}
					errc <- err
				}()
				synctest.Wait() // blocked on the upstream
				select {
				case err := <-errc:
					t.Fatalf("returned before the cancel: %v", err)
				default:
				}
				cancel()
				if err := <-errc; !errors.Is(err, context.Canceled) {
					t.Fatalf("error %v, want context.Canceled", err)
				}
				synctest.Wait()
				if d.closed.Load() != 1 {
					t.Fatal("the connection was left open")
				}
			})
		})
	}
}

// A body that fails to read fails the request with its own words, and the
// connection, holding half a request, is closed.
func TestRequestBodyThatFailsClosesTheConnection(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := &pipeDialer{serve: func(c net.Conn, br *bufio.Reader) { io.Copy(io.Discard, br) }}
		tr := &Transport{Fallback: noFallback{t}, DialContext: d.dial}
		broken := errors.New("disk gone")
		req, _ := http.NewRequest(http.MethodPost, "http://model/v1/chat/completions", io.MultiReader(strings.NewReader("{"), errReader{broken}))
		req.ContentLength = 100
		_, err := tr.RoundTrip(req)
		// net/http's Request.Write does not wrap the body's error for
		// errors.Is, but its words come through.
		mustContain(t, err, "writing the request: disk gone")
		synctest.Wait()
		if d.closed.Load() != 1 {
			t.Fatal("the connection was left open")
		}
	})
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// An upstream may refuse a body it will not read (413) and close before the
// body is all sent. Its answer is what the caller gets, not the write's
// broken pipe.
func TestEarlyAnswerToABodyTheUpstreamWillNotReadIsReturned(t *testing.T) {
	srv := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large")
		// Read a little more, then stop: the rest of the body stays unread.
		io.CopyN(io.Discard, br, 1<<20)
	})
	// One 64 MiB body for the 20 requests: made anew for each, under the
	// race detector (and its shadow memory), it was most of the test's 11 s.
	big := bytes.Repeat([]byte("x"), 64<<20)
	for range 20 {
		req, _ := http.NewRequest(http.MethodPost, srv.URL(), bytes.NewReader(big))
		resp, err := newTransport(t).RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge || string(b) != "too large" {
			t.Fatalf("got %d %q", resp.StatusCode, b)
		}
	}
}

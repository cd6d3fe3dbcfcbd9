package llmretry

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// stalledBodies is a base that answers every attempt with code and a body
// that never sends a byte; it keeps each body's writer, whose Write fails
// once the Transport has closed the body.
func stalledBodies(code int, writers chan<- *io.PipeWriter) roundTripFunc {
	return func(r *http.Request) (*http.Response, error) {
		pr, pw := io.Pipe()
		writers <- pw
		h := http.Header{"Content-Type": {"application/json"}}
		return &http.Response{StatusCode: code, Header: h, Body: pr, Request: r}, nil
	}
}

// A 503 whose headers came and whose body then stalled held RoundTrip until
// the caller's context ended: forever, for a caller with no deadline. The
// peek for provider rules now gives up after errorBodyWithin, the decision
// falls back to the status, and the stalled connection is closed, not
// drained.
func TestSynctest_StalledErrorBodyPeekIsBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		writers := make(chan *io.PipeWriter, 3)
		tr := NewTransport(stalledBodies(503, writers), WithRand(fixedRand(0.5)))
		req, _ := http.NewRequest(http.MethodPost, "http://api.test/v1/chat/completions", strings.NewReader("{}"))
		start := time.Now()
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		// Three peeks of 5 s, and backoffs of 500 ms and 1 s between them.
		if d, want := time.Since(start), 3*errorBodyWithin+1500*time.Millisecond; d != want {
			t.Fatalf("returned after %v, want %v", d, want)
		}
		if resp.StatusCode != 503 || len(writers) != 3 {
			t.Fatalf("status %d after %d attempts", resp.StatusCode, len(writers))
		}
		for i := range 2 {
			if _, err := (<-writers).Write([]byte("x")); err == nil {
				t.Fatalf("attempt %d: the stalled body was left open", i+1)
			}
		}
		resp.Body.Close()
		if _, err := (<-writers).Write([]byte("x")); err == nil {
			t.Fatal("closing the last response did not close its body")
		}
	})
}

// The drain of a discarded response is bounded too: with provider rules off
// nothing peeks, and a stalled body used to hold the drain.
func TestSynctest_StalledDrainIsBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		writers := make(chan *io.PipeWriter, 3)
		tr := NewTransport(stalledBodies(503, writers), WithRand(fixedRand(0.5)), WithoutProviderRules())
		req, _ := http.NewRequest(http.MethodGet, "http://api.test/v1/models", nil)
		start := time.Now()
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if d, want := time.Since(start), 2*drainWithin+1500*time.Millisecond; d != want {
			t.Fatalf("returned after %v, want %v", d, want)
		}
		for i := range 2 {
			if _, err := (<-writers).Write([]byte("x")); err == nil {
				t.Fatalf("attempt %d: the drained body was left open", i+1)
			}
		}
	})
}

// The stream hold ran on time.NewTimer whatever Clock was injected, so a
// test could not drive it. It runs on the Clock now: on llmretrytest's, it
// passes only when the test moves the time. (In a synctest bubble, a hold
// that ignored the Clock would deadlock AwaitLimits and fail at once.)
func TestSynctest_StreamHoldRunsOnTheInjectedClock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		clk := newFakeClock()
		writers := make(chan *io.PipeWriter, 1)
		tr := NewTransport(pipeBase(t, writers), WithClock(clk))
		go func() {
			w := <-writers
			_, _ = io.WriteString(w, ": keep-alive\n\n")
		}()
		done := make(chan *http.Response)
		go func() {
			req, _ := http.NewRequest(http.MethodGet, "http://api.test/", nil)
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Error(err)
			}
			done <- resp
		}()
		clk.AwaitLimits(1)
		synctest.Wait()
		select {
		case <-done:
			t.Fatal("handed over before the hold passed on the clock")
		default:
		}
		clk.Advance(defaultFirstEventHold)
		resp := <-done
		defer resp.Body.Close()
		line, _ := bufio.NewReader(resp.Body).ReadString('\n')
		if line != ": keep-alive\n" {
			t.Fatalf("got %q", line)
		}
	})
}

// The idle timeout runs on the injected Clock too.
func TestSynctest_IdleTimeoutRunsOnTheInjectedClock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		clk := newFakeClock()
		writers := make(chan *io.PipeWriter, 1)
		tr := NewTransport(pipeBase(t, writers), WithClock(clk), WithIdleTimeout(time.Minute))
		go func() {
			w := <-writers
			_, _ = io.WriteString(w, "data: one\n\n")
		}()
		req, _ := http.NewRequest(http.MethodGet, "http://api.test/", nil)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if _, err := io.ReadFull(resp.Body, make([]byte, len("data: one\n\n"))); err != nil {
			t.Fatal(err)
		}
		readErr := make(chan error)
		go func() {
			_, err := resp.Body.Read(make([]byte, 8))
			readErr <- err
		}()
		synctest.Wait() // the Read is waiting
		clk.Advance(time.Minute - time.Nanosecond)
		synctest.Wait()
		select {
		case err := <-readErr:
			t.Fatalf("the read ended before the idle timeout: %v", err)
		default:
		}
		clk.Advance(time.Nanosecond)
		var ie *IdleTimeoutError
		if err := <-readErr; !errors.As(err, &ie) {
			t.Fatalf("got %v, want an idle timeout", err)
		}
	})
}

// A held body returned its held bytes with a nil error after Close. It
// fails now, as net/http's own bodies do.
func TestReadAfterCloseFails(t *testing.T) {
	srv := newScripted(t, sse("data: {\"delta\":\"hi\"}\n\n"))
	_, c := testTransport(t, newFakeClock())
	resp, err := c.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	n, err := resp.Body.Read(make([]byte, 64))
	if n != 0 || !errors.Is(err, http.ErrBodyReadAfterClose) {
		t.Fatalf("read after close: %d bytes, %v", n, err)
	}
}

// A stream that starts with a UTF-8 byte-order mark: the first event is
// still found (here an error worth retrying), and the caller still gets the
// mark, as the server sent it.
func TestByteOrderMarkBeforeFirstEvent(t *testing.T) {
	const bom = "\xef\xbb\xbf"
	srv := newScripted(t,
		sse(bom+"data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n", "data: {\"late\":1}\n\n"),
		sse(bom+"data: {\"delta\":\"hi\"}\n\n"))
	_, c := testTransport(t, newFakeClock())
	resp, err := c.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, resp); srv.Hits() != 2 || got != bom+"data: {\"delta\":\"hi\"}\n\n" {
		t.Fatalf("hits %d, body %q", srv.Hits(), got)
	}
}

// A 101 Switching Protocols (a WebSocket: OpenAI Realtime, Gemini Live)
// keeps its io.ReadWriteCloser body under WithIdleTimeout; wrapped, it lost
// Write and the upgrade failed.
func TestUpgradeBodyStaysWritable(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		_ = brw.Flush()
		line, _ := brw.ReadString('\n') // echo one line
		_, _ = brw.WriteString("echo " + line)
		_ = brw.Flush()
	}))
	defer srv.Close()
	tr, _ := testTransport(t, newFakeClock(), WithIdleTimeout(time.Minute))
	req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if resp.StatusCode != http.StatusSwitchingProtocols || !ok {
		t.Fatalf("status %d, body %T", resp.StatusCode, resp.Body)
	}
	defer rwc.Close()
	if _, err := io.WriteString(rwc, "ping\n"); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(rwc).ReadString('\n')
	if line != "echo ping\n" || (err != nil && !errors.Is(err, net.ErrClosed)) {
		t.Fatalf("got %q %v", line, err)
	}
}

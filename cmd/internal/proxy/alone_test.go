package proxy

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"
)

// readExactly reads len(want) bytes from r and fails the test if they are
// not want.
func readExactly(t *testing.T, r io.Reader, want string) {
	t.Helper()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(r, got); err != nil || string(got) != want {
		t.Fatalf("read %q %v, want %q", got, err, want)
	}
}

// The frames that tell a stream's copy is running: by its handler, in
// ReverseProxy, or alone.
const (
	handlerFrame = "httputil.(*ReverseProxy).ServeHTTP"
	aloneFrame   = "(*streamBody).goOn"
)

// noEarlierStream waits until no stream of an earlier test is still being
// copied, so that the goroutines a test reads next are its own.
func noEarlierStream(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s := goroutineStacks(); strings.Contains(s, handlerFrame) || strings.Contains(s, aloneFrame); s = goroutineStacks() {
		if time.Now().After(deadline) {
			t.Fatalf("a stream of an earlier test is still being copied:\n%s", s)
		}
		runtime.Gosched()
	}
}

// within waits for ch, and fails the test if it has not come in 10 s.
func within(t *testing.T, ch <-chan struct{}, why string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second): // a bound on a failure, not a wait
		t.Fatal(why)
	}
}

// send sends on ch, and fails the test if no one takes it in 10 s.
func send(t *testing.T, ch chan<- struct{}, why string) {
	t.Helper()
	select {
	case ch <- struct{}{}:
	case <-time.After(10 * time.Second): // a bound on a failure, not a wait
		t.Fatal(why)
	}
}

// A stream on a taken connection goes on without its handler: once its
// header is written, the handler (net/http's connection loop, ReverseProxy,
// the proxy's own frames: about 5 KiB of stack, so 8 KiB held) returns, and
// a goroutine of its own copies the rest, with the same bytes and the same
// end. Before, the handler stayed in ReverseProxy's copy for the whole
// stream (BENCHMARKS.md, sixteenth session: 27 KiB a stream against 20.6
// with the streams opened over 8 s).
func TestATakenStreamGoesOnWithoutItsHandler(t *testing.T) {
	noEarlierStream(t)
	next := make(chan struct{})
	base, _, _ := start(t, sseUpstream(next, "data: one\n\n", "data: two\n\n", "data: [DONE]\n\n"), takeEvery)
	t.Cleanup(func() { close(next) })
	c, br := rawRequest(t, base, "HTTP/1.1")
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v %v", resp, err)
	}
	readExactly(t, br, "b\r\ndata: one\n\n\r\n")
	// The goroutine that copies the rest is started as the handler's last
	// act, so by the time the first event has arrived the handler has left
	// ReverseProxy.
	s := goroutineStacks()
	if strings.Contains(s, handlerFrame) || strings.Count(s, aloneFrame) != 1 {
		t.Fatalf("the stream is still copied by its handler:\n%s", s)
	}
	// Its upstream request was not cancelled when the handler returned.
	send(t, next, "the upstream left before its second event: its request was cancelled")
	readExactly(t, br, "b\r\ndata: two\n\n\r\n")
	send(t, next, "the upstream left before its last event")
	readExactly(t, br, "e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
	// And the connection serves the client's next request.
	sendOn(t, c, "/v1/models", "HTTP/1.1", "")
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("the next request on the connection: %v %v", resp, err)
	}
}

// The trailers of a stream that went on alone arrive as ReverseProxy sends
// them: an announced one under its name, one the upstream did not announce
// under http.TrailerPrefix (which the client reads as a trailer too), and
// once: the upstream's whole reply is in before the proxy writes the header,
// so ReverseProxy copies the trailer's value itself, and goOn used to copy
// it again.
func TestTrailersOfAStreamThatGoesOnAloneArrive(t *testing.T) {
	for _, c := range []struct {
		name, announce, key string // key: the header the upstream sets after the body
	}{
		{"announced", "X-Done", "X-Done"},
		// Unannounced: the upstream's net/http sends it under its own
		// name, and the proxy's client hands it over as a trailer it did
		// not expect.
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
			var raw strings.Builder // what came on the wire, to count the trailer's lines
			resp, err := http.ReadResponse(bufio.NewReader(io.TeeReader(br, &raw)), nil)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil || string(body) != "data: one\n\n" || resp.Trailer.Get("X-Done") != "yes" {
				t.Fatalf("body %q %v, trailer %v", body, err, resp.Trailer)
			}
			if n := strings.Count(raw.String(), "X-Done: yes\r\n"); n != 1 {
				t.Fatalf("the trailer is sent %d times: %q", n, raw.String())
			}
		})
	}
}

// A request's body stays counted against MaxHeld while its stream goes on
// alone (a continuation may send it again), and is given back when the
// stream ends, not when the handler returns.
func TestAStreamThatGoesOnAloneHoldsItsBodyUntilItEnds(t *testing.T) {
	noEarlierStream(t)
	next := make(chan struct{})
	base, p, _ := start(t, sseUpstream(next, "data: one\n\n", "data: [DONE]\n\n"), takeEvery)
	t.Cleanup(func() { close(next) })
	c, br := rawRequest(t, base, "HTTP/1.1")
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := http.ReadResponse(br, nil); err != nil {
		t.Fatal(err)
	}
	readExactly(t, br, "b\r\ndata: one\n\n\r\n")
	if strings.Count(goroutineStacks(), aloneFrame) != 1 {
		t.Fatal("the stream did not go on alone")
	}
	if n := p.held.Load(); n != int64(len(`{"stream":true}`)) {
		t.Fatalf("%d bytes held while the stream goes on, want the body's %d", n, len(`{"stream":true}`))
	}
	send(t, next, "the upstream left before its last event")
	readExactly(t, br, "e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
	// Given back before the reply's end is written.
	if n := p.held.Load(); n != 0 {
		t.Fatalf("%d bytes still held after the stream ended", n)
	}
}

// A stream taken only when its header came (it arrived while no more
// requests were open than streams are kept, so its context still follows
// net/http's) keeps its handler to the end: going on alone, the handler's
// return would cancel it mid-stream.
func TestAStreamTakenWithoutDetachingKeepsItsHandler(t *testing.T) {
	arrivedA := make(chan struct{})
	releaseA := make(chan struct{})
	nextA := make(chan struct{})
	doneB := make(chan struct{})
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		if !strings.Contains(string(b), `"a"`) {
			_, _ = io.WriteString(w, "data: b\n\n")
			w.(http.Flusher).Flush()
			select {
			case <-doneB:
			case <-r.Context().Done():
			}
			return
		}
		close(arrivedA)
		<-releaseA
		_, _ = io.WriteString(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-nextA:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "data: two\n\n")
	})
	noEarlierStream(t)
	base, _, _, taken := startTaking(t, up, func(c *Config) { c.KeptStreams = 1 })
	t.Cleanup(func() { close(nextA); close(doneB) })
	ca, bra := rawSend(t, base, "/v1/chat/completions", "HTTP/1.1", `{"stream":true,"n":"a"}`)
	_ = ca.SetDeadline(time.Now().Add(10 * time.Second))
	within(t, arrivedA, "A never reached the upstream")
	// B comes while A is open: beyond the one kept request, it is
	// detached and taken early, and counted as the one kept stream.
	cb, brb := rawSend(t, base, "/v1/chat/completions", "HTTP/1.1", `{"stream":true,"n":"b"}`)
	_ = cb.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := http.ReadResponse(brb, nil); err != nil {
		t.Fatal(err)
	}
	readExactly(t, brb, "9\r\ndata: b\n\n\r\n")
	if n := takenOpen(taken); n != 1 {
		t.Fatalf("%d streams on taken connections after B's first event, want B's alone", n)
	}
	// A's header comes now, B still open: two streams, one kept, so A is
	// taken, though it was not detached.
	close(releaseA)
	respA, err := http.ReadResponse(bra, nil)
	if err != nil || len(respA.TransferEncoding) != 1 {
		t.Fatalf("A: %v %v", respA, err)
	}
	readExactly(t, bra, "b\r\ndata: one\n\n\r\n")
	if n := takenOpen(taken); n != 2 {
		t.Fatalf("%d streams on taken connections, want A's and B's: A was not taken", n)
	}
	// B goes on alone; A's handler copies it still.
	if s := goroutineStacks(); strings.Count(s, handlerFrame) != 1 || strings.Count(s, aloneFrame) != 1 {
		t.Fatalf("want A copied by its handler and B alone:\n%s", s)
	}
	send(t, nextA, "A's upstream left before its second event: its request was cancelled")
	readExactly(t, bra, "b\r\ndata: two\n\n\r\n0\r\n\r\n")
}

// A panic in the upstream's body while a stream goes on alone (a Base
// transport's code, in its Read or in its Close once the body is read) is
// recovered as net/http recovers a handler's: logged with its stack, the
// client's connection closed with the reply cut. Off the handler's
// goroutine nothing else recovers it: before, one in Close ended the
// process, and one in Read was logged without its stack.
func TestAPanicInTheUpstreamBodyOfAStreamThatGoesOnAloneIsRecovered(t *testing.T) {
	for _, tc := range []struct {
		name    string
		inClose bool
		logged  string // "": the Logger's handler panics too
	}{
		{"in Read", false, "panic copying a stream"},
		{"in Close", true, "panic closing a stream's upstream body"},
		{"in Read, with a Logger that panics", false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			noEarlierStream(t)
			base, p, logs, taken := startTaking(t, http.NotFoundHandler(), takeEvery, func(c *Config) {
				c.Base = roundTripFunc(func(r *http.Request) (*http.Response, error) {
					return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"text/event-stream"}},
						Body: &panicBody{event: "data: one\n\n", inClose: tc.inClose}, ContentLength: -1, Request: r}, nil
				})
				if tc.logged == "" {
					c.Logger = slog.New(panicHandler{slog.DiscardHandler})
				}
			})
			c, br := rawRequest(t, base, "HTTP/1.1")
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			if b, err := io.ReadAll(resp.Body); string(b) != "data: one\n\n" || err != io.ErrUnexpectedEOF {
				t.Fatalf("the client read %q %v, want the first event and the reply cut", b, err)
			}
			if l := logs.String(); tc.logged != "" && (!strings.Contains(l, tc.logged) || !strings.Contains(l, aloneFrame)) {
				t.Fatalf("want %q logged with the stack of the goroutine that copied the stream; the log:\n%s", tc.logged, l)
			}
			// What the stream held is given back before its connection
			// closes: its body's share of MaxHeld, its place among the
			// taken streams.
			if n, open := p.held.Load(), takenOpen(taken); n != 0 || open != 0 {
				t.Fatalf("after the panic %d bytes are still held and %d streams still open on taken connections", n, open)
			}
		})
	}
}

// panicBody is an upstream body that gives one event and then panics: in
// its next Read, or, inClose, in its Close once it has been read to its end.
type panicBody struct {
	event       string
	read, ended bool
	inClose     bool
}

func (b *panicBody) Read(p []byte) (int, error) {
	switch {
	case !b.read:
		b.read = true
		return copy(p, b.event), nil
	case !b.inClose:
		panic("the upstream body's Read")
	}
	b.ended = true
	return 0, io.EOF
}

func (b *panicBody) Close() error {
	if b.inClose && b.ended {
		panic("the upstream body's Close")
	}
	return nil
}

// panicHandler is a slog handler whose every error record panics.
type panicHandler struct{ slog.Handler }

func (panicHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h panicHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError {
		panic("the Logger's handler")
	}
	return h.Handler.Handle(ctx, r)
}

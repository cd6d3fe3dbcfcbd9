package llmretry

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

const (
	anthropicOverloaded = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"
	anthropicInvalid    = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",\"message\":\"bad\"}}\n\n"
	openRouterError     = ": OPENROUTER PROCESSING\n\n: OPENROUTER PROCESSING\n\ndata: {\"error\":{\"code\":502,\"message\":\"Provider returned error\"}}\n\n"
	okStream            = "event: message_start\ndata: {\"type\":\"message_start\"}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"Hello\"}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
	openAIStream        = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: [DONE]\n\n"
)

// sse answers 200 text/event-stream, writing each part and flushing it.
func sse(parts ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
		w.WriteHeader(200)
		for _, p := range parts {
			_, _ = io.WriteString(w, p)
			w.(http.Flusher).Flush()
		}
	}
}

// sseThenCut sends parts, then cuts the connection mid-stream.
func sseThenCut(parts ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		for _, p := range parts {
			_, _ = io.WriteString(w, p)
		}
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}
}

// bytewise splits s into one-byte writes.
func bytewise(s string) []string {
	out := make([]string, len(s))
	for i := range s {
		out[i] = s[i : i+1]
	}
	return out
}

func TestFirstEventCommitPoint(t *testing.T) {
	huge := "data: {\"error\":{\"type\":\"overloaded_error\",\"pad\":\"" + strings.Repeat("p", 70<<10) + "\"}}\n\n"
	cases := []struct {
		name     string
		first    http.HandlerFunc
		hits     int
		wantBody string
	}{
		{"anthropic overloaded first event retried", sse(anthropicOverloaded), 2, okStream},
		{"openrouter error after comments retried", sse(openRouterError), 2, okStream},
		{"event split into one-byte writes", sse(bytewise(anthropicOverloaded)...), 2, okStream},
		{"crlf line endings", sse(strings.ReplaceAll(anthropicOverloaded, "\n", "\r\n")), 2, okStream},
		{"cut mid-event retried", sseThenCut("event: message_start\ndata: {\"ty"), 2, okStream},
		{"empty stream retried", sse(), 2, okStream},
		{"non-retryable error event handed over", sse(anthropicInvalid), 1, anthropicInvalid},
		{"good stream handed over whole", sse(openAIStream), 1, openAIStream},
		{"comments passed on untouched", sse(": ping\n\n", openAIStream), 1, ": ping\n\n" + openAIStream},
		{"first event above the bound handed over", sse(huge), 1, huge},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := newScripted(t, tc.first, sse(okStream))
			_, c := testTransport(t, newFakeClock())
			resp, err := c.Do(post(t, srv.URL, "x"))
			if err != nil {
				t.Fatal(err)
			}
			if got := readAll(t, resp); got != tc.wantBody || srv.Hits() != tc.hits {
				t.Fatalf("hits %d body %.200q; want %d %.200q", srv.Hits(), got, tc.hits, tc.wantBody)
			}
		})
	}
}

func TestFirstEventPeekOff(t *testing.T) {
	srv := newScripted(t, sse(anthropicOverloaded), sse(okStream))
	_, c := testTransport(t, newFakeClock(), WithoutFirstEventPeek())
	resp, err := c.Do(post(t, srv.URL, "x"))
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, resp); got != anthropicOverloaded || srv.Hits() != 1 {
		t.Fatalf("hits %d body %q", srv.Hits(), got)
	}
}

// The first event reaches the caller before the server sends the second:
// nothing is buffered beyond the commit point.
func TestStreamIsLive(t *testing.T) {
	release := make(chan struct{})
	srv := newScripted(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		<-release
		_, _ = io.WriteString(w, "data: two\n\n")
	})
	_, c := testTransport(t, newFakeClock())
	got := make(chan string, 1)
	go func() {
		resp, err := c.Do(post(t, srv.URL, "x"))
		if err != nil {
			got <- err.Error()
			return
		}
		defer resp.Body.Close()
		br := bufio.NewReader(resp.Body)
		line, _ := br.ReadString('\n')
		got <- line
		_, _ = io.Copy(io.Discard, br)
	}()
	select {
	case line := <-got:
		if line != "data: one\n" {
			t.Fatalf("first line %q", line)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the first event was held back until the server sent more")
	}
	close(release)
}

// pipeBase answers every request with a stream whose writer the test holds.
func pipeBase(t *testing.T, writers chan<- *io.PipeWriter) roundTripFunc {
	return func(r *http.Request) (*http.Response, error) {
		pr, pw := io.Pipe()
		writers <- pw
		return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"text/event-stream"}}, Body: pr, Request: r}, nil
	}
}

func TestSynctest_FirstEventTimeoutRetries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		writers := make(chan *io.PipeWriter, 4)
		tr := NewTransport(pipeBase(t, writers), WithFirstEventTimeout(10*time.Second), WithRand(fixedRand(0.5)))
		var calls atomic.Int32
		go func() {
			// Attempt 1: only keep-alive comments, which do not count.
			w1 := <-writers
			calls.Add(1)
			_, _ = io.WriteString(w1, ": ping\n\n")
			// Attempt 2: a real event.
			w2 := <-writers
			calls.Add(1)
			_, _ = io.WriteString(w2, "data: hi\n\n")
			_ = w2.Close()
		}()
		start := time.Now()
		req, _ := http.NewRequest("GET", "http://api.test/", nil)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		// 10 s of silence, then the 500 ms backoff.
		if string(body) != "data: hi\n\n" || calls.Load() != 2 || time.Since(start) != 10500*time.Millisecond {
			t.Fatalf("body %q calls %d after %v", body, calls.Load(), time.Since(start))
		}
	})
}

func TestSynctest_FirstEventTimeoutExhausted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		writers := make(chan *io.PipeWriter, 4)
		tr := NewTransport(pipeBase(t, writers), WithFirstEventTimeout(time.Second), WithPolicy(Policy{MaxAttempts: 2}))
		req, _ := http.NewRequest("GET", "http://api.test/", nil)
		_, err := tr.RoundTrip(req)
		var e *Error
		var fe *FirstEventTimeoutError
		if !errors.As(err, &e) || e.Reason != ReasonExhausted || e.Attempts != 2 || !errors.As(err, &fe) || fe.After != time.Second {
			t.Fatalf("got %v", err)
		}
	})
}

func TestSynctest_IdleTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		writers := make(chan *io.PipeWriter, 1)
		tr := NewTransport(pipeBase(t, writers), WithIdleTimeout(2*time.Minute))
		writeErr := make(chan error, 1)
		stalled := make(chan struct{})
		go func() {
			w := <-writers
			_, _ = io.WriteString(w, "data: one\n\n")
			_, _ = io.WriteString(w, "data: two\n\n")
			<-stalled
			// The idle timeout closed the body, so this write fails.
			_, err := io.WriteString(w, "data: late\n\n")
			writeErr <- err
		}()
		ctx := context.Background()
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://api.test/", nil)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		br := bufio.NewReader(resp.Body)
		var got strings.Builder
		start := time.Now()
		var readErr error
		for {
			line, err := br.ReadString('\n')
			got.WriteString(line)
			if err != nil {
				readErr = err
				break
			}
		}
		var ie *IdleTimeoutError
		if !errors.As(readErr, &ie) || ie.After != 2*time.Minute || time.Since(start) != 2*time.Minute {
			t.Fatalf("err %v after %v", readErr, time.Since(start))
		}
		if got.String() != "data: one\n\ndata: two\n\n" {
			t.Fatalf("got %q", got.String())
		}
		close(stalled)
		if err := <-writeErr; err == nil {
			t.Fatal("the stalled stream was not closed")
		}
	})
}

// A stream with no first event within the hold is handed over as it is,
// keep-alive comments first, and later bytes follow, none lost or doubled.
func TestSynctest_FirstEventHoldHandsOver(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		writers := make(chan *io.PipeWriter, 2)
		var calls atomic.Int32
		base := pipeBase(t, writers)
		counting := roundTripFunc(func(r *http.Request) (*http.Response, error) {
			calls.Add(1)
			return base(r)
		})
		tr := NewTransport(counting, WithFirstEventHold(3*time.Second))
		go func() {
			w := <-writers
			_, _ = io.WriteString(w, ": OPENROUTER PROCESSING\n\n")
			time.Sleep(5 * time.Second) // the model thinks past the hold
			_, _ = io.WriteString(w, "data: late\n\n")
			_, _ = io.WriteString(w, "data: [DONE]\n\n")
			_ = w.Close()
		}()
		start := time.Now()
		req, _ := http.NewRequest("GET", "http://api.test/", nil)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d != 3*time.Second {
			t.Fatalf("handed over after %v, want the 3s hold", d)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(body) != ": OPENROUTER PROCESSING\n\ndata: late\n\ndata: [DONE]\n\n" || calls.Load() != 1 {
			t.Fatalf("body %q err %v calls %d", body, err, calls.Load())
		}
	})
}

// With the hold off, the peek waits for the first event however long.
func TestSynctest_FirstEventHoldOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		writers := make(chan *io.PipeWriter, 1)
		tr := NewTransport(pipeBase(t, writers), WithFirstEventHold(0))
		go func() {
			w := <-writers
			time.Sleep(time.Hour)
			_, _ = io.WriteString(w, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\"}}\n\n")
			_ = w.Close()
		}()
		start := time.Now()
		req, _ := http.NewRequest("GET", "http://api.test/", nil)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if d := time.Since(start); d != time.Hour {
			t.Fatalf("returned after %v", d)
		}
	})
}

func TestLateReaderKeepsEveryByte(t *testing.T) {
	pr, pw := io.Pipe()
	r := &lateReader{rc: pr}
	expired := make(chan struct{})
	close(expired)
	buf := make([]byte, 8)
	if _, _, late := r.readBefore(buf, expired); !late {
		t.Fatal("want late")
	}
	go func() {
		_, _ = io.WriteString(pw, "0123456789abcdef") // longer than the pending read's buffer
		_ = pw.CloseWithError(errors.New("boom"))
	}()
	got, err := io.ReadAll(r)
	if string(got) != "0123456789abcdef" || err == nil || err.Error() != "boom" {
		t.Fatalf("got %q %v", got, err)
	}
}

// Cancelling while the first event is awaited ends the request with the
// context's error, not a retry.
func TestSynctest_CancelWhileAwaitingFirstEvent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int32
		base := roundTripFunc(func(r *http.Request) (*http.Response, error) {
			calls.Add(1)
			pr, pw := io.Pipe()
			go func() {
				<-r.Context().Done()
				_ = pw.CloseWithError(r.Context().Err())
			}()
			return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"text/event-stream"}}, Body: pr, Request: r}, nil
		})
		tr := NewTransport(base)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://api.test/", nil)
		_, err := tr.RoundTrip(req)
		var e *Error
		if !errors.As(err, &e) || e.Reason != ReasonContextDone || !errors.Is(err, context.DeadlineExceeded) || calls.Load() != 1 {
			t.Fatalf("got %v after %d calls", err, calls.Load())
		}
	})
}

// Regression: a HEAD to a stream endpoint has no body to peek at; it was
// taken for a stream that ended before its first event, and retried.
func TestHeadOnStreamEndpointNotRetried(t *testing.T) {
	srv := newScripted(t, sse(openAIStream))
	_, c := testTransport(t, newFakeClock())
	req, _ := http.NewRequest(http.MethodHead, srv.URL, nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || srv.Hits() != 1 {
		t.Fatalf("status %d hits %d", resp.StatusCode, srv.Hits())
	}
}

// Observers learn the kind of each failure from a field, not the message.
func TestRetryEventFailureKinds(t *testing.T) {
	cases := []struct {
		name  string
		first http.HandlerFunc
		want  Failure
	}{
		{"status", status(503, ""), FailureStatus},
		{"transport", reset, FailureTransport},
		{"first event", sse(anthropicOverloaded), FailureFirstEvent},
		{"stream cut before first event", sseThenCut("data: {\"par"), FailureStream},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := newScripted(t, tc.first, sse(okStream))
			var got []Failure
			_, c := testTransport(t, newFakeClock(), WithOnRetry(func(e RetryEvent) { got = append(got, e.Failure) }))
			resp, err := c.Do(post(t, srv.URL, "x"))
			if err != nil {
				t.Fatal(err)
			}
			readAll(t, resp)
			if len(got) != 1 || got[0] != tc.want {
				t.Fatalf("failures %v, want [%v]", got, tc.want)
			}
		})
	}
}

// A stream that runs for minutes must not keep the first-event peek's
// buffer: the first event's data pointed into it, and kept it alive for the
// whole stream (4 KiB per open stream in the proxy).
func TestPeekBufferIsLetGoOnceTheHeldBytesAreRead(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: {\"first\":true}\n\n")
		w.(http.Flusher).Flush()
		<-release
	}))
	defer srv.Close()
	defer close(release)
	_, c := testTransport(t, newFakeClock())
	resp, err := c.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	hb, ok := resp.Body.(*heldBody)
	if !ok || hb.stream.event.data == nil {
		t.Fatalf("body %T: want the held first event", resp.Body)
	}
	buf := make([]byte, 64)
	n, err := resp.Body.Read(buf)
	if err != nil || !strings.HasPrefix(string(buf[:n]), "data: ") {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	if hb.held != nil || hb.stream.event.data != nil {
		t.Fatal("the peek's buffer is still referenced after its bytes were handed over")
	}
}

// The idle watchdog times each Read from its own start: events 50 s apart
// never trip a 1-minute timeout, however long the stream runs, and a stall
// trips it exactly a minute after the Read began waiting.
func TestSynctest_IdleWatchdogTimesEachRead(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		writers := make(chan *io.PipeWriter, 1)
		tr := NewTransport(pipeBase(t, writers), WithIdleTimeout(time.Minute))
		go func() {
			w := <-writers
			for range 8 {
				_, _ = io.WriteString(w, "data: tick\n\n")
				time.Sleep(50 * time.Second)
			}
			// then nothing: a stall
		}()
		req, _ := http.NewRequest(http.MethodGet, "http://api.test/", nil)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		start := time.Now()
		br := bufio.NewReader(resp.Body)
		events := 0
		var readErr error
		for {
			line, err := br.ReadString('\n')
			if strings.HasPrefix(line, "data: ") {
				events++
			}
			if err != nil {
				readErr = err
				break
			}
		}
		var ie *IdleTimeoutError
		// The 8th event comes at 350 s; the Read after it waits from then.
		if events != 8 || !errors.As(readErr, &ie) || time.Since(start) != 350*time.Second+time.Minute {
			t.Fatalf("%d events, then %v after %v", events, readErr, time.Since(start))
		}
	})
}

// The media type is read by hand (no mime.ParseMediaType, which allocates
// and goes deep): what counts as an event stream stays what it was.
func TestEventStreamMediaTypeIsReadByHand(t *testing.T) {
	for ct, want := range map[string]bool{
		"text/event-stream":                     true,
		"TEXT/Event-Stream":                     true,
		"text/event-stream; charset=utf-8":      true,
		"text/event-stream ;charset=utf-8":      true,
		" text/event-stream":                    true,
		"text/event-streams":                    false,
		"text/event-stream-x":                   false,
		"text/event":                            false,
		"application/json":                      false,
		"":                                      false,
		"application/json; x=text/event-stream": false,
	} {
		resp := &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {ct}}}
		if got := isEventStream(resp); got != want {
			t.Errorf("%q: %v, want %v", ct, got, want)
		}
	}
	if isEventStream(&http.Response{StatusCode: 500, Header: http.Header{"Content-Type": {"text/event-stream"}}}) {
		t.Error("a 500 is not an event stream to hold")
	}
}

// notifyingBody is a body that says when it has bytes (readableNotifier),
// as the proxy's HTTP/1.1 client's do; reads counts the Reads made of it.
type notifyingBody struct {
	io.Reader
	mu      sync.Mutex
	ready   func() // the notification asked for, until it fires or stops
	already bool   // bytes are there already: notify at once
	// fireOnStop: the bytes come as stop is called, too late to stop.
	fireOnStop bool
	reads      atomic.Int32
}

func (b *notifyingBody) Read(p []byte) (int, error) {
	b.reads.Add(1)
	return b.Reader.Read(p)
}

func (b *notifyingBody) Close() error { return nil }

func (b *notifyingBody) NotifyReadable(f func()) (stop func() bool, ok bool) {
	if b.already {
		f()
		return func() bool { return false }, true
	}
	b.mu.Lock()
	b.ready = f
	b.mu.Unlock()
	return func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.fireOnStop && b.ready != nil {
			go b.ready()
			b.ready = nil
			return false
		}
		stopped := b.ready != nil
		b.ready = nil
		return stopped
	}, true
}

// A body that can say when its bytes come is waited on without a read:
// a hold whose limit passes first leaves nothing read and nothing pending
// (so no goroutine sat blocked in a Read meanwhile, a stack for each
// stream waiting on its first event), and every byte is read after; one
// whose bytes are there is read at once.
func TestLateReaderWaitsForANotifyingBodyWithoutReading(t *testing.T) {
	body := &notifyingBody{Reader: strings.NewReader("data: one\n\n")}
	r := &lateReader{rc: body}
	expired := make(chan struct{})
	close(expired)
	if n, err, late := r.readBefore(make([]byte, 64), expired); !late || n != 0 || err != nil {
		t.Fatalf("readBefore = %d, %v, late %v; want late", n, err, late)
	}
	if got := body.reads.Load(); got != 0 || r.pending != nil {
		t.Fatalf("%d reads made, pending %v: the wait read the body", got, r.pending != nil)
	}
	if got, err := io.ReadAll(r); string(got) != "data: one\n\n" || err != nil {
		t.Fatalf("after the limit: %q %v", got, err)
	}

	// The bytes came as the limit passed (stop lost the race): they are
	// read, now or late, and none is lost.
	body = &notifyingBody{Reader: strings.NewReader("data: late\n\n"), fireOnStop: true}
	r = &lateReader{rc: body}
	first := make([]byte, 64)
	n, err, late := r.readBefore(first, expired)
	if late {
		n = 0 // the pending read's bytes come from Read
	}
	rest, rerr := io.ReadAll(r)
	if err != nil || rerr != nil || string(first[:n])+string(rest) != "data: late\n\n" {
		t.Fatalf("the bytes that came as the limit passed: %q then %q (%v, %v, late %v)", first[:n], rest, err, rerr, late)
	}

	body = &notifyingBody{Reader: strings.NewReader("data: two\n\n"), already: true}
	r = &lateReader{rc: body}
	buf := make([]byte, 64)
	n, err, late = r.readBefore(buf, make(chan struct{}))
	if late || err != nil || string(buf[:n]) != "data: two\n\n" {
		t.Fatalf("readBefore = %q, %v, late %v", buf[:n], err, late)
	}
}

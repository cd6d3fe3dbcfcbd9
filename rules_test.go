package llmretry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestStatusRule(t *testing.T) {
	cases := []struct {
		code  int
		retry bool
	}{
		{408, true}, {425, true}, {429, true}, {500, true}, {502, true}, {503, true}, {504, true}, {529, true},
		{400, false}, {401, false}, {403, false}, {404, false}, {409, false}, {422, false}, {501, false},
		{505, false}, {418, false},
		// Cloudflare's 520-524 and other 5xx outside the classic list.
		{520, true}, {521, true}, {522, true}, {523, true}, {524, true}, {507, true}, {599, true},
		{506, false}, {508, false}, {510, false}, {511, false},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprint(tc.code), func(t *testing.T) {
			srv := newScripted(t, status(tc.code, "first"), status(200, "ok"))
			_, c := testTransport(t, newFakeClock())
			resp, err := c.Do(post(t, srv.URL, "x"))
			if err != nil {
				t.Fatal(err)
			}
			body := readAll(t, resp)
			wantHits, wantCode, wantBody := 1, tc.code, "first"
			if tc.retry {
				wantHits, wantCode, wantBody = 2, 200, "ok"
			}
			if srv.Hits() != wantHits || resp.StatusCode != wantCode || body != wantBody {
				t.Fatalf("hits %d status %d body %q; want %d %d %q", srv.Hits(), resp.StatusCode, body, wantHits, wantCode, wantBody)
			}
		})
	}
}

func TestShouldRetryHeaderOverridesStatus(t *testing.T) {
	cases := []struct {
		code     int
		header   string
		wantHits int
	}{
		{400, "true", 2},
		{409, "TRUE", 2},
		{503, "false", 1},
		{529, " False ", 1},
		{503, "maybe", 2}, // not a verdict: the status rule stands
		{200, "true", 1},  // success is never retried
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%d_%s", tc.code, strings.TrimSpace(tc.header)), func(t *testing.T) {
			srv := newScripted(t, status(tc.code, "", "X-Should-Retry", tc.header), status(200, "ok"))
			_, c := testTransport(t, newFakeClock())
			resp, err := c.Do(post(t, srv.URL, "x"))
			if err != nil {
				t.Fatal(err)
			}
			readAll(t, resp)
			if srv.Hits() != tc.wantHits {
				t.Fatalf("hits %d, want %d", srv.Hits(), tc.wantHits)
			}
		})
	}
}

// A Retry-After outside digits[.digits] is garbage, whatever ParseFloat
// would make of it: "1e999" once parsed to +Inf and stopped retrying as a
// huge wait, where the README promised backoff.
func TestRetryAfterOutsideDigitsIsGarbage(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	for _, v := range []string{"1e999", "1e3", "1E2", "+5", "-0", "5.", "1.2.3", ".", "Infinity", "1_0"} {
		if v == "5." {
			continue // "5." is digits and a dot: accepted below
		}
		for _, h := range []string{"Retry-After", "Retry-After-Ms", "X-Ms-Retry-After-Ms"} {
			if d, src, ok := HeaderWait(http.Header{h: {v}}, now); ok {
				t.Errorf("%s: %q = %v from %v, want garbage", h, v, d, src)
			}
		}
	}
	if d, ok := ParseRetryAfter("5.", now); !ok || d != 5*time.Second {
		t.Errorf(`"5." = %v %v, want 5s`, d, ok)
	}
}

// HTTP-dates written with Go's time.RFC1123 ("UTC") or RFC1123Z ("+0000")
// are honoured when the zone is UTC; they used to be ignored, so the retry
// came sooner than asked. Other zones are still refused: an HTTP-date is in
// GMT, and time.Parse gives an unknown abbreviation a zero offset.
func TestHTTPDateInUTCFormsHonoured(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	at := now.Add(45 * time.Second)
	for _, v := range []string{at.Format(time.RFC1123), at.Format(time.RFC1123Z), "Fri, 27 Nov 2026 12:00:45 UTC", "Fri, 27 Nov 2026 12:00:45 +0000"} {
		if d, ok := ParseRetryAfter(v, now); !ok || d != 45*time.Second {
			t.Errorf("%q = %v %v, want 45s", v, d, ok)
		}
	}
	for _, v := range []string{"Fri, 27 Nov 2026 12:00:45 PST", "Fri, 27 Nov 2026 12:00:45 -0800", "Fri, 27 Nov 2026 12:00:45 +0100"} {
		if d, ok := ParseRetryAfter(v, now); ok {
			t.Errorf("%q = %v, want refused", v, d)
		}
	}
}

func TestHeaderWait(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		name string
		h    http.Header
		want time.Duration
		src  WaitSource
		ok   bool
	}{
		{"ms", http.Header{"Retry-After-Ms": {"1500"}}, 1500 * time.Millisecond, SourceRetryAfterMs, true},
		{"ms fractional", http.Header{"Retry-After-Ms": {"12.5"}}, 12500 * time.Microsecond, SourceRetryAfterMs, true},
		{"x-ms", http.Header{"X-Ms-Retry-After-Ms": {"250"}}, 250 * time.Millisecond, SourceMsRetryAfterMs, true},
		{"ms wins over seconds", http.Header{"Retry-After-Ms": {"100"}, "Retry-After": {"9"}}, 100 * time.Millisecond, SourceRetryAfterMs, true},
		{"bad ms falls back", http.Header{"Retry-After-Ms": {"soon"}, "Retry-After": {"2"}}, 2 * time.Second, SourceRetryAfter, true},
		{"seconds", http.Header{"Retry-After": {"7"}}, 7 * time.Second, SourceRetryAfter, true},
		{"seconds fractional", http.Header{"Retry-After": {"1.25"}}, 1250 * time.Millisecond, SourceRetryAfter, true},
		{"seconds spaced", http.Header{"Retry-After": {"  4 "}}, 4 * time.Second, SourceRetryAfter, true},
		{"rfc1123", http.Header{"Retry-After": {"Fri, 27 Nov 2026 12:00:30 GMT"}}, 30 * time.Second, SourceRetryAfter, true},
		{"rfc850", http.Header{"Retry-After": {"Friday, 27-Nov-26 12:01:00 GMT"}}, time.Minute, SourceRetryAfter, true},
		{"asctime", http.Header{"Retry-After": {"Fri Nov 27 12:00:05 2026"}}, 5 * time.Second, SourceRetryAfter, true},
		{"past date", http.Header{"Retry-After": {"Fri, 27 Nov 2026 11:00:00 GMT"}}, 0, SourceBackoff, false},
		{"negative", http.Header{"Retry-After": {"-3"}}, 0, SourceBackoff, false},
		{"negative ms", http.Header{"Retry-After-Ms": {"-3"}}, 0, SourceBackoff, false},
		{"zero", http.Header{"Retry-After": {"0"}}, 0, SourceBackoff, false},
		{"NaN", http.Header{"Retry-After": {"NaN"}}, 0, SourceBackoff, false},
		{"nan ms", http.Header{"Retry-After-Ms": {"nan"}}, 0, SourceBackoff, false},
		{"Inf", http.Header{"Retry-After": {"Inf"}}, 0, SourceBackoff, false},
		{"+Inf ms", http.Header{"Retry-After-Ms": {"+Inf"}}, 0, SourceBackoff, false},
		{"hex", http.Header{"Retry-After": {"0x10"}}, 0, SourceBackoff, false},
		{"garbage", http.Header{"Retry-After": {"later"}}, 0, SourceBackoff, false},
		{"empty", http.Header{"Retry-After": {""}}, 0, SourceBackoff, false},
		{"huge saturates", http.Header{"Retry-After": {"999999999999"}}, maxWait, SourceRetryAfter, true},
		{"beyond int64", http.Header{"Retry-After": {"99999999999999999999"}}, maxWait, SourceRetryAfter, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, src, ok := HeaderWait(tc.h, now)
			if got != tc.want || src != tc.src || ok != tc.ok {
				t.Fatalf("got %v %v %v, want %v %v %v", got, src, ok, tc.want, tc.src, tc.ok)
			}
		})
	}
}

func TestBackoffExact(t *testing.T) {
	p := DefaultPolicy()
	cases := []struct {
		retry int
		r     float64
		want  time.Duration
	}{
		{1, 0, 375 * time.Millisecond},
		{1, 0.5, 500 * time.Millisecond},
		{2, 0, 750 * time.Millisecond},
		{2, 0.5, time.Second},
		{3, 0.5, 2 * time.Second},
		{4, 0.5, 4 * time.Second},
		{5, 0, 6 * time.Second},           // 8 s capped, -25%
		{5, 0.5, 7 * time.Second},         // spread clipped at MaxDelay: [6 s, 8 s]
		{5, 0.999999999, 8 * time.Second}, // never above MaxDelay
		{1_000_000, 0.5, 7 * time.Second}, // no overflow
		{0, 0.5, 500 * time.Millisecond},  // nonsense retry numbers act as the first
		{-5, 0.5, 500 * time.Millisecond},
	}
	for _, tc := range cases {
		got := p.Backoff(tc.retry, tc.r)
		if d := got - tc.want; d < -time.Microsecond || d > time.Microsecond {
			t.Errorf("Backoff(%d, %v) = %v, want %v", tc.retry, tc.r, got, tc.want)
		}
	}
}

func TestBackoffNeverOverflows(t *testing.T) {
	p := Policy{BaseDelay: 1, MaxDelay: time.Duration(1<<63 - 1)}
	prev := time.Duration(0)
	for retry := 1; retry < 200; retry++ {
		d := p.Backoff(retry, 0)
		if d < 0 || d < prev {
			t.Fatalf("retry %d: %v after %v", retry, d, prev)
		}
		prev = d
	}
}

func TestServerWaitIsAFloor(t *testing.T) {
	for _, r := range []float64{0, 0.5, 0.999} {
		srv := newScripted(t, status(429, "", "Retry-After", "2"), status(200, "ok"))
		clk := newFakeClock()
		_, c := testTransport(t, clk, WithRand(fixedRand(r)))
		resp, err := c.Do(post(t, srv.URL, "x"))
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
		w := clk.Waits()
		if len(w) != 1 || w[0] < 2*time.Second || w[0] > 2*time.Second+200*time.Millisecond {
			t.Fatalf("r=%v: waits %v, want one in [2s, 2.2s]", r, w)
		}
	}
}

func TestRetryAfterAboveCapStopsWithoutSleeping(t *testing.T) {
	srv := newScripted(t, status(429, "slow down", "Retry-After", "3600"), status(200, "ok"))
	clk := newFakeClock()
	var stops []StopEvent
	_, c := testTransport(t, clk, WithOnStop(func(e StopEvent) { stops = append(stops, e) }))
	resp, err := c.Do(post(t, srv.URL, "x"))
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 429 || readAll(t, resp) != "slow down" || srv.Hits() != 1 || len(clk.Waits()) != 0 {
		t.Fatalf("status %d hits %d waits %v", resp.StatusCode, srv.Hits(), clk.Waits())
	}
	if len(stops) != 1 || stops[0].Reason != ReasonRetryAfterTooLong || stops[0].Wait != time.Hour {
		t.Fatalf("stop events %+v", stops)
	}
}

func TestWaitPastDeadlineStopsNow(t *testing.T) {
	t.Run("response in hand", func(t *testing.T) {
		srv := newScripted(t, status(503, "busy", "Retry-After", "5"), status(200, "ok"))
		clk := newFakeClock()
		_, c := testTransport(t, clk)
		// The deadline is on the fake clock, so only the planned wait can
		// be what stops the request.
		req := post(t, srv.URL, "x").WithContext(deadlineCtx{context.Background(), clk.Now().Add(time.Second)})
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 503 || readAll(t, resp) != "busy" || srv.Hits() != 1 || len(clk.Waits()) != 0 {
			t.Fatalf("status %d hits %d waits %v", resp.StatusCode, srv.Hits(), clk.Waits())
		}
	})
	t.Run("no response", func(t *testing.T) {
		srv := newScripted(t, reset)
		clk := newFakeClock()
		_, c := testTransport(t, clk)
		req := post(t, srv.URL, "x").WithContext(deadlineCtx{context.Background(), clk.Now().Add(100 * time.Millisecond)})
		_, err := c.Do(req)
		var e *Error
		if !errors.As(err, &e) || e.Reason != ReasonDeadline || e.Attempts != 1 || e.Wait != 500*time.Millisecond {
			t.Fatalf("got %v", err)
		}
		if srv.Hits() != 1 || len(clk.Waits()) != 0 {
			t.Fatalf("hits %d waits %v", srv.Hits(), clk.Waits())
		}
	})
}

// deadlineCtx reports a deadline on the fake clock without ever expiring
// on the real one.
type deadlineCtx struct {
	context.Context
	d time.Time
}

func (c deadlineCtx) Deadline() (time.Time, bool) { return c.d, true }

func TestTransportErrorRule(t *testing.T) {
	t.Run("reset then success", func(t *testing.T) {
		srv := newScripted(t, reset, status(200, "ok"))
		_, c := testTransport(t, newFakeClock())
		resp, err := c.Do(post(t, srv.URL, "x"))
		if err != nil {
			t.Fatal(err)
		}
		if readAll(t, resp) != "ok" || srv.Hits() != 2 {
			t.Fatalf("hits %d", srv.Hits())
		}
	})
	t.Run("tls certificate", func(t *testing.T) {
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
		srv.Config.ErrorLog = log.New(io.Discard, "", 0)
		srv.StartTLS()
		defer srv.Close()
		clk := newFakeClock()
		_, c := testTransport(t, clk)
		_, err := c.Do(post(t, srv.URL, "x"))
		var e *Error
		if !errors.As(err, &e) || e.Reason != ReasonNotRetryable || e.Attempts != 1 || len(clk.Waits()) != 0 {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("bad scheme", func(t *testing.T) {
		_, c := testTransport(t, newFakeClock())
		_, err := c.Do(post(t, "ftp://127.0.0.1/x", "x"))
		var e *Error
		if !errors.As(err, &e) || e.Reason != ReasonNotRetryable || e.Attempts != 1 {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("URL without a host", func(t *testing.T) {
		clk := newFakeClock()
		_, c := testTransport(t, clk)
		_, err := c.Do(post(t, "http:///v1/chat/completions", "x"))
		var e *Error
		if !errors.As(err, &e) || e.Reason != ReasonNotRetryable || e.Attempts != 1 || len(clk.Waits()) != 0 {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("too many redirects via Do", func(t *testing.T) {
		var srv *httptest.Server
		srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, srv.URL+"/again", http.StatusFound)
		}))
		defer srv.Close()
		req, _ := http.NewRequest("GET", srv.URL, nil)
		_, err := Do(context.Background(), srv.Client(), req, Policy{BaseDelay: time.Millisecond})
		var e *Error
		if !errors.As(err, &e) || e.Reason != ReasonNotRetryable || e.Attempts != 1 {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("cancelled context", func(t *testing.T) {
		srv := newScripted(t, status(200, "ok"))
		_, c := testTransport(t, newFakeClock())
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := c.Do(post(t, srv.URL, "x").WithContext(ctx))
		var e *Error
		if !errors.As(err, &e) || e.Reason != ReasonContextDone || !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v", err)
		}
		if srv.Hits() != 0 {
			t.Fatalf("hits %d", srv.Hits())
		}
	})
}

type goAwayError struct{ ErrCode uint32 }

func (goAwayError) Error() string { return "goaway" }

// StreamError is named and shaped as golang.org/x/net/http2's.
type StreamError struct {
	StreamID uint32
	Code     uint32
}

func (StreamError) Error() string { return "stream error" }

// GoAwayError is named as golang.org/x/net/http2 names it.
type GoAwayError struct{ LastStreamID uint32 }

func (GoAwayError) Error() string { return "http2: server sent GOAWAY" }

func TestClassifyTransportErrors(t *testing.T) {
	dial := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	cases := []struct {
		name  string
		err   error
		retry bool
	}{
		{"dial refused", dial, true},
		{"wrapped dial", fmt.Errorf("post: %w", dial), true},
		{"read reset", &net.OpError{Op: "read", Err: syscall.ECONNRESET}, true},
		{"write broken pipe", &net.OpError{Op: "write", Err: syscall.EPIPE}, true},
		{"not connected", &net.OpError{Op: "read", Err: syscall.ENOTCONN}, true},
		{"eof", io.EOF, true},
		{"closed under the writer", &net.OpError{Op: "readfrom", Err: &net.OpError{Op: "write", Err: net.ErrClosed}}, true},
		{"unexpected eof", fmt.Errorf("transport: %w", io.ErrUnexpectedEOF), true},
		{"timeout", &net.OpError{Op: "read", Err: timeoutErr{}}, true},
		{"dns temporary", &net.DNSError{Err: "server misbehaving", IsTemporary: true}, true},
		{"dns not found", &net.DNSError{Err: "no such host", IsNotFound: true}, false},
		{"h2 refused stream", StreamError{StreamID: 1, Code: h2RefusedStream}, true},
		{"h2 refused stream, pointer", fmt.Errorf("rt: %w", &StreamError{StreamID: 1, Code: h2RefusedStream}), true},
		{"h2 other stream error", StreamError{StreamID: 1, Code: 2}, false},
		{"x/net goaway", fmt.Errorf("rt: %w", GoAwayError{}), true},
		{"canceled", context.Canceled, false},
		{"canceled wrapping reset", fmt.Errorf("%w: %w", context.Canceled, syscall.ECONNRESET), false},
		{"plain", errors.New("unsupported protocol scheme"), false},
		{"nil", nil, false},
		{"look-alike name", goAwayError{}, false},
	}
	for _, tc := range cases {
		if got := RetryableError(tc.err); got != tc.retry {
			t.Errorf("%s: RetryableError = %v, want %v", tc.name, got, tc.retry)
		}
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestBodyReplay(t *testing.T) {
	t.Run("GetBody replays the same bytes", func(t *testing.T) {
		srv := newScripted(t, status(503, ""), reset, status(200, "ok"))
		_, c := testTransport(t, newFakeClock())
		resp, err := c.Do(post(t, srv.URL, `{"model":"m"}`))
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
		b := srv.Bodies()
		if len(b) != 3 || b[0] != `{"model":"m"}` || b[1] != b[0] || b[2] != b[0] {
			t.Fatalf("bodies %q", b)
		}
	})
	t.Run("no GetBody: one attempt, response returned", func(t *testing.T) {
		srv := newScripted(t, status(503, "busy"), status(200, "ok"))
		_, c := testTransport(t, newFakeClock())
		req, _ := http.NewRequest("POST", srv.URL, io.NopCloser(strings.NewReader("once only")))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 503 || readAll(t, resp) != "busy" || srv.Hits() != 1 || srv.Bodies()[0] != "once only" {
			t.Fatalf("status %d hits %d bodies %q", resp.StatusCode, srv.Hits(), srv.Bodies())
		}
	})
	t.Run("no GetBody: error names the reason", func(t *testing.T) {
		srv := newScripted(t, reset, status(200, "ok"))
		_, c := testTransport(t, newFakeClock())
		req, _ := http.NewRequest("POST", srv.URL, io.NopCloser(strings.NewReader("once only")))
		_, err := c.Do(req)
		var e *Error
		if !errors.As(err, &e) || e.Reason != ReasonBodyNotReplayable || srv.Hits() != 1 {
			t.Fatalf("got %v, hits %d", err, srv.Hits())
		}
	})
	t.Run("GetBody failing is an error, not an empty body", func(t *testing.T) {
		srv := newScripted(t, status(503, ""), status(200, "ok"))
		_, c := testTransport(t, newFakeClock())
		req := post(t, srv.URL, "x")
		req.GetBody = func() (io.ReadCloser, error) { return nil, errors.New("spent") }
		_, err := c.Do(req)
		var e *Error
		if !errors.As(err, &e) || e.Reason != ReasonBodyNotReplayable || srv.Hits() != 1 {
			t.Fatalf("got %v, hits %d", err, srv.Hits())
		}
	})
}

func TestDiscardedResponsesReuseTheConnection(t *testing.T) {
	big := strings.Repeat("e", 8<<10)
	srv := httptest.NewUnstartedServer(nil)
	var mu sync.Mutex
	conns, n := 0, 0
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			mu.Lock()
			conns++
			mu.Unlock()
		}
	}
	srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n++
		k := n
		mu.Unlock()
		if k < 3 {
			w.WriteHeader(503)
			_, _ = io.WriteString(w, big)
			return
		}
		_, _ = io.WriteString(w, "ok")
	})
	srv.Start()
	defer srv.Close()
	_, c := testTransport(t, newFakeClock())
	resp, err := c.Do(post(t, srv.URL, "x"))
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	mu.Lock()
	defer mu.Unlock()
	if n != 3 || conns != 1 {
		t.Fatalf("requests %d over %d connections, want 3 over 1", n, conns)
	}
}

func TestNoCredentialInLogsOrErrors(t *testing.T) {
	secrets := map[string]string{
		"Authorization":  "Bearer sk-live-SECRET1",
		"X-Api-Key":      "sk-ant-SECRET2",
		"Api-Key":        "azure-SECRET3",
		"X-Goog-Api-Key": "AIza-SECRET4",
	}
	srv := newScripted(t, reset)
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var events []string
	_, c := testTransport(t, newFakeClock(), WithLogger(logger),
		WithOnRetry(func(e RetryEvent) { events = append(events, fmt.Sprintf("%+v", e)) }),
		WithOnStop(func(e StopEvent) { events = append(events, fmt.Sprintf("%+v", e)) }))
	req := post(t, srv.URL+"/v1beta/models?key=AIza-SECRET5", "x")
	for k, v := range secrets {
		req.Header.Set(k, v)
	}
	_, err := c.Do(req)
	if err == nil {
		t.Fatal("want an error")
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("got %T", err)
	}
	out := e.Error() + logs.String() + strings.Join(events, "\n")
	if !strings.Contains(logs.String(), "retrying") {
		t.Fatalf("logger saw nothing: %q", logs.String())
	}
	for _, s := range []string{"SECRET1", "SECRET2", "SECRET3", "SECRET4", "SECRET5"} {
		if strings.Contains(out, s) {
			t.Fatalf("%s leaked into:\n%s", s, out)
		}
	}
}

func TestInvalidRequests(t *testing.T) {
	tr := NewTransport(nil)
	cases := []struct {
		name string
		req  func() *http.Request
	}{
		{"nil request", func() *http.Request { return nil }},
		{"nil URL", func() *http.Request { return &http.Request{Method: "GET", Header: http.Header{}} }},
		{"x-api-key with CR", func() *http.Request {
			r, _ := http.NewRequest("GET", "http://127.0.0.1:1/", nil)
			r.Header["X-Api-Key"] = []string{"sk-ant-abc\r"}
			return r
		}},
		{"bad header name", func() *http.Request {
			r, _ := http.NewRequest("GET", "http://127.0.0.1:1/", nil)
			r.Header["Bad Name"] = []string{"v"}
			return r
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := tr.RoundTrip(tc.req())
			var e *Error
			if resp != nil || !errors.As(err, &e) || e.Reason != ReasonInvalidRequest || e.Attempts != 0 {
				t.Fatalf("got %v, %v", resp, err)
			}
			if strings.Contains(err.Error(), "sk-ant") {
				t.Fatalf("value leaked: %v", err)
			}
		})
	}
}

func TestCallerRequestNotModified(t *testing.T) {
	srv := newScripted(t, status(503, ""), status(200, "ok"))
	_, c := testTransport(t, newFakeClock(), WithAttemptHeader("X-Attempt"), WithIdempotencyKey("Idempotency-Key"))
	req := post(t, srv.URL, "x")
	req.Header.Set("X-Mine", "1")
	before := req.Header.Clone()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	if fmt.Sprint(req.Header) != fmt.Sprint(before) {
		t.Fatalf("caller's headers changed: %v -> %v", before, req.Header)
	}
}

func TestAttemptAndIdempotencyHeaders(t *testing.T) {
	t.Run("off by default", func(t *testing.T) {
		srv := newScripted(t, status(503, ""), status(200, "ok"))
		_, c := testTransport(t, newFakeClock())
		resp, _ := c.Do(post(t, srv.URL, "x"))
		readAll(t, resp)
		for _, h := range srv.Headers() {
			if h.Get("Idempotency-Key") != "" || h.Get("X-Attempt") != "" {
				t.Fatalf("unexpected header: %v", h)
			}
		}
	})
	t.Run("on", func(t *testing.T) {
		// Connection: close keeps the reset on a fresh connection, where
		// net/http does not retry on its own.
		srv := newScripted(t, status(503, "", "Connection", "close"), reset, status(200, "ok"))
		_, c := testTransport(t, newFakeClock(), WithAttemptHeader("X-Attempt"), WithIdempotencyKey("Idempotency-Key"))
		resp, err := c.Do(post(t, srv.URL, "x"))
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
		hs := srv.Headers()
		if len(hs) != 3 {
			t.Fatalf("hits %d", len(hs))
		}
		key := hs[0].Get("Idempotency-Key")
		if len(key) < 16 {
			t.Fatalf("key %q", key)
		}
		for i, h := range hs {
			if h.Get("X-Attempt") != fmt.Sprint(i+1) || h.Get("Idempotency-Key") != key {
				t.Fatalf("attempt %d headers %v", i+1, h)
			}
		}
		// A second logical request gets a new key.
		srv2 := newScripted(t, status(200, "ok"))
		resp, _ = c.Do(post(t, srv2.URL, "x"))
		readAll(t, resp)
		if k2 := srv2.Headers()[0].Get("Idempotency-Key"); k2 == "" || k2 == key {
			t.Fatalf("second key %q, first %q", k2, key)
		}
	})
	t.Run("caller's key kept", func(t *testing.T) {
		srv := newScripted(t, status(503, ""), status(200, "ok"))
		_, c := testTransport(t, newFakeClock(), WithIdempotencyKey("Idempotency-Key"))
		req := post(t, srv.URL, "x")
		req.Header.Set("Idempotency-Key", "mine")
		resp, _ := c.Do(req)
		readAll(t, resp)
		for _, h := range srv.Headers() {
			if h.Get("Idempotency-Key") != "mine" {
				t.Fatalf("headers %v", h)
			}
		}
	})
}

func TestDoFunctionForm(t *testing.T) {
	srv := newScripted(t, status(502, ""), status(200, "ok"))
	req, _ := http.NewRequest("POST", srv.URL, strings.NewReader("x"))
	resp, err := Do(context.Background(), srv.Client(), req, Policy{BaseDelay: time.Millisecond, MaxDelay: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if readAll(t, resp) != "ok" || srv.Hits() != 2 {
		t.Fatalf("hits %d", srv.Hits())
	}
	if _, err := Do(context.Background(), nil, nil, Policy{}); err == nil {
		t.Fatal("nil request: want an error")
	}
}

func TestErrorMessage(t *testing.T) {
	e := &Error{Method: "POST", URL: "https://api.openai.com/v1/chat/completions", Attempts: 3,
		Reason: ReasonExhausted, Err: &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}}
	want := "llmretry: POST https://api.openai.com/v1/chat/completions: gave up after 3 attempts (attempts exhausted): dial tcp: connection refused"
	if e.Error() != want {
		t.Fatalf("got  %q\nwant %q", e.Error(), want)
	}
	if !errors.Is(e, syscall.ECONNREFUSED) {
		t.Fatal("errors.Is does not reach the cause")
	}
}

func TestLogLevels(t *testing.T) {
	srv := newScripted(t, status(400, "bad"), status(503, ""))
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	_, c := testTransport(t, newFakeClock(), WithLogger(logger), WithPolicy(Policy{MaxAttempts: 1}))
	for range 2 {
		resp, err := c.Do(post(t, srv.URL, "x"))
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
	}
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "level=INFO") || !strings.Contains(lines[0], "not retryable") ||
		!strings.Contains(lines[1], "level=WARN") || !strings.Contains(lines[1], "attempts exhausted") {
		t.Fatalf("logs:\n%s", logs.String())
	}
}

package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/llmretry/llmretry"
	"github.com/llmretry/llmretry/cmd/internal/h1"
	"github.com/llmretry/llmretry/llmretrytest"
	"github.com/llmretry/llmretry/mockllm"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// start runs a proxy in front of upstream and returns its URL.
func start(t *testing.T, upstream http.Handler, mutate ...func(*Config)) (string, *Proxy, *logBuffer) {
	t.Helper()
	base, p, logs, _ := startTaking(t, upstream, mutate...)
	return base, p, logs
}

// startTaking is start, and returns too the server's record of the
// streams written on connections taken from net/http (h1stream.go).
func startTaking(t *testing.T, upstream http.Handler, mutate ...func(*Config)) (string, *Proxy, *logBuffer, *takenStreams) {
	t.Helper()
	up := httptest.NewServer(upstream)
	t.Cleanup(up.Close)
	u, _ := url.Parse(up.URL)
	logs := &logBuffer{}
	// The client the proxy makes for itself over plain HTTP, so that every
	// test here runs through it.
	base := h1.NewTransport(&http.Transport{})
	base.WatchAbove = -1 // every stream waits for its first bytes through the poll set
	t.Cleanup(base.CloseIdleConnections)
	cfg := Config{Upstream: u, Base: base, Logger: slog.New(slog.NewTextHandler(logs, nil)),
		Options: []llmretry.Option{llmretry.WithClock(llmretrytest.NewClock(time.Now()))}}
	for _, m := range mutate {
		m(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(p)
	srv.Config = NewServer(p)
	// net/http's own complaints (a superfluous WriteHeader, a panic) are
	// the proxy's log too, for the tests to read.
	srv.Config.ErrorLog = log.New(logs, "http: server: ", 0)
	srv.Listener = Listener(srv.Config, srv.Listener) // as the command serves it
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.URL, p, logs, srv.Config.BaseContext(nil).Value(takenKey{}).(*takenStreams)
}

// takenOpen counts the streams being written on taken connections.
func takenOpen(ts *takenStreams) int {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return len(ts.open)
}

// logBuffer is a log's text, written by the proxy's goroutines and read by
// the test's, under one lock.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func client(t *testing.T) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func TestPassesThroughUnchanged(t *testing.T) {
	type seen struct {
		method, path, query, body string
		header                    http.Header
	}
	got := make(chan seen, 1)
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- seen{r.Method, r.URL.Path, r.URL.RawQuery, string(b), r.Header.Clone()}
		w.Header().Set("X-Upstream", "yes")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(201)
		_, _ = io.WriteString(w, `{"reply":"hi"}`)
	})
	base, _, logs := start(t, up)
	body := `{"model":"gpt-4o","messages":[{"role":"user","content":"hé"}]}`
	req, _ := http.NewRequest("POST", base+"/v1/chat/completions?api-version=2024-02-01&x=%2F", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer sk-SECRET-VALUE")
	req.Header.Set("X-Custom", "kept")
	req.Header.Set("Connection", "X-Hop")
	req.Header.Set("X-Hop", "dropped")
	req.Header.Set("Keep-Alive", "timeout=5")
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 201 || string(b) != `{"reply":"hi"}` || resp.Header.Get("X-Upstream") != "yes" {
		t.Fatalf("response %d %q %v", resp.StatusCode, b, resp.Header)
	}
	s := <-got
	if s.method != "POST" || s.path != "/v1/chat/completions" || s.query != "api-version=2024-02-01&x=%2F" || s.body != body {
		t.Fatalf("upstream saw %+v", s)
	}
	if s.header.Get("Authorization") != "Bearer sk-SECRET-VALUE" || s.header.Get("X-Custom") != "kept" {
		t.Fatalf("headers not passed: %v", s.header)
	}
	if s.header.Get("X-Hop") != "" || s.header.Get("Keep-Alive") != "" {
		t.Fatalf("hop-by-hop headers passed: %v", s.header)
	}
	if strings.Contains(logs.String(), "SECRET") {
		t.Fatalf("credential logged: %s", logs.String())
	}
}

func TestRetriesThroughTheProxyWithoutLeakingCredentials(t *testing.T) {
	script, _ := mockllm.ParseFaults("503,reset")
	m := mockllm.New(script, 1)
	base, p, logs := start(t, m)
	req, _ := http.NewRequest("POST", base+"/v1/chat/completions?key=AIza-SECRET-Q", strings.NewReader(`{"model":"m"}`))
	req.Header.Set("Authorization", "Bearer sk-SECRET-VALUE")
	req.Header.Set("X-Api-Key", "sk-ant-SECRET-2")
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), mockllm.ReplyText) || m.Hits() != 3 {
		t.Fatalf("status %d hits %d body %q", resp.StatusCode, m.Hits(), b)
	}
	if !strings.Contains(logs.String(), "retrying") || strings.Contains(logs.String(), "SECRET") {
		t.Fatalf("logs: %s", logs.String())
	}
	metrics := scrape(t, p.Metrics())
	for _, want := range []string{`llmretry_attempts_total 3`, `llmretry_retries_total{cause="status_503"} 1`,
		`llmretry_retries_total{cause="transport_error"} 1`, `llmretry_requests_total{code="200"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Fatalf("metrics lack %q:\n%s", want, metrics)
		}
	}
}

func TestStreamsAreFlushedEventByEvent(t *testing.T) {
	release := make(chan struct{})
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "data: two\n\n")
	})
	base, _, _ := start(t, up)
	resp, err := client(t).Post(base+"/v1/chat/completions", "application/json", strings.NewReader(`{"stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	line := make(chan string, 1)
	br := bufio.NewReader(resp.Body)
	go func() {
		l, _ := br.ReadString('\n')
		line <- l
	}()
	select {
	case l := <-line:
		if l != "data: one\n" {
			t.Fatalf("first line %q", l)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the first event did not pass the proxy before the upstream sent more")
	}
	close(release)
	rest, _ := io.ReadAll(br)
	if string(rest) != "\ndata: two\n\n" {
		t.Fatalf("rest %q", rest)
	}
}

func TestClientLeavingCancelsUpstream(t *testing.T) {
	cancelled := make(chan struct{})
	arrived := make(chan struct{})
	testDone := make(chan struct{})
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// net/http notices a closed connection only once the body is read.
		_, _ = io.Copy(io.Discard, r.Body)
		close(arrived)
		select {
		case <-r.Context().Done():
			close(cancelled)
		case <-testDone:
		}
	})
	defer close(testDone)
	base, _, _ := start(t, up)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", base+"/v1/chat/completions", strings.NewReader("{}"))
	errc := make(chan error, 1)
	go func() {
		_, err := client(t).Do(req)
		errc <- err
	}()
	<-arrived
	cancel()
	select {
	case <-cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream request was not cancelled when the client left")
	}
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("client got %v", err)
	}
}

func TestBodyAboveMaxGets413WithoutContactingUpstream(t *testing.T) {
	var hits atomic.Int32
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) })
	base, _, _ := start(t, up, func(c *Config) { c.MaxBody = 1024 })
	big := strings.Repeat("x", 2048)
	// With a Content-Length.
	resp, err := client(t).Post(base+"/v1/chat/completions", "application/json", strings.NewReader(big))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 413 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	// Chunked, length unknown in advance.
	resp, err = client(t).Post(base+"/v1/chat/completions", "application/json", io.MultiReader(strings.NewReader(big)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 413 || hits.Load() != 0 {
		t.Fatalf("status %d, upstream hits %d", resp.StatusCode, hits.Load())
	}
	// At the limit it goes through.
	resp, err = client(t).Post(base+"/v1/chat/completions", "application/json", strings.NewReader(big[:1024]))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || hits.Load() != 1 {
		t.Fatalf("status %d, upstream hits %d", resp.StatusCode, hits.Load())
	}
}

func TestH2CClient(t *testing.T) {
	// The upstream echoes the body: an h2c request's body, held and sent
	// from the held copy, must arrive whole.
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.Copy(w, r.Body) })
	base, _, _ := start(t, up)
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	defer tr.CloseIdleConnections()
	const body = `{"model":"m","messages":[]}`
	resp, err := (&http.Client{Transport: tr}).Post(base+"/v1/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 || string(b) != body {
		t.Fatalf("proto %s body %q, want HTTP/2 and %q", resp.Proto, b, body)
	}
}

func TestHealthzAndMetricsOnTheAdminHandler(t *testing.T) {
	_, p, _ := start(t, http.NotFoundHandler())
	admin := httptest.NewServer(p.Admin())
	defer admin.Close()
	for path, want := range map[string]string{"/healthz": "ok\n", "/metrics": "# TYPE llmretry_attempts_total counter"} {
		resp, err := client(t).Get(admin.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), want) {
			t.Fatalf("%s: %d %q", path, resp.StatusCode, b)
		}
	}
}

// The proxy's ServeMux answered "/v1//chat/completions", "//v1/models",
// "/v1/./models", "/v1/x/../models" and "/v1/models/." with a 307 of its
// own, and kept /metrics and /healthz from the upstream. Every path now
// goes upstream byte for byte; the proxy's own endpoints are on the admin
// listener.
func TestPathsPassUnchanged(t *testing.T) {
	seen := make(chan string, 1)
	base, _, _ := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.RequestURI
		_, _ = io.WriteString(w, "{}")
	}))
	addr := strings.TrimPrefix(base, "http://")
	for _, target := range []string{"/v1//chat/completions", "//v1/models", "/v1/./models", "/v1/x/../models",
		"/v1/models/.", "/metrics", "/healthz", "/v1/models?limit=2&after=a%2Fb", "/v1/files/file%2Dabc/content"} {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.WriteString(conn, "GET "+target+" HTTP/1.1\r\nHost: "+addr+"\r\nConnection: close\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		conn.Close()
		if err != nil {
			t.Fatalf("%s: %v", target, err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: status %d, want the upstream's 200", target, resp.StatusCode)
		}
		if got := <-seen; got != target {
			t.Fatalf("sent %q, the upstream got %q", target, got)
		}
	}
}

func TestNoResponseGives502WithReason(t *testing.T) {
	base, _, _ := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _, _ := http.NewResponseController(w).Hijack()
		conn.Close()
	}))
	resp, err := client(t).Post(base+"/v1/chat/completions", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 502 || !strings.Contains(string(b), "gave up after 3 attempts") {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
}

// On shutdown new connections are refused while an in-flight stream runs
// to its end.
func TestServeDrains(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		close(started)
		<-release
		_, _ = io.WriteString(w, "data: two\n\n")
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(h)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	logs := &logBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, nil))
	go func() { done <- Serve(ctx, srv, func() error { return srv.Serve(ln) }, 30*time.Second, logger) }()

	c := client(t)
	resp, err := c.Get("http://" + ln.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	<-started
	stop()
	// The listener closes at once: new connections are refused.
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			break
		}
		conn.Close()
		if time.Now().After(deadline) {
			t.Fatal("still accepting connections after shutdown began")
		}
		time.Sleep(time.Millisecond) // polling the listener's state, which nothing signals
	}
	close(release)
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(b) != "data: one\n\ndata: two\n\n" {
		t.Fatalf("in-flight stream: %q %v", b, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// SIGTERM says that the drain began, and how it ended.
	if !strings.Contains(logs.String(), "draining: new connections refused") || !strings.Contains(logs.String(), "drain ended: every in-flight request finished") {
		t.Fatalf("drain logs:\n%s", logs.String())
	}
}

func TestConfigErrors(t *testing.T) {
	for _, raw := range []string{"", "ftp://x", "/relative"} {
		u, _ := url.Parse(raw)
		if _, err := New(Config{Upstream: u}); err == nil {
			t.Errorf("%q: want an error", raw)
		}
	}
}

// writeCounter counts the writes made on the connections it dials.
type writeCounter struct{ writes atomic.Int64 }

func (c *writeCounter) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return countingConn{conn, c}, nil
}

type countingConn struct {
	net.Conn
	c *writeCounter
}

func (c countingConn) Write(p []byte) (int, error) {
	c.c.writes.Add(1)
	return c.Conn.Write(p)
}

// TestRequestGoesUpstreamInOneWrite: httputil.ReverseProxy wraps the body
// in a type net/http does not know to be in memory, so net/http flushed the
// headers on their own and sent the body in a second syscall (a fifth of
// the proxy's syscalls on a small chat request). The held body goes in one.
func TestRequestGoesUpstreamInOneWrite(t *testing.T) {
	var counter writeCounter
	got := make(chan string, 1)
	url, _, _ := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- string(b)
	}), func(c *Config) {
		base := h1.NewTransport(&http.Transport{DialContext: counter.dial})
		t.Cleanup(base.CloseIdleConnections)
		c.Base = base
	})
	const body = `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`
	resp, err := client(t).Post(url+"/v1/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if b := <-got; b != body {
		t.Fatalf("upstream got body %q, want %q", b, body)
	}
	if n := counter.writes.Load(); n != 1 {
		t.Fatalf("request went upstream in %d writes, want 1", n)
	}
}

// TestAcceptEncodingIsTheClients: net/http's default transport asks for
// gzip on its own when the client did not, and then unzips the reply, so
// the upstream saw a header the client never sent. The proxy's own
// transport leaves compression to the client, both ways.
func TestAcceptEncodingIsTheClients(t *testing.T) {
	seen := make(chan string, 2)
	url, _, _ := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Get("Accept-Encoding")
		if r.Header.Get("Accept-Encoding") == "gzip" {
			w.Header().Set("Content-Encoding", "gzip")
		}
		_, _ = io.WriteString(w, "body as the upstream sent it")
	}), func(c *Config) { c.Base = nil })
	for _, ae := range []string{"", "gzip"} {
		req, _ := http.NewRequest("POST", url+"/v1/chat/completions", strings.NewReader(`{}`))
		if ae != "" {
			req.Header.Set("Accept-Encoding", ae)
		}
		tr := &http.Transport{DisableCompression: true}
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		tr.CloseIdleConnections()
		if got := <-seen; got != ae {
			t.Errorf("client sent Accept-Encoding %q, upstream saw %q", ae, got)
		}
		if string(b) != "body as the upstream sent it" || resp.Header.Get("Content-Encoding") != ae {
			t.Errorf("Accept-Encoding %q: reply %q with Content-Encoding %q", ae, b, resp.Header.Get("Content-Encoding"))
		}
	}
}

// Over HTTP/2 the buffer a request body arrived in stayed with the stream
// until the handler returned: 1 KiB of every open stream, for a body already
// held. The client's body is closed once held, before anything goes
// upstream.
func TestHeldRequestBodyIsClosedBeforeForwarding(t *testing.T) {
	in := &closeRecorder{Reader: strings.NewReader(`{"stream":true}`)}
	closedFirst := make(chan bool, 1)
	url, p, _ := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		closedFirst <- in.closed.Load()
		_, _ = io.ReadAll(r.Body)
	}))
	req := httptest.NewRequest(http.MethodPost, url+"/v1/chat/completions", in)
	w := httptest.NewRecorder()
	p.ServeHTTP(w, req)
	if w.Code != http.StatusOK {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	if !<-closedFirst {
		t.Fatal("the client's request body was still open when the request went upstream")
	}
}

type closeRecorder struct {
	io.Reader
	closed atomic.Bool
}

func (c *closeRecorder) Close() error { c.closed.Store(true); return nil }

func TestRequestsAreCountedByCode(t *testing.T) {
	m := newMetrics(nil, false)
	for _, code := range []int{200, 413, 200, 999, 1000, -1} {
		m.request(code)
	}
	got := scrape(t, m)
	want := `llmretry_requests_total{code="0"} 2
llmretry_requests_total{code="200"} 2
llmretry_requests_total{code="413"} 1
llmretry_requests_total{code="999"} 1
`
	if !strings.Contains(got, want) {
		t.Fatalf("metrics:\n%s\nwant the lines:\n%s", got, want)
	}
}

// scrape reads the metrics as Prometheus would.
func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("/metrics: %d", rec.Code)
	}
	return rec.Body.String()
}

// The metrics operators expect: latency histograms for the response
// headers, a stream's first bytes and the waits by source, and the Go and
// process collectors; no label holds a path or a key.
func TestMetricsOperatorsExpect(t *testing.T) {
	var hits atomic.Int32
	base, p, _ := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			w.Header().Set("Retry-After-Ms", "10")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: {\"delta\":\"hi\"}\n\ndata: [DONE]\n\n")
	}))
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/projects/secret-project/chat?key=SECRET", strings.NewReader(`{"stream":true}`))
	req.Header.Set("Authorization", "Bearer sk-SECRET")
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	got := scrape(t, p.Metrics())
	for _, want := range []string{
		"llmretry_response_header_seconds_count 1", "llmretry_first_event_seconds_count 1",
		`llmretry_wait_seconds_count{source="retry-after-ms"} 1`, `llmretry_wait_seconds_bucket{source="retry-after-ms",le="0.025"} 1`,
		"go_goroutines ", "process_resident_memory_bytes ", "llmretry_attempts_total 2",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	for _, leak := range []string{"SECRET", "secret-project", "/v1/"} {
		if strings.Contains(got, leak) {
			t.Errorf("metrics hold %q", leak)
		}
	}
}

// The proxy's own transport sends plain-HTTP requests through h1's client
// with h1's own dialer: net/http's (a Timeout, through DialContext) grew
// every dial's goroutine to 8 KiB in a burst (h1/dial.go).
func TestTheDefaultTransportDialsPlainHTTPWithH1sOwnDialer(t *testing.T) {
	gate, ok := defaultBase(Config{}).(*firstConn)
	if !ok {
		t.Fatalf("the default transport is %T, want the connection gate", defaultBase(Config{}))
	}
	plain, ok := gate.next.(*h1.Transport)
	if !ok {
		t.Fatalf("behind the gate is %T, want h1's client", gate.next)
	}
	if plain.DialContext != nil || plain.DialTimeout != 0 {
		t.Fatal("h1's client dials with a dialer given to it, not its own with its 30 s bound")
	}
	if fb, ok := plain.Fallback.(*http.Transport); !ok || fb.DialContext == nil || fb.MaxIdleConnsPerHost != 1024 {
		t.Fatalf("the fallback for HTTPS is %T, want net/http's, tuned", plain.Fallback)
	}
}

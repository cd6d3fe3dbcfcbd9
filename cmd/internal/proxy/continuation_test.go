package proxy

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmretry/llmretry"
	"github.com/llmretry/llmretry/mockllm"
)

// A route with continue_streams finishes a stream the upstream cut after
// its first output: the client reads the whole reply, the continuation is
// counted by outcome and logged with the request id, and the final
// attempts and target come as trailers.
func TestProxyContinuesAStreamCutMidway(t *testing.T) {
	url, rt, logs := continuingRoute(t, "cut=900")
	req, _ := http.NewRequest("POST", url+"/openai/chat/completions",
		strings.NewReader(`{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if got := streamedText(t, body); got != mockllm.ReplyText {
		t.Fatalf("the client read %q, want the whole reply", got)
	}
	if resp.Trailer.Get(AttemptsHeader) != "2" || resp.Trailer.Get(llmretry.TargetHeader) != "mock" {
		t.Fatalf("trailers %v: want 2 attempts, target mock", resp.Trailer)
	}
	if n := metricOf(t, rt.Metrics(), `llmretry_continuations_total{outcome="continued",route="/openai"}`); n != 1 {
		t.Fatalf("%v continuations counted", n)
	}
	line := ""
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "stream broke after output") {
			line = l
		}
	}
	if !strings.Contains(line, "outcome=continued") || !strings.Contains(line, "request_id=") || strings.Contains(logs.String(), "nothing is resent") {
		t.Fatalf("log:\n%s", logs.String())
	}
}

// A stream that breaks again past the continuation cap is not continued:
// the proxy's log line for it says so, with the request id, after the
// library's line that says why, and never that nothing is resent (the
// continuation before it was).
func TestProxyLogsAStreamThatWasNotContinued(t *testing.T) {
	url, rt, logs := continuingRoute(t, "cut=900,drop=3")
	req, _ := http.NewRequest("POST", url+"/openai/chat/completions",
		strings.NewReader(`{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil {
		t.Fatal("the client read the stream whole: want the second cut")
	}
	var why, notContinued string
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "stream broke after output") && strings.Contains(l, "over the cap") {
			why = l
		}
		if strings.Contains(l, "upstream reply broke mid-stream and was not continued") {
			notContinued = l
		}
	}
	id := func(l string) string {
		_, rest, _ := strings.Cut(l, "request_id=")
		v, _, _ := strings.Cut(rest, " ")
		return v
	}
	if why == "" || notContinued == "" || id(notContinued) == "" || id(notContinued) != id(why) ||
		strings.Contains(logs.String(), "nothing is resent") {
		t.Fatalf("log:\n%s", logs.String())
	}
	if n := metricOf(t, rt.Metrics(), `llmretry_continuations_total{outcome="over_cap",route="/openai"}`); n != 1 {
		t.Fatalf("%v over the cap counted", n)
	}
}

// streamedText joins the content of a chat stream's chunks.
func streamedText(t *testing.T, body []byte) string {
	t.Helper()
	var b strings.Builder
	for _, line := range strings.Split(string(body), "\n") {
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok || data == "[DONE]" {
			continue
		}
		var c struct {
			Choices []struct {
				Delta struct{ Content string } `json:"delta"`
			} `json:"choices"`
		}
		if err := json.Unmarshal([]byte(data), &c); err != nil {
			t.Fatalf("a chunk is not JSON: %q", data)
		}
		for _, ch := range c.Choices {
			b.WriteString(ch.Delta.Content)
		}
	}
	return b.String()
}

// The Node openai client through the proxy, with continuation on: a stream
// the upstream cuts mid-way accumulates into the whole reply, with one role
// and one finish.
func TestNodeOpenAIClientReadsAContinuedStreamWhole(t *testing.T) {
	t.Parallel() // its time is Node starting; it shares nothing with other tests
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node is not installed: the test command installs it (scripts/test.sh)")
	}
	dir, _ := filepath.Abs(filepath.Join("testdata", "node"))
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "openai")); err != nil {
		t.Fatalf("Node's openai package is missing: run npm ci --prefix %s (scripts/test.sh does)", dir)
	}
	url, _, _ := continuingRoute(t, "cut=1200")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "stream.mjs", url+"/openai", "gpt-4o")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, out)
	}
	var got struct {
		Text            string
		Roles, Finishes int
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("node printed %s: %v", out, err)
	}
	if got.Text != mockllm.ReplyText || got.Roles != 1 || got.Finishes != 1 {
		t.Fatalf("node read %+v: want the whole reply, one role, one finish", got)
	}
}

// Each outcome is counted under a label of its own, as the README lists
// them.
func TestContinuationOutcomeLabels(t *testing.T) {
	m := newMetrics(nil, false)
	want := map[llmretry.ContinuationOutcome]string{
		llmretry.Continued: "continued", llmretry.RefusedToolCall: "refused_tool_call", llmretry.Refused: "refused",
		llmretry.ContinuationFailed: "failed", llmretry.OverCap: "over_cap", llmretry.Completed: "completed",
	}
	for o, label := range want {
		m.onContinuation(llmretry.ContinuationEvent{Outcome: o}, "")
		if n := metricOf(t, m, `llmretry_continuations_total{outcome="`+label+`"}`); n != 1 {
			t.Errorf("%v: label %q counted %v", o, label, n)
		}
	}
}

// Over HTTP/2 (h2c) too, a continued stream's final attempts and target
// come as trailers.
func TestProxyContinuationTrailersOverHTTP2(t *testing.T) {
	url, _, _ := continuingRoute(t, "cut=900")
	h2 := &http.Transport{Protocols: new(http.Protocols)}
	h2.Protocols.SetUnencryptedHTTP2(true)
	defer h2.CloseIdleConnections()
	req, _ := http.NewRequest("POST", url+"/openai/chat/completions",
		strings.NewReader(`{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	resp, err := (&http.Client{Transport: h2}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 || streamedText(t, body) != mockllm.ReplyText ||
		resp.Trailer.Get(AttemptsHeader) != "2" || resp.Trailer.Get(llmretry.TargetHeader) != "mock" {
		t.Fatalf("HTTP/%d, trailers %v, text %q", resp.ProtoMajor, resp.Trailer, streamedText(t, body))
	}
}

// continuingRoute is a router whose one route continues streams, in front
// of the mock playing faults.
func continuingRoute(t *testing.T, faults string) (string, *Router, *logBuffer) {
	t.Helper()
	script, err := mockllm.ParseFaults(faults)
	if err != nil {
		t.Fatal(err)
	}
	up := httptest.NewServer(mockllm.New(script, 1))
	t.Cleanup(up.Close)
	return startRouter(t, `
routes:
  - prefix: /openai
    continue_streams: 1
    targets:
      - {name: mock, base_url: '`+up.URL+`/v1'}
`, nil)
}

// A route's continue_streams: 0 turns continuation off whatever else is
// set (the flag, continue_openai_prefix); N turns it on with that cap.
// continue_openai_prefix says how an OpenAI-compatible server is asked to
// go on, and never turns continuation on by itself: without
// continue_streams the flag decides, and its cap is kept.
func TestRouteContinueStreamsZeroIsOffWhateverElseIsSet(t *testing.T) {
	for _, c := range []struct {
		flag   int // --continue-streams
		fields string
		want   *llmretry.Continuation
	}{
		{0, "", nil},
		{2, "", &llmretry.Continuation{Max: 2}},
		{0, "continue_streams: 0, continue_openai_prefix: prefix", nil},
		{2, "continue_streams: 0", nil},
		{2, "continue_openai_prefix: vllm, continue_streams: 0", nil},
		{0, "continue_openai_prefix: prefix", nil},
		{2, "continue_openai_prefix: prefix", &llmretry.Continuation{Max: 2, OpenAIPrefix: "prefix"}},
		{0, "continue_streams: 3", &llmretry.Continuation{Max: 3}},
		{1, "continue_streams: 3, continue_openai_prefix: instruction", &llmretry.Continuation{Max: 3}},
	} {
		fields := c.fields
		if fields != "" {
			fields += ", "
		}
		text := "routes:\n  - {prefix: /openai, " + fields + "targets: [{name: t, base_url: 'http://127.0.0.1:1/v1'}]}\n"
		fc, err := ParseConfig("c.yaml", []byte(text), nil)
		if err != nil {
			t.Fatalf("%s: %v", c.fields, err)
		}
		base := Config{}
		if c.flag > 0 {
			base.Continuation = &llmretry.Continuation{Max: c.flag}
		}
		rt, err := NewRouter(fc, base)
		if err != nil {
			t.Fatal(err)
		}
		got := rt.routes[0].cfg.Continuation
		if (got == nil) != (c.want == nil) || got != nil && *got != *c.want {
			t.Errorf("flag %d, %q: continuation %+v, want %+v", c.flag, c.fields, got, c.want)
		}
	}
}

// End to end: a route with continue_streams: 0 and a prefix form set
// leaves a cut stream cut, and sends nothing upstream again.
func TestRouteContinueStreamsZeroLeavesACutStreamCut(t *testing.T) {
	script, err := mockllm.ParseFaults("cut=900")
	if err != nil {
		t.Fatal(err)
	}
	var hits atomic.Int32
	mock := mockllm.New(script, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		mock.ServeHTTP(w, r)
	}))
	t.Cleanup(up.Close)
	url, _, _ := startRouter(t, `
routes:
  - prefix: /openai
    continue_streams: 0
    continue_openai_prefix: prefix
    targets:
      - {name: mock, base_url: '`+up.URL+`/v1'}
`, nil)
	req, _ := http.NewRequest("POST", url+"/openai/chat/completions",
		strings.NewReader(`{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil || hits.Load() != 1 {
		t.Fatalf("read error %v, %d upstream requests: want the cut, and one request", err, hits.Load())
	}
}

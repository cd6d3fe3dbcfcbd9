package mockllm_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/llmretry/llmretry"
	"github.com/llmretry/llmretry/llmretrytest"
	"github.com/llmretry/llmretry/mockllm"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParseFaults(t *testing.T) {
	good := map[string]int{
		"":                           0,
		"ok":                         1,
		"503:retry-after=2,reset,ok": 3,
		"429:retry-after-ms=1500:x-should-retry=true":                  1,
		"quota, retryinfo=53s, stall=1s, sse-error, drop=3, slow=10ms": 6,
		"503@20%,reset@5%,sse-error@10%":                               3,
		"stall=10ms..30ms@100%":                                        1,
		"slow=1ms..1ms":                                                1,
		"cut=0,cut=1234,drop=2":                                        3,
		"cut=57@30%,ok@10%":                                            2,
	}
	for spec, n := range good {
		s, err := mockllm.ParseFaults(spec)
		if err != nil || len(s.Faults) != n {
			t.Errorf("%q: %v, %d faults", spec, err, len(s.Faults))
		}
	}
	bad := []string{"explode", "200", "503:retry-after", "503:colour=red", "stall=soon", "drop=-1",
		"503@20%,reset", "503@80%,reset@30%", "503@abc%", "retryinfo=-1s",
		"stall=30ms..10ms", "stall=1ms..", "slow=..5ms", "slow=1ms..soon", "cut=-1", "cut=", "cut=5b", "cut"}
	for _, spec := range bad {
		if _, err := mockllm.ParseFaults(spec); err == nil {
			t.Errorf("%q: want an error", spec)
		}
	}
	if s, _ := mockllm.ParseFaults("cut=1234"); s.Faults[0].Kind != mockllm.Cut || s.Faults[0].Bytes != 1234 {
		t.Errorf("cut=1234 parsed as %+v", s.Faults[0])
	}
	for spec, want := range map[string]string{"cut=x": "want a number of bytes", "snip=3": "drop=, cut= or slow="} {
		if _, err := mockllm.ParseFaults(spec); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want it to say %q", spec, err, want)
		}
	}
}

func TestMixIsDeterministic(t *testing.T) {
	s, _ := mockllm.ParseFaults("503@30%,reset@20%")
	kinds := func() []int {
		srv := mockllm.New(s, 42)
		var out []int
		for range 50 {
			rec := httptest.NewRecorder()
			req := httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(`{"model":"m"}`))
			func() {
				defer func() { _ = recover() }() // reset cannot hijack a recorder
				srv.ServeHTTP(rec, req)
			}()
			out = append(out, rec.Code)
		}
		return out
	}
	a, b := kinds(), kinds()
	if len(a) != 50 || fmtInts(a) != fmtInts(b) {
		t.Fatalf("mixes differ: %v %v", a, b)
	}
	n503 := 0
	for _, c := range a {
		if c == 503 {
			n503++
		}
	}
	if n503 == 0 || n503 == 50 {
		t.Fatalf("503s in the mix: %d of 50", n503)
	}
}

func fmtInts(v []int) string {
	b, _ := json.Marshal(v)
	return string(b)
}

type call struct {
	path, body string
}

var apis = map[string]call{
	"openai":    {"/v1/chat/completions", `{"model":"gpt-4o","stream":%s,"messages":[{"role":"user","content":"hi"}]}`},
	"anthropic": {"/v1/messages", `{"model":"claude","stream":%s,"max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`},
	"gemini":    {"/v1beta/models/gemini:%s", `{"contents":[{"parts":[{"text":"hi"}]}]}`},
}

func request(t *testing.T, base, api string, stream bool) *http.Request {
	c := apis[api]
	path, body := c.path, c.body
	if api == "gemini" {
		op := "generateContent"
		if stream {
			op = "streamGenerateContent?alt=sse"
		}
		path = strings.Replace(path, "%s", op, 1)
	} else {
		body = strings.Replace(body, "%s", map[bool]string{true: "true", false: "false"}[stream], 1)
	}
	req, err := http.NewRequest("POST", base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// text pulls the reply text out of a JSON reply or an SSE stream.
func text(t *testing.T, api string, stream bool, body string) string {
	t.Helper()
	var out strings.Builder
	take := func(js string) {
		var v struct {
			Choices []struct {
				Message struct{ Content string } `json:"message"`
				Delta   struct{ Content string } `json:"delta"`
			} `json:"choices"`
			Content []struct{ Text string } `json:"content"`
			Delta   struct{ Text string }   `json:"delta"`
			Cands   []struct {
				Content struct{ Parts []struct{ Text string } } `json:"content"`
			} `json:"candidates"`
		}
		if err := json.Unmarshal([]byte(js), &v); err != nil {
			t.Fatalf("%s: %v in %q", api, err, js)
		}
		for _, c := range v.Choices {
			out.WriteString(c.Message.Content + c.Delta.Content)
		}
		for _, c := range v.Content {
			out.WriteString(c.Text)
		}
		out.WriteString(v.Delta.Text)
		for _, c := range v.Cands {
			for _, p := range c.Content.Parts {
				out.WriteString(p.Text)
			}
		}
	}
	if !stream {
		take(body)
		return out.String()
	}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if d, ok := strings.CutPrefix(line, "data: "); ok && d != "[DONE]" {
			take(d)
		}
	}
	return out.String()
}

func TestEveryFaultThroughTheTransport(t *testing.T) {
	cases := []struct {
		spec     string
		stream   bool
		hits     int
		wantCode int // 0: a whole reply
		wantWait time.Duration
	}{
		{"ok", false, 1, 0, 0},
		{"ok", true, 1, 0, 0},
		{"503:retry-after=2,ok", false, 2, 0, 2 * time.Second},
		{"429:retry-after-ms=1500", true, 2, 0, 1500 * time.Millisecond},
		{"503:x-should-retry=false", false, 1, 503, 0},
		{"quota", false, 1, 429, 0},
		{"retryinfo=7s", false, 2, 0, 7 * time.Second},
		{"reset", true, 2, 0, 0},
		{"sse-error", true, 2, 0, 0},
		{"slow=1ms", true, 1, 0, 0},
	}
	for _, tc := range cases {
		for api := range apis {
			t.Run(api+"/"+tc.spec, func(t *testing.T) {
				s, err := mockllm.ParseFaults(tc.spec)
				if err != nil {
					t.Fatal(err)
				}
				m := mockllm.New(s, 1)
				srv := httptest.NewServer(m)
				defer srv.Close()
				clk := llmretrytest.NewClock(time.Now())
				base := &http.Transport{}
				defer base.CloseIdleConnections()
				c := &http.Client{Transport: llmretry.NewTransport(base, llmretry.WithClock(clk), llmretry.WithRand(func() float64 { return 0 }))}
				resp, err := c.Do(request(t, srv.URL, api, tc.stream))
				if err != nil {
					t.Fatal(err)
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil {
					t.Fatal(err)
				}
				if m.Hits() != tc.hits {
					t.Fatalf("hits %d, want %d", m.Hits(), tc.hits)
				}
				if tc.wantCode != 0 {
					if resp.StatusCode != tc.wantCode {
						t.Fatalf("status %d, want %d", resp.StatusCode, tc.wantCode)
					}
					return
				}
				if got := text(t, api, tc.stream, string(b)); resp.StatusCode != 200 || got != mockllm.ReplyText {
					t.Fatalf("status %d text %q", resp.StatusCode, got)
				}
				if w := clk.Waits(); tc.wantWait > 0 && (len(w) != 1 || w[0] < tc.wantWait) {
					t.Fatalf("waits %v, want %v", w, tc.wantWait)
				}
			})
		}
	}
}

// A stream cut after some events is the caller's: not retried, and the
// cut shows as a read error.
func TestDropMidStream(t *testing.T) {
	s, _ := mockllm.ParseFaults("drop=3")
	m := mockllm.New(s, 1)
	srv := httptest.NewServer(m)
	defer srv.Close()
	base := &http.Transport{}
	defer base.CloseIdleConnections()
	c := &http.Client{Transport: llmretry.NewTransport(base)}
	resp, err := c.Do(request(t, srv.URL, "openai", true))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil || !errors.Is(err, io.ErrUnexpectedEOF) || m.Hits() != 1 || strings.Count(string(b), "data: ") != 3 {
		t.Fatalf("err %v hits %d body %q", err, m.Hits(), b)
	}
}

// TestStallRangeDrawsEachWait proves that a stall range gives each request
// its own wait inside the range, on synctest's clock.
func TestStallRangeDrawsEachWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, err := mockllm.ParseFaults("stall=10ms..30ms@100%")
		if err != nil {
			t.Fatal(err)
		}
		m := mockllm.New(s, 7)
		seen := map[time.Duration]bool{}
		for range 20 {
			start := time.Now()
			rec := httptest.NewRecorder()
			m.ServeHTTP(rec, httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(`{"model":"m"}`)))
			waited := time.Since(start)
			if rec.Code != http.StatusOK || waited < 10*time.Millisecond || waited > 30*time.Millisecond {
				t.Fatalf("status %d after %v, want 200 after 10ms to 30ms", rec.Code, waited)
			}
			seen[waited] = true
		}
		if len(seen) < 10 {
			t.Fatalf("%d distinct waits in 20 requests: the range is not drawn per request", len(seen))
		}
	})
}

func TestStallEndsWhenTheClientLeaves(t *testing.T) {
	s, _ := mockllm.ParseFaults("stall=1h")
	m := mockllm.New(s, 1)
	srv := httptest.NewServer(m)
	defer srv.Close()
	c := &http.Client{Timeout: 50 * time.Millisecond}
	_, err := c.Do(request(t, srv.URL, "openai", false))
	if err == nil {
		t.Fatal("want a timeout")
	}
	srv.Close() // returns only once the stalled handler has ended
}

package integration

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/llmretry/llmretry"
	"github.com/llmretry/llmretry/llmretrytest"
	"github.com/llmretry/llmretry/mockllm"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// go-genai's dependencies start these once per process.
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
	)
}

// setup starts a mock provider playing spec and returns a client whose
// Transport is llmretry's.
func setup(t *testing.T, spec string) (*mockllm.Server, *http.Client, string, *llmretrytest.Clock) {
	t.Helper()
	script, err := mockllm.ParseFaults(spec)
	if err != nil {
		t.Fatal(err)
	}
	m := mockllm.New(script, 1)
	srv := httptest.NewServer(m)
	t.Cleanup(srv.Close)
	base := &http.Transport{}
	t.Cleanup(base.CloseIdleConnections)
	clk := llmretrytest.NewClock(time.Now())
	tr := llmretry.NewTransport(base, llmretry.WithClock(clk), llmretry.WithRand(func() float64 { return 0 }))
	return m, &http.Client{Transport: tr}, srv.URL, clk
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestSDK_503ResetThenSuccess(t *testing.T) {
	for _, s := range sdks {
		t.Run(s.name, func(t *testing.T) {
			m, hc, base, _ := setup(t, "503,reset")
			got, err := s.complete(ctx(t), hc, base)
			if err != nil {
				t.Fatal(err)
			}
			if got != mockllm.ReplyText || m.Hits() != 3 {
				t.Fatalf("hits %d, reply %q", m.Hits(), got)
			}
		})
	}
}

func TestSDK_RetryAfterIsWaited(t *testing.T) {
	for _, s := range sdks {
		t.Run(s.name, func(t *testing.T) {
			m, hc, base, clk := setup(t, "429:retry-after=1")
			got, err := s.complete(ctx(t), hc, base)
			if err != nil {
				t.Fatal(err)
			}
			w := clk.Waits()
			if got != mockllm.ReplyText || m.Hits() != 2 || len(w) != 1 || w[0] < time.Second {
				t.Fatalf("hits %d waits %v", m.Hits(), w)
			}
		})
	}
}

func TestSDK_QuotaReturnedAtOnceWithTypedError(t *testing.T) {
	want := map[mockllm.API][2]string{
		mockllm.OpenAI:    {"insufficient_quota", "You exceeded your current quota"},
		mockllm.Anthropic: {"enforced_spend_limit_reached", "You have reached your specified API usage limits"},
		mockllm.Gemini:    {"RESOURCE_EXHAUSTED", "You exceeded your current quota"},
	}
	for _, s := range sdks {
		t.Run(s.name, func(t *testing.T) {
			m, hc, base, clk := setup(t, "quota")
			_, err := s.complete(ctx(t), hc, base)
			if err == nil {
				t.Fatal("want the quota error")
			}
			status, code, msg, ok := s.apiError(err)
			w := want[s.api]
			if !ok || status != 429 || !strings.Contains(code, w[0]) || !strings.Contains(msg, w[1]) {
				t.Fatalf("typed error: ok=%v status %d code %q message %q (err %v)", ok, status, code, msg, err)
			}
			if m.Hits() != 1 || len(clk.Waits()) != 0 {
				t.Fatalf("hits %d waits %v: a quota error must not be retried", m.Hits(), clk.Waits())
			}
		})
	}
}

func TestSDK_StreamBrokenAfterFirstEventIsNotResent(t *testing.T) {
	for _, s := range sdks {
		t.Run(s.name, func(t *testing.T) {
			m, hc, base, _ := setup(t, "drop=3")
			got, err := s.stream(ctx(t), hc, base, func(string) {})
			if err == nil {
				t.Fatalf("the SDK reported no error for a cut stream (got %q)", got)
			}
			if m.Hits() != 1 || got == mockllm.ReplyText {
				t.Fatalf("hits %d reply %q", m.Hits(), got)
			}
		})
	}
}

// An error sent as the first event is retried, and the caller sees the
// retried stream's content once and only once.
func TestSDK_FirstEventErrorRetriedContentOnce(t *testing.T) {
	for _, s := range sdks {
		t.Run(s.name, func(t *testing.T) {
			m, hc, base, _ := setup(t, "sse-error")
			got, err := s.stream(ctx(t), hc, base, func(string) {})
			if err != nil {
				t.Fatal(err)
			}
			if got != mockllm.ReplyText || m.Hits() != 2 {
				t.Fatalf("hits %d reply %q", m.Hits(), got)
			}
		})
	}
}

func TestSDK_StreamArrivesEventByEvent(t *testing.T) {
	for _, s := range sdks {
		t.Run(s.name, func(t *testing.T) {
			events := mockllm.StreamEvents(s.api, "m")
			// How many events up to the first one the SDK reports as a delta.
			split := map[mockllm.API]int{mockllm.Anthropic: 3, mockllm.OpenAI: 2, mockllm.Gemini: 1}[s.api]
			release := make(chan struct{})
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				w.Header().Set("Content-Type", "text/event-stream")
				for _, ev := range events[:split] {
					_, _ = io.WriteString(w, ev)
				}
				w.(http.Flusher).Flush()
				select {
				case <-release:
				case <-r.Context().Done():
					return
				}
				for _, ev := range events[split:] {
					_, _ = io.WriteString(w, ev)
				}
			}))
			defer srv.Close()
			base := &http.Transport{}
			defer base.CloseIdleConnections()
			hc := &http.Client{Transport: llmretry.NewTransport(base)}
			first := make(chan struct{})
			var once sync.Once
			done := make(chan error, 1)
			go func() {
				_, err := s.stream(ctx(t), hc, srv.URL, func(string) { once.Do(func() { close(first) }) })
				done <- err
			}()
			select {
			case <-first:
			case err := <-done:
				t.Fatalf("stream ended before the server sent its second part: %v", err)
			case <-time.After(15 * time.Second):
				t.Fatal("the first delta did not reach the SDK before the server sent more")
			}
			close(release)
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}

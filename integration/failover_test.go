package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/llmretry/llmretry"
	"github.com/llmretry/llmretry/llmretrytest"
	"github.com/llmretry/llmretry/mockllm"
)

// Failover with the real SDKs: openai-go and anthropic-sdk-go, their own
// retries off, through a failover Transport, against mock providers.

// provider is a mock provider that records the models it was asked for.
type provider struct {
	*mockllm.Server
	url    string
	mu     sync.Mutex
	models []string
}

func newMockProvider(t *testing.T, spec string, keys map[string]string) *provider {
	t.Helper()
	script, err := mockllm.ParseFaults(spec)
	if err != nil {
		t.Fatal(err)
	}
	p := &provider{Server: mockllm.New(script, 1)}
	for key, spec := range keys {
		ks, err := mockllm.ParseFaults(spec)
		if err != nil {
			t.Fatal(err)
		}
		p.ForKey(key, ks)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var m struct{ Model string }
		_ = json.Unmarshal(b, &m)
		p.mu.Lock()
		p.models = append(p.models, m.Model)
		p.mu.Unlock()
		r.Body = io.NopCloser(bytes.NewReader(b))
		p.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	p.url = srv.URL
	return p
}

func (p *provider) asked() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.models...)
}

// failoverSDKs are the SDKs failover is shown with, and how each is pointed
// at a target: the base URL its client takes, and the API family.
var failoverSDKs = []struct {
	sdk
	family         llmretry.Family
	basePath       string // what the SDK's base URL adds to the mock's
	model, smaller string
}{
	{sdks[0], llmretry.FamilyOpenAI, "/v1", "gpt-4o", "gpt-4o-mini"},
	{sdks[1], llmretry.FamilyAnthropic, "", "claude-sonnet-4-5", "claude-haiku-4-5"},
}

// failoverClient is an http.Client whose Transport fails over across
// targets, on clk.
func failoverClient(t *testing.T, clk *llmretrytest.Clock, targets ...llmretry.Target) *http.Client {
	t.Helper()
	base := &http.Transport{}
	t.Cleanup(base.CloseIdleConnections)
	tr, err := llmretry.NewFailoverTransport(base, llmretry.Failover{Targets: targets},
		llmretry.WithClock(clk), llmretry.WithRand(func() float64 { return 0 }))
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Transport: tr}
}

func TestFailoverSDK_RateLimitedKeyGivesWayAtOnceAndRestsItsWait(t *testing.T) {
	for _, s := range failoverSDKs {
		t.Run(s.name, func(t *testing.T) {
			p := newMockProvider(t, "", map[string]string{"key-a": "429:retry-after=20@100%", "key-b": ""})
			clk := llmretrytest.NewClock(time.Now())
			hc := failoverClient(t, clk, llmretry.Target{Name: "p", BaseURL: p.url + s.basePath, Family: s.family,
				Keys: []llmretry.Key{llmretry.NewKey("a", "key-a"), llmretry.NewKey("b", "key-b")}})
			for i := range 3 {
				got, err := s.complete(ctx(t), hc, p.url)
				if err != nil || got != mockllm.ReplyText {
					t.Fatalf("request %d: %q, %v", i, got, err)
				}
			}
			if len(clk.Waits()) != 0 || p.HitsFor("key-a") != 1 || p.HitsFor("key-b") != 3 {
				t.Fatalf("waits %v, key a %d, key b %d: want b at once, and a left alone after its 429",
					clk.Waits(), p.HitsFor("key-a"), p.HitsFor("key-b"))
			}
			clk.Advance(21 * time.Second)
			if _, err := s.complete(ctx(t), hc, p.url); err != nil {
				t.Fatal(err)
			}
			if p.HitsFor("key-a") != 2 {
				t.Fatalf("key a got %d requests, want it tried again once its 20 s were over", p.HitsFor("key-a"))
			}
		})
	}
}

func TestFailoverSDK_QuotaAnd401TakeTheKeyOut(t *testing.T) {
	for _, s := range failoverSDKs {
		t.Run(s.name, func(t *testing.T) {
			p := newMockProvider(t, "", map[string]string{"key-a": "quota@100%", "key-b": "401@100%", "key-c": ""})
			clk := llmretrytest.NewClock(time.Now())
			hc := failoverClient(t, clk, llmretry.Target{Name: "p", BaseURL: p.url + s.basePath, Family: s.family,
				Keys: []llmretry.Key{llmretry.NewKey("a", "key-a"), llmretry.NewKey("b", "key-b"), llmretry.NewKey("c", "key-c")}})
			for i := range 3 {
				if got, err := s.complete(ctx(t), hc, p.url); err != nil || got != mockllm.ReplyText {
					t.Fatalf("request %d: %q, %v", i, got, err)
				}
			}
			if p.HitsFor("key-a") != 1 || p.HitsFor("key-b") != 1 || p.HitsFor("key-c") != 3 || len(clk.Waits()) != 0 {
				t.Fatalf("hits a %d, b %d, c %d, waits %v: want a and b out after one answer each",
					p.HitsFor("key-a"), p.HitsFor("key-b"), p.HitsFor("key-c"), clk.Waits())
			}
		})
	}
}

func TestFailoverSDK_PrimaryDownGoesToTheNextTargetWithItsModel(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusing := "http://" + ln.Addr().String()
	ln.Close()
	for _, s := range failoverSDKs {
		for _, down := range []string{"refuses connections", "answers 503 every time"} {
			t.Run(s.name+"/"+down, func(t *testing.T) {
				primaryURL := refusing
				var primary *provider
				if down != "refuses connections" {
					primary = newMockProvider(t, "503@100%", nil)
					primaryURL = primary.url
				}
				fallback := newMockProvider(t, "", nil)
				clk := llmretrytest.NewClock(time.Now())
				hc := failoverClient(t, clk,
					llmretry.Target{Name: "primary", BaseURL: primaryURL + s.basePath, Family: s.family},
					llmretry.Target{Name: "fallback", BaseURL: fallback.url + s.basePath, Family: s.family,
						Models: map[string]string{s.model: s.smaller}})
				got, err := s.complete(ctx(t), hc, primaryURL)
				if err != nil || got != mockllm.ReplyText {
					t.Fatalf("%q, %v", got, err)
				}
				if asked := fallback.asked(); fmt.Sprint(asked) != "["+s.smaller+"]" {
					t.Fatalf("the fallback was asked for %v, want [%s]", asked, s.smaller)
				}
				// A 503 that asks no wait goes at once to a target that can
				// serve: going beats any backoff (issue 20).
				if primary != nil && primary.Hits() != 1 {
					t.Fatalf("the primary got %d attempts, want 1: the fallback could serve at once", primary.Hits())
				}
			})
		}
	}
}

func TestFailoverSDK_StreamCutAfterItsFirstEventIsReplayedNowhere(t *testing.T) {
	for _, s := range failoverSDKs {
		t.Run(s.name, func(t *testing.T) {
			primary := newMockProvider(t, "drop=4", nil)
			fallback := newMockProvider(t, "", nil)
			clk := llmretrytest.NewClock(time.Now())
			hc := failoverClient(t, clk,
				llmretry.Target{Name: "primary", BaseURL: primary.url + s.basePath, Family: s.family},
				llmretry.Target{Name: "fallback", BaseURL: fallback.url + s.basePath, Family: s.family})
			var deltas int
			_, err := s.stream(ctx(t), hc, primary.url, func(string) { deltas++ })
			if err == nil {
				t.Fatal("the cut stream ended cleanly")
			}
			if deltas == 0 || primary.Hits() != 1 || fallback.Hits() != 0 {
				t.Fatalf("deltas %d, primary %d, fallback %d: the stream reached the caller, and nothing may be sent again",
					deltas, primary.Hits(), fallback.Hits())
			}
		})
	}
}

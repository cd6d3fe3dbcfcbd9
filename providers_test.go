package llmretry

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

const (
	openAIQuota      = `{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}`
	openAIRate       = `{"error":{"message":"Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Used 29000, Requested 1500. Please try again in 16.062s. Visit https://platform.openai.com/account/rate-limits to learn more.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}`
	anthropicSpend   = `{"type":"error","error":{"type":"rate_limit_error","message":"You have reached your specified API usage limits.","details":{"error_code":"enforced_spend_limit_reached"}}}`
	anthropicBilling = `{"type":"error","error":{"type":"billing_error","message":"Your credit balance is too low."}}`
	anthropicRate    = `{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}`
	geminiRetryInfo  = `{"error":{"code":429,"message":"You exceeded your current quota.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"53s"}]}}`
	geminiPerDay     = `{"error":{"code":429,"message":"You exceeded your current quota.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"20s"}]}}`
	azureRate        = `{"error":{"code":"429","message":"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-02-01 have exceeded token rate limit of your current tier. Please retry after 6 seconds."}}`
)

func TestClassifyErrorBody(t *testing.T) {
	cases := []struct {
		name   string
		body   string
		final  bool
		wait   time.Duration
		src    WaitSource
		parsed bool
	}{
		{"openai insufficient_quota", openAIQuota, true, 0, 0, true},
		{"openai rate limit", openAIRate, false, 16062 * time.Millisecond, SourceMessage, true},
		{"anthropic spend limit", anthropicSpend, true, 0, 0, true},
		{"anthropic billing", anthropicBilling, true, 0, 0, true},
		{"anthropic rate limit", anthropicRate, false, 0, 0, true},
		{"gemini retry info", geminiRetryInfo, false, 53 * time.Second, SourceRetryInfo, true},
		{"gemini wrapped in a list", "[" + geminiRetryInfo + "]", false, 53 * time.Second, SourceRetryInfo, true},
		{"gemini per day", geminiPerDay, true, 0, 0, true},
		{"azure retry after", azureRate, false, 6 * time.Second, SourceMessage, true},
		{"fractional retry delay", `{"error":{"details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"0.5s"}]}}`, false, 500 * time.Millisecond, SourceRetryInfo, true},
		{"minutes in message", `{"error":{"message":"Please try again in 1m2.5s."}}`, false, 62500 * time.Millisecond, SourceMessage, true},
		{"ms in message", `{"error":{"message":"Please try again in 20ms"}}`, false, 20 * time.Millisecond, SourceMessage, true},
		{"not json", "<html>502</html>", false, 0, 0, false},
		{"no error key", `{"detail":"x"}`, false, 0, 0, false},
		{"truncated", openAIQuota[:40], false, 0, 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v, ok := classifyErrorBody([]byte(tc.body))
			if ok != tc.parsed || v.final != tc.final || v.wait != tc.wait || (tc.wait > 0 && v.src != tc.src) {
				t.Fatalf("got %+v ok=%v", v, ok)
			}
		})
	}
}

func TestResetWait(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		name string
		h    http.Header
		want time.Duration
	}{
		{"tokens empty", http.Header{"X-Ratelimit-Reset-Requests": {"1s"}, "X-Ratelimit-Reset-Tokens": {"6m0s"},
			"X-Ratelimit-Remaining-Tokens": {"0"}, "X-Ratelimit-Remaining-Requests": {"10"}}, 6 * time.Minute},
		{"requests empty", http.Header{"X-Ratelimit-Reset-Requests": {"20ms"}, "X-Ratelimit-Reset-Tokens": {"6m0s"},
			"X-Ratelimit-Remaining-Requests": {"0"}}, 20 * time.Millisecond},
		{"none says which: shortest", http.Header{"X-Ratelimit-Reset-Requests": {"2s"}, "X-Ratelimit-Reset-Tokens": {"1.5s"}}, 1500 * time.Millisecond},
		{"anthropic", http.Header{"Anthropic-Ratelimit-Tokens-Reset": {"2026-11-27T12:00:09Z"},
			"Anthropic-Ratelimit-Tokens-Remaining": {"0"}, "Anthropic-Ratelimit-Requests-Reset": {"2026-11-27T12:00:01Z"}}, 9 * time.Second},
		{"past", http.Header{"Anthropic-Ratelimit-Tokens-Reset": {"2026-11-27T11:00:00Z"}}, 0},
		{"garbage", http.Header{"X-Ratelimit-Reset-Tokens": {"soon"}}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := resetWait(tc.h, now)
			if got != tc.want || ok != (tc.want > 0) {
				t.Fatalf("got %v %v, want %v", got, ok, tc.want)
			}
		})
	}
}

func TestProviderRulesOnTheWire(t *testing.T) {
	json := "Content-Type"
	cases := []struct {
		name     string
		first    http.HandlerFunc
		hits     int
		wait     time.Duration // the first wait, before jitter (rand 0)
		wantBody string
	}{
		{"openai quota returned at once", status(429, openAIQuota, json, "application/json"), 1, 0, openAIQuota},
		{"anthropic spend limit returned at once", status(429, anthropicSpend, json, "application/json"), 1, 0, anthropicSpend},
		{"gemini per-day quota returned at once", status(429, geminiPerDay, json, "application/json"), 1, 0, geminiPerDay},
		{"openai quota wins over x-should-retry", status(429, openAIQuota, "X-Should-Retry", "true"), 1, 0, openAIQuota},
		{"openrouter 402", status(402, `{"error":{"code":402,"message":"Insufficient credits"}}`), 1, 0, `{"error":{"code":402,"message":"Insufficient credits"}}`},
		{"azure 403 quota", status(403, `{"error":{"code":"403","message":"Out of call volume quota"}}`), 1, 0, `{"error":{"code":"403","message":"Out of call volume quota"}}`},
		{"gemini retry info waited", status(429, geminiRetryInfo), 2, 53 * time.Second, "ok"},
		{"openai message waited", status(429, openAIRate), 2, 16062 * time.Millisecond, "ok"},
		{"header beats body", status(429, openAIRate, "Retry-After", "2"), 2, 2 * time.Second, "ok"},
		{"reset header waited", status(429, anthropicRate, "X-Ratelimit-Reset-Tokens", "3s", "X-Ratelimit-Remaining-Tokens", "0"), 2, 3 * time.Second, "ok"},
		{"plain 429 backs off", status(429, anthropicRate), 2, 375 * time.Millisecond, "ok"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := newScripted(t, tc.first, status(200, "ok"))
			clk := newFakeClock()
			_, c := testTransport(t, clk, WithRand(fixedRand(0)))
			resp, err := c.Do(post(t, srv.URL, "x"))
			if err != nil {
				t.Fatal(err)
			}
			if got := readAll(t, resp); got != tc.wantBody {
				t.Fatalf("body %q, want %q", got, tc.wantBody)
			}
			w := clk.Waits()
			if srv.Hits() != tc.hits || (tc.wait > 0 && (len(w) != 1 || w[0] != tc.wait)) || (tc.wait == 0 && len(w) != 0) {
				t.Fatalf("hits %d waits %v, want %d hits, wait %v", srv.Hits(), w, tc.hits, tc.wait)
			}
		})
	}
}

func TestProviderRulesOff(t *testing.T) {
	srv := newScripted(t, status(429, openAIQuota), status(200, "ok"))
	_, c := testTransport(t, newFakeClock(), WithoutProviderRules())
	resp, err := c.Do(post(t, srv.URL, "x"))
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	if srv.Hits() != 2 {
		t.Fatalf("hits %d: with the rules off a quota 429 is retried like any 429", srv.Hits())
	}
}

// A body above the peek bound is still handed over byte for byte.
func TestLargeErrorBodyIntact(t *testing.T) {
	big := `{"error":{"type":"insufficient_quota","message":"` + strings.Repeat("x", 100<<10) + `"}}`
	srv := newScripted(t, status(429, big))
	_, c := testTransport(t, newFakeClock())
	resp, err := c.Do(post(t, srv.URL, "x"))
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, resp); got != big {
		t.Fatalf("body of %d bytes came back as %d", len(big), len(got))
	}
	if srv.Hits() != 3 {
		// Past the bound the JSON cannot be read, so the status rule holds.
		t.Fatalf("hits %d", srv.Hits())
	}
}

func TestMessageWait(t *testing.T) {
	cases := map[string]time.Duration{
		"Please try again in 16.062s.":             16062 * time.Millisecond,
		"please TRY AGAIN IN 6m0s":                 6 * time.Minute,
		"Please retry after 6 seconds.":            6 * time.Second,
		"Please retry after 1 second":              time.Second,
		"try again in a moment":                    0,
		"try again in":                             0,
		"Please try again in -5s":                  0,
		"Rate limited. Please try again in 7.66s)": 7660 * time.Millisecond,
		"Please try again in 1m2.5s.":              62500 * time.Millisecond,
		"Please try again in 20ms.":                20 * time.Millisecond,
		"Please try again in 1e3s":                 0,
	}
	for msg, want := range cases {
		got, ok := messageWait(msg)
		if got != want || ok != (want > 0) {
			t.Errorf("%q: got %v %v, want %v", msg, got, ok, want)
		}
	}
}

// "try again in 9999999h" asks for a wait too long to honour, as an equally
// huge Retry-After does: both stop retrying at once. It used to fail to
// parse, so the request was retried on backoff against the server's word.
func TestHugeBodyWaitStopsLikeHugeHeader(t *testing.T) {
	for _, msg := range []string{"Please try again in 9999999h.", "Please try again in 99999999999999999999s"} {
		if d, ok := messageWait(msg); !ok || d != maxWait {
			t.Errorf("%q: got %v %v, want maxWait", msg, d, ok)
		}
	}
	body := `{"error":{"message":"Rate limit reached. Please try again in 9999999h.","type":"requests","code":"rate_limit_exceeded"}}`
	for name, h := range map[string]http.HandlerFunc{
		"body":   status(429, body),
		"header": status(429, "", "Retry-After", "35999996400"),
	} {
		t.Run(name, func(t *testing.T) {
			srv := newScripted(t, h, status(200, "ok"))
			var stop StopEvent
			_, c := testTransport(t, newFakeClock(), WithOnStop(func(e StopEvent) { stop = e }))
			resp, err := c.Do(post(t, srv.URL, "x"))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if srv.Hits() != 1 || stop.Reason != ReasonRetryAfterTooLong {
				t.Fatalf("hits %d, stop %v; want 1 attempt stopped for a wait too long", srv.Hits(), stop.Reason)
			}
		})
	}
}

// A message that is not valid UTF-8 made messageWait slice past its end and
// panic (found by FuzzMessageWait): an upstream could crash the caller.
func TestMessageWaitInvalidUTF8DoesNotPanic(t *testing.T) {
	for _, msg := range []string{"\xb4trY AgAin in ", "\xff\xfe try again in 3s", "\xb4\xb4\xb4retry after 2 seconds"} {
		d, ok := messageWait(msg)
		if ok != (d > 0) {
			t.Errorf("%q: %v %v", msg, d, ok)
		}
	}
	if d, _ := messageWait("\xff\xfe try again in 3s"); d != 3*time.Second {
		t.Errorf("got %v, want 3s", d)
	}
}

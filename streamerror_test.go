package llmretry

import (
	"testing"
	"time"
)

// An error inside a stream is judged as the error response it stands for.
func TestStreamErrorDecisions(t *testing.T) {
	cases := []struct {
		name   string
		family streamFamily
		ev     sseEvent
		action Action
		status int
		wait   time.Duration
		cause  string
	}{
		{"anthropic overloaded", streamAnthropic, ev("error", `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`), Retry, 529, 0, "in-stream error: overloaded_error"},
		{"anthropic api_error", streamAnthropic, ev("error", `{"type":"error","error":{"type":"api_error","message":"Internal"}}`), Retry, 500, 0, "in-stream error: api_error"},
		{"anthropic timeout_error", streamAnthropic, ev("error", `{"type":"error","error":{"type":"timeout_error","message":"t"}}`), Retry, 504, 0, "in-stream error: timeout_error"},
		{"anthropic rate limit", streamAnthropic, ev("error", `{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}`), Retry, 429, 0, "in-stream error: rate_limit_error"},
		{"anthropic invalid request", streamAnthropic, ev("error", `{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}`), Stop, 400, 0, "in-stream error: invalid_request_error"},
		{"anthropic authentication", streamAnthropic, ev("error", `{"type":"error","error":{"type":"authentication_error"}}`), Stop, 401, 0, "in-stream error: authentication_error"},
		{"anthropic permission", streamAnthropic, ev("error", `{"type":"error","error":{"type":"permission_error"}}`), Stop, 403, 0, "in-stream error: permission_error"},
		{"anthropic not found", streamAnthropic, ev("error", `{"type":"error","error":{"type":"not_found_error"}}`), Stop, 404, 0, "in-stream error: not_found_error"},
		{"anthropic billing", streamAnthropic, ev("error", `{"type":"error","error":{"type":"billing_error","message":"pay"}}`), Stop, 402, 0, "in-stream error: billing_error"},
		{"anthropic spend limit", streamAnthropic, ev("error", `{"type":"error","error":{"type":"rate_limit_error","message":"limit","details":{"error_code":"enforced_spend_limit_reached"}}}`), Stop, 429, 0, "in-stream error: enforced_spend_limit_reached"},
		{"anthropic error of a kind not known", streamAnthropic, ev("error", `{"type":"error","error":{"type":"novel_error"}}`), Stop, 0, 0, "in-stream error: novel_error"},
		{"anthropic error that cannot be read", streamAnthropic, ev("error", `garbled`), Stop, 0, 0, "in-stream error"},
		{"openrouter 502", streamOpenAIChat, ev("", `{"error":{"code":502,"message":"Provider returned error"}}`), Retry, 502, 0, "in-stream error: 502"},
		{"openrouter 400", streamOpenAIChat, ev("", `{"error":{"code":400,"message":"bad"}}`), Stop, 400, 0, "in-stream error: 400"},
		{"openrouter 429 with a stated wait", streamOpenAIChat, ev("", `{"error":{"code":429,"message":"Rate limited. Please try again in 7s."}}`), Retry, 429, 7 * time.Second, "in-stream error: 429"},
		{"openai rate limit with a stated wait", streamOpenAIChat, ev("", `{"error":{"type":"tokens","code":"rate_limit_exceeded","message":"Please try again in 1.5s."}}`), Retry, 429, 1500 * time.Millisecond, "in-stream error: tokens"},
		{"openai quota", streamOpenAIChat, ev("", `{"error":{"type":"insufficient_quota","code":"insufficient_quota","message":"You exceeded your current quota"}}`), Stop, 429, 0, "in-stream error: insufficient_quota"},
		{"openai server error", streamOpenAIChat, ev("", `{"error":{"type":"server_error","code":null,"message":"x"}}`), Retry, 500, 0, "in-stream error: server_error"},
		{"openai invalid key", streamOpenAIChat, ev("", `{"error":{"type":"invalid_request_error","code":"invalid_api_key"}}`), Stop, 401, 0, "in-stream error: invalid_request_error"},
		{"response.failed server_error", streamResponses, ev("response.failed", `{"type":"response.failed","response":{"id":"r","status":"failed","error":{"code":"server_error","message":"The server had an error"}}}`), Retry, 500, 0, "in-stream error: server_error"},
		{"response.failed rate limit", streamResponses, ev("response.failed", `{"type":"response.failed","response":{"error":{"code":"rate_limit_exceeded","message":"Please try again in 2s."}}}`), Retry, 429, 2 * time.Second, "in-stream error: rate_limit_exceeded"},
		{"response.failed quota", streamResponses, ev("response.failed", `{"type":"response.failed","response":{"error":{"code":"insufficient_quota","message":"quota"}}}`), Stop, 429, 0, "in-stream error: insufficient_quota"},
		{"response.failed invalid prompt", streamResponses, ev("response.failed", `{"type":"response.failed","response":{"error":{"code":"invalid_prompt","message":"no"}}}`), Stop, 400, 0, "in-stream error: invalid_prompt"},
		{"response.failed without an error", streamResponses, ev("response.failed", `{"type":"response.failed","response":{"error":null}}`), Stop, 0, 0, "in-stream error"},
		{"responses error event", streamResponses, ev("error", `{"type":"error","code":"server_error","message":"x","param":null}`), Retry, 500, 0, "in-stream error: server_error"},
		{"responses error event of a kind not known", streamResponses, ev("error", `{"type":"error","code":"ERR_SOMETHING","message":"x"}`), Stop, 0, 0, "in-stream error: ERR_SOMETHING"},
		{"gemini unavailable", streamGemini, ev("", `{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}`), Retry, 503, 0, "in-stream error: UNAVAILABLE"},
		{"an upstream echoing a key in its kind", streamOpenAIChat, ev("", `{"error":{"type":"sk-Abc123xyz","code":503}}`), Retry, 503, 0, "in-stream error: (unrecognised)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := streamErrorDecision(tc.family, tc.ev, testNow)
			if d.Action != tc.action || d.Status != tc.status || d.Wait != tc.wait || d.Cause != tc.cause || d.Failure != FailureFirstEvent {
				t.Fatalf("got %v status %d wait %v cause %q failure %v; want %v %d %v %q",
					d.Action, d.Status, d.Wait, d.Cause, d.Failure, tc.action, tc.status, tc.wait, tc.cause)
			}
		})
	}
}

// A daily quota sent inside a stream stops, and says when it resets.
func TestStreamErrorDailyQuotaSaysWhenItResets(t *testing.T) {
	e := ev("", `{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","message":"quota","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]}]}}`)
	d := streamErrorDecision(streamGemini, e, testNow)
	if d.Action != Stop || d.Status != 429 || d.Source != SourceQuotaReset || d.Wait != untilPacificMidnight(testNow) {
		t.Fatalf("got %+v", d)
	}
}

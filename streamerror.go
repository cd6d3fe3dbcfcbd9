package llmretry

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// An error sent inside a 2xx stream, before anything reached the caller,
// is judged as the error response it stands for: the status its kind
// corresponds to, with the provider rules on its body. Anthropic says of
// its in-stream overloaded_error that it "would normally correspond to an
// HTTP 529".

// streamErrorDecision decides on an in-stream error event ev of a stream of
// family f, as StatusCodes and ProviderErrors decide on an error response
// with the status the error stands for and the error as its body: a status
// worth retrying is retried (after a wait the error states), unless the
// body says a quota or spend limit is used up, which stops, as does a
// status that retrying will not fix. Decision.Status is the status the
// error stands for, so that a failover Transport can treat an in-stream
// quota or rate limit as it treats the response (0 when the kind is not
// known). An error that cannot be read is delivered as it is.
func streamErrorDecision(f streamFamily, ev sseEvent, now time.Time) Decision {
	d := Decision{Action: Stop, Failure: FailureFirstEvent, Cause: "in-stream error"}
	body := streamErrorBody(f, ev)
	bv, ok := classifyErrorBody(body)
	if !ok {
		return d
	}
	d.Status = errorStatus(body)
	if bv.cause != "" {
		d.Cause += ": " + bv.cause
	}
	if bv.final {
		if bv.daily {
			d.Wait, d.Source = untilPacificMidnight(now), SourceQuotaReset
		}
		return d
	}
	retry := bv.transient
	if d.Status != 0 {
		retry = RetryableStatus(d.Status)
	}
	if retry {
		d.Action = Retry
		if bv.waitOK {
			d.Wait, d.Source = bv.wait, bv.src
		}
	}
	return d
}

// streamErrorBody returns an in-stream error as an error body of the
// common shape, {"error": {...}}, for classifyErrorBody: the event's data
// when it has that shape (Anthropic's event: error, OpenRouter's error
// object, Gemini's); for response.failed, its response.error; for the
// Responses API's error event, its top-level code and message. nil when
// there is none.
func streamErrorBody(f streamFamily, ev sseEvent) []byte {
	if v, ok := jsonMember(ev.data, "error"); ok && !jsonEmpty(v) {
		return ev.data
	}
	if f != streamResponses {
		return nil
	}
	if resp, ok := jsonMember(ev.data, "response"); ok {
		if v, ok := jsonMember(resp, "error"); ok && !jsonEmpty(v) {
			return append(append([]byte(`{"error":`), v...), '}')
		}
		return nil
	}
	var e struct {
		Code    json.RawMessage `json:"code"`
		Message string          `json:"message"`
	}
	if json.Unmarshal(ev.data, &e) != nil || (len(e.Code) == 0 && e.Message == "") {
		return nil
	}
	type inner struct {
		Code    json.RawMessage `json:"code,omitempty"`
		Message string          `json:"message"`
	}
	b, err := json.Marshal(struct {
		Error inner `json:"error"`
	}{inner{e.Code, e.Message}})
	if err != nil {
		return nil
	}
	return b
}

// errorStatus is the HTTP status an error body's kind stands for: its
// numeric code (OpenRouter, Gemini), else its code, its type or its status
// as errorKindStatus knows them; 0 when none is known.
func errorStatus(body []byte) int {
	var env errorEnvelope
	if json.Unmarshal(body, &env) != nil || env.Error == nil {
		return 0
	}
	e := env.Error
	code := strings.Trim(string(e.Code), `"`)
	if n, err := strconv.Atoi(code); err == nil && n >= 100 && n <= 599 {
		return n
	}
	for _, kind := range []string{code, e.Type, e.Status} {
		if s, ok := errorKindStatus[kind]; ok {
			return s
		}
	}
	return 0
}

// errorKindStatus is the status each error kind that providers send is
// documented with.
var errorKindStatus = map[string]int{
	// Anthropic error types (https://docs.anthropic.com/en/api/errors;
	// billing_error and timeout_error as the official SDKs name them:
	// BillingError, GatewayTimeoutError).
	"invalid_request_error": http.StatusBadRequest,
	"authentication_error":  http.StatusUnauthorized,
	"billing_error":         http.StatusPaymentRequired,
	"permission_error":      http.StatusForbidden,
	"not_found_error":       http.StatusNotFound,
	"request_too_large":     http.StatusRequestEntityTooLarge,
	"rate_limit_error":      http.StatusTooManyRequests,
	"api_error":             http.StatusInternalServerError,
	"timeout_error":         http.StatusGatewayTimeout,
	"overloaded_error":      529,

	// OpenAI error codes (chat completions' error.code, and the Responses
	// API's response.failed error.code); a rate limit's type is "requests"
	// or "tokens", so its code decides.
	"server_error":            http.StatusInternalServerError,
	"rate_limit_exceeded":     http.StatusTooManyRequests,
	"insufficient_quota":      http.StatusTooManyRequests,
	"invalid_api_key":         http.StatusUnauthorized,
	"model_not_found":         http.StatusNotFound,
	"context_length_exceeded": http.StatusBadRequest,
	// The Responses API's response.failed codes that name the request as
	// the problem.
	"invalid_prompt":                 http.StatusBadRequest,
	"invalid_image":                  http.StatusBadRequest,
	"invalid_image_format":           http.StatusBadRequest,
	"invalid_base64_image":           http.StatusBadRequest,
	"invalid_image_url":              http.StatusBadRequest,
	"image_too_large":                http.StatusBadRequest,
	"image_too_small":                http.StatusBadRequest,
	"image_parse_error":              http.StatusBadRequest,
	"image_content_policy_violation": http.StatusBadRequest,
	"invalid_image_mode":             http.StatusBadRequest,
	"image_file_too_large":           http.StatusBadRequest,
	"unsupported_image_media_type":   http.StatusBadRequest,
	"empty_image_file":               http.StatusBadRequest,
	"failed_to_download_image":       http.StatusBadRequest,
	"image_file_not_found":           http.StatusBadRequest,

	// Gemini (google.rpc.Code names, as its errors' "status").
	"INVALID_ARGUMENT":    http.StatusBadRequest,
	"FAILED_PRECONDITION": http.StatusBadRequest,
	"UNAUTHENTICATED":     http.StatusUnauthorized,
	"PERMISSION_DENIED":   http.StatusForbidden,
	"NOT_FOUND":           http.StatusNotFound,
	"RESOURCE_EXHAUSTED":  http.StatusTooManyRequests,
	"INTERNAL":            http.StatusInternalServerError,
	"UNAVAILABLE":         http.StatusServiceUnavailable,
	"DEADLINE_EXCEEDED":   http.StatusGatewayTimeout,
}

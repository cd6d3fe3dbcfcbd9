package mockllm

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
)

// API is the wire format a request speaks, told by its path.
type API int

const (
	Unknown   API = iota
	OpenAI        // POST .../chat/completions
	Anthropic     // POST .../messages
	Gemini        // POST .../models/M:generateContent or :streamGenerateContent
)

func (a API) String() string {
	return [...]string{"unknown", "openai", "anthropic", "gemini"}[a]
}

func apiOf(r *http.Request) API {
	p := r.URL.Path
	switch {
	case strings.HasSuffix(p, "/chat/completions"):
		return OpenAI
	case strings.HasSuffix(p, "/messages"):
		return Anthropic
	case strings.Contains(p, ":generateContent"), strings.Contains(p, ":streamGenerateContent"):
		return Gemini
	}
	return Unknown
}

// ReplyText is every canned reply, so a client can check that a stream
// arrived whole and once.
const ReplyText = "Hello! This is a deterministic reply from the llmretry mock provider, streamed word by word."

// replyChunks splits ReplyText into the deltas of a stream.
func replyChunks() []string {
	words := strings.SplitAfter(ReplyText, " ")
	return words
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only fixed shapes are marshalled
	}
	return string(b)
}

// jsonReply is the whole (non-streamed) reply.
func jsonReply(api API, model string) string {
	switch api {
	case Anthropic:
		return mustJSON(map[string]any{
			"id": "msg_mock", "type": "message", "role": "assistant", "model": model,
			"content":     []any{map[string]any{"type": "text", "text": ReplyText}},
			"stop_reason": "end_turn", "stop_sequence": nil,
			"usage": map[string]any{"input_tokens": 5, "output_tokens": 16},
		})
	case Gemini:
		return mustJSON(geminiChunk(ReplyText, true))
	default:
		return mustJSON(map[string]any{
			"id": "chatcmpl-mock", "object": "chat.completion", "created": 1700000000, "model": model,
			"choices": []any{map[string]any{
				"index": 0, "finish_reason": "stop",
				"message": map[string]any{"role": "assistant", "content": ReplyText},
			}},
			"usage": map[string]any{"prompt_tokens": 5, "completion_tokens": 16, "total_tokens": 21},
		})
	}
}

func geminiChunk(text string, last bool) map[string]any {
	c := map[string]any{
		"content": map[string]any{"role": "model", "parts": []any{map[string]any{"text": text}}},
		"index":   0,
	}
	if last {
		c["finishReason"] = "STOP"
	}
	return map[string]any{
		"candidates":    []any{c},
		"usageMetadata": map[string]any{"promptTokenCount": 5, "candidatesTokenCount": 16, "totalTokenCount": 21},
		"modelVersion":  "mock",
	}
}

// StreamEvents is the streamed reply in api's format, one SSE event a string.
func StreamEvents(api API, model string) []string {
	chunks := replyChunks()
	var ev []string
	switch api {
	case Anthropic:
		add := func(name string, v any) { ev = append(ev, "event: "+name+"\ndata: "+mustJSON(v)+"\n\n") }
		add("message_start", map[string]any{"type": "message_start", "message": map[string]any{
			"id": "msg_mock", "type": "message", "role": "assistant", "model": model, "content": []any{},
			"stop_reason": nil, "stop_sequence": nil, "usage": map[string]any{"input_tokens": 5, "output_tokens": 1}}})
		add("content_block_start", map[string]any{"type": "content_block_start", "index": 0,
			"content_block": map[string]any{"type": "text", "text": ""}})
		for _, c := range chunks {
			add("content_block_delta", map[string]any{"type": "content_block_delta", "index": 0,
				"delta": map[string]any{"type": "text_delta", "text": c}})
		}
		add("content_block_stop", map[string]any{"type": "content_block_stop", "index": 0})
		add("message_delta", map[string]any{"type": "message_delta",
			"delta": map[string]any{"stop_reason": "end_turn", "stop_sequence": nil},
			"usage": map[string]any{"output_tokens": 16}})
		add("message_stop", map[string]any{"type": "message_stop"})
	case Gemini:
		for i, c := range chunks {
			ev = append(ev, "data: "+mustJSON(geminiChunk(c, i == len(chunks)-1))+"\r\n\r\n")
		}
	default:
		chunk := func(delta map[string]any, finish any) string {
			return "data: " + mustJSON(map[string]any{
				"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1700000000, "model": model,
				"choices": []any{map[string]any{"index": 0, "delta": delta, "finish_reason": finish}},
			}) + "\n\n"
		}
		ev = append(ev, chunk(map[string]any{"role": "assistant", "content": ""}, nil))
		for _, c := range chunks {
			ev = append(ev, chunk(map[string]any{"content": c}, nil))
		}
		ev = append(ev, chunk(map[string]any{}, "stop"), "data: [DONE]\n\n")
	}
	return ev
}

// firstEventError is a stream whose first event is an overloaded error.
func firstEventError(api API) string {
	switch api {
	case Anthropic:
		return "event: error\ndata: " + mustJSON(map[string]any{"type": "error",
			"error": map[string]any{"type": "overloaded_error", "message": "Overloaded"}}) + "\n\n"
	case Gemini:
		return "data: " + mustJSON(map[string]any{"error": map[string]any{
			"code": 503, "status": "UNAVAILABLE", "message": "The model is overloaded."}}) + "\r\n\r\n"
	default: // as OpenRouter sends it, after its keep-alive comments
		return ": OPENROUTER PROCESSING\n\n" + "data: " + mustJSON(map[string]any{"error": map[string]any{
			"code": 502, "message": "Provider returned error"}}) + "\n\n"
	}
}

// errorBody is an error in the API's shape.
func errorBody(api API, code int) string {
	msg := fmt.Sprintf("mock provider: %d %s", code, http.StatusText(code))
	switch api {
	case Anthropic:
		typ := "api_error"
		switch code {
		case 429:
			typ = "rate_limit_error"
		case 529:
			typ = "overloaded_error"
		case 400:
			typ = "invalid_request_error"
		case 401:
			typ = "authentication_error"
		}
		return mustJSON(map[string]any{"type": "error", "error": map[string]any{"type": typ, "message": msg}})
	case Gemini:
		st := "INTERNAL"
		switch code {
		case 429:
			st = "RESOURCE_EXHAUSTED"
		case 503:
			st = "UNAVAILABLE"
		case 400:
			st = "INVALID_ARGUMENT"
		}
		return mustJSON(map[string]any{"error": map[string]any{"code": code, "message": msg, "status": st}})
	default:
		typ := "server_error"
		var c any
		if code == 429 {
			typ, c = "requests", "rate_limit_exceeded"
		} else if code < 500 {
			typ = "invalid_request_error"
		}
		return mustJSON(map[string]any{"error": map[string]any{"message": msg, "type": typ, "param": nil, "code": c}})
	}
}

// quotaBody is the API's "quota used up" 429.
func quotaBody(api API) string {
	switch api {
	case Anthropic:
		return mustJSON(map[string]any{"type": "error", "error": map[string]any{
			"type": "rate_limit_error", "message": "You have reached your specified API usage limits.",
			"details": map[string]any{"error_code": "enforced_spend_limit_reached"}}})
	case Gemini:
		return mustJSON(map[string]any{"error": map[string]any{
			"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "You exceeded your current quota.",
			"details": []any{map[string]any{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
				"violations": []any{map[string]any{"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}}}}}})
	default:
		return mustJSON(map[string]any{"error": map[string]any{
			"message": "You exceeded your current quota, please check your plan and billing details.",
			"type":    "insufficient_quota", "param": nil, "code": "insufficient_quota"}})
	}
}

// retryInfoBody is Gemini's RESOURCE_EXHAUSTED with a RetryInfo.
func retryInfoBody(delay string) string {
	return mustJSON(map[string]any{"error": map[string]any{
		"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "Resource has been exhausted (e.g. check quota).",
		"details": []any{map[string]any{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}}}})
}

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

// ReplyTextUTF8 is the canned reply of a request that sends
// "Mock-Reply: utf8" (ReplyHeader, ReplyUTF8). Its 2-, 3- and 4-byte UTF-8
// characters (ü ß é à ï Ω μ έ γ α; — 決定的な返信 € ✓; 🚀 😀 𝄞 🎉) are in
// each third of it, at word edges and inside words, and it ends in one,
// so a test can sweep a cut across UTF-8 boundaries. Its only whitespace
// is single ASCII spaces.
const ReplyTextUTF8 = "Grüße 🚀 — a déjà-vu reply from the llmretry mock: 決定的な返信 😀, naïve café, €5 for Ωμέγα, 𝄞 ✓ streamed word by word 🎉"

// ReplyHeader selects a request's canned reply: absent or ReplyASCII for
// ReplyText, ReplyUTF8 for ReplyTextUTF8. Any other value is answered 400.
// A continuation request carries the original's headers, so it continues
// the same reply.
const (
	ReplyHeader = "Mock-Reply"
	ReplyASCII  = "ascii"
	ReplyUTF8   = "utf8"
)

// replyFor is the canned reply a request asked for.
func replyFor(r *http.Request) (string, bool) {
	switch r.Header.Get(ReplyHeader) {
	case "", ReplyASCII:
		return ReplyText, true
	case ReplyUTF8:
		return ReplyTextUTF8, true
	}
	return "", false
}

// answer is what one reply carries: its text and how it names itself. A
// continuation has ids of its own, as a second response from a provider
// would, so a client that splices it can be seen to keep the first's.
type answer struct {
	text      string
	continued bool // a continuation: ids of its own
	prompt    int  // input tokens
}

// whole is the answer to a request that continues nothing.
func whole(text string) answer { return answer{text: text, prompt: 5} }

// ids are an answer's Anthropic message id, OpenAI completion id and
// OpenAI created.
func (a answer) ids() (msg, chatcmpl string, created int) {
	if a.continued {
		return "msg_mock_continued", "chatcmpl-mock-continued", 1700000060
	}
	return "msg_mock", "chatcmpl-mock", 1700000000
}

// chunks splits text into the deltas of a stream, word by word: every
// delta but the last ends in a space.
func chunks(text string) []string {
	var out []string
	for _, c := range strings.SplitAfter(text, " ") {
		if c != "" {
			out = append(out, c)
		}
	}
	return out
}

// usage is the token counts of an answer: a word is a token, and the end
// of the reply one more.
func (a answer) usage() (in, out int) { return a.prompt, len(chunks(a.text)) + 1 }

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only fixed shapes are marshalled
	}
	return string(b)
}

// jsonReply is the whole (non-streamed) reply.
func jsonReply(api API, model string, a answer) string {
	in, out := a.usage()
	msgID, chatID, created := a.ids()
	switch api {
	case Anthropic:
		return mustJSON(map[string]any{
			"id": msgID, "type": "message", "role": "assistant", "model": model,
			"content":     []any{map[string]any{"type": "text", "text": a.text}},
			"stop_reason": "end_turn", "stop_sequence": nil,
			"usage": map[string]any{"input_tokens": in, "output_tokens": out},
		})
	case Gemini:
		return mustJSON(geminiChunk(a, a.text, true))
	default:
		return mustJSON(map[string]any{
			"id": chatID, "object": "chat.completion", "created": created, "model": model,
			"choices": []any{map[string]any{
				"index": 0, "finish_reason": "stop",
				"message": map[string]any{"role": "assistant", "content": a.text},
			}},
			"usage": map[string]any{"prompt_tokens": in, "completion_tokens": out, "total_tokens": in + out},
		})
	}
}

func geminiChunk(a answer, text string, last bool) map[string]any {
	in, out := a.usage()
	c := map[string]any{
		"content": map[string]any{"role": "model", "parts": []any{map[string]any{"text": text}}},
		"index":   0,
	}
	if last {
		c["finishReason"] = "STOP"
	}
	return map[string]any{
		"candidates":    []any{c},
		"usageMetadata": map[string]any{"promptTokenCount": in, "candidatesTokenCount": out, "totalTokenCount": in + out},
		"modelVersion":  "mock",
	}
}

// StreamEvents is the streamed reply (ReplyText) in api's format, one SSE
// event a string.
func StreamEvents(api API, model string) []string {
	return streamEvents(api, model, whole(ReplyText))
}

// streamEvents is an answer streamed in api's format, one SSE event a
// string: a well-formed stream of its own, whatever text it carries.
func streamEvents(api API, model string, a answer) []string {
	deltas := chunks(a.text)
	in, out := a.usage()
	msgID, chatID, created := a.ids()
	var ev []string
	switch api {
	case Anthropic:
		add := func(name string, v any) { ev = append(ev, "event: "+name+"\ndata: "+mustJSON(v)+"\n\n") }
		add("message_start", map[string]any{"type": "message_start", "message": map[string]any{
			"id": msgID, "type": "message", "role": "assistant", "model": model, "content": []any{},
			"stop_reason": nil, "stop_sequence": nil, "usage": map[string]any{"input_tokens": in, "output_tokens": 1}}})
		add("content_block_start", map[string]any{"type": "content_block_start", "index": 0,
			"content_block": map[string]any{"type": "text", "text": ""}})
		for _, c := range deltas {
			add("content_block_delta", map[string]any{"type": "content_block_delta", "index": 0,
				"delta": map[string]any{"type": "text_delta", "text": c}})
		}
		add("content_block_stop", map[string]any{"type": "content_block_stop", "index": 0})
		add("message_delta", map[string]any{"type": "message_delta",
			"delta": map[string]any{"stop_reason": "end_turn", "stop_sequence": nil},
			"usage": map[string]any{"output_tokens": out}})
		add("message_stop", map[string]any{"type": "message_stop"})
	case Gemini:
		if len(deltas) == 0 {
			deltas = []string{""} // a Gemini stream is its chunks: one, to say STOP
		}
		for i, c := range deltas {
			ev = append(ev, "data: "+mustJSON(geminiChunk(a, c, i == len(deltas)-1))+"\r\n\r\n")
		}
	default:
		chunk := func(delta map[string]any, finish any) string {
			return "data: " + mustJSON(map[string]any{
				"id": chatID, "object": "chat.completion.chunk", "created": created, "model": model,
				"choices": []any{map[string]any{"index": 0, "delta": delta, "finish_reason": finish}},
			}) + "\n\n"
		}
		ev = append(ev, chunk(map[string]any{"role": "assistant", "content": ""}, nil))
		for _, c := range deltas {
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
	return errorMessage(api, code, fmt.Sprintf("mock provider: %d %s", code, http.StatusText(code)))
}

// errorMessage is an error in the API's shape, saying msg.
func errorMessage(api API, code int, msg string) string {
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

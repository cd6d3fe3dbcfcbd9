package llmretry

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"unicode/utf8"
)

// Continuation, opt-in (WithStreamContinuation): finish a stream that
// breaks after output reached the caller. The request is sent again with
// the text delivered so far as the assistant's turn, so that the model
// continues it, and the caller reads one stream: the delivered events, an
// SSE comment at the seam, then the continuation's, spliced so that no
// delivered byte is repeated and none is lost (splice.go).
//
// Where it applies: the broken stream answered an OpenAI chat completion or
// an Anthropic message, its body was replayable JSON, no tool call and no
// thinking was in it, and the deadline, the budget, Policy.MaxAttempts and
// the continuation cap all allow one more attempt. With it off (the
// default), nothing is ever sent again once output reached the caller.

// Continuation sets stream continuation.
type Continuation struct {
	// Max is how many times one stream may be continued. Default 1.
	Max int
	// OpenAIPrefix says how an OpenAI-compatible server is asked to go on
	// from the delivered text. OpenAI's own API has no prefill, so the
	// default, "", sends the delivered text as the assistant's message and
	// a short user message asking to continue exactly where it stopped.
	// "prefix" marks the assistant's message "prefix": true (DeepSeek's
	// beta API, Mistral); "vllm" sends continue_final_message (vLLM).
	OpenAIPrefix string
}

// continueInstruction is the user message that asks an OpenAI-compatible
// model, which has no prefill, to go on from its cut-off reply.
const continueInstruction = "Your previous reply was cut off. Continue it from exactly where it stopped: do not repeat anything, do not comment, just go on."

// WithStreamContinuation turns stream continuation on (see Continuation).
// A continuation counts as an attempt (Policy.MaxAttempts) and as a retry
// in the budget, and bills the prompt again. Where the broken stream had
// reported the output it used, the continuation's max_tokens (and OpenAI's
// max_completion_tokens) is lowered by it, and it is added to the output
// the continuation reports; what no stream reported is never guessed.
func WithStreamContinuation(c Continuation) Option {
	return func(cfg *config) {
		if c.Max <= 0 {
			c.Max = 1
		}
		cfg.continuation = &c
	}
}

// ContinuationOutcome is how a broken stream's continuation went.
type ContinuationOutcome int

const (
	// Continued: the continuation's stream was spliced in.
	Continued ContinuationOutcome = iota + 1
	// RefusedToolCall: not continued, as the stream carried tool-call
	// output: a tool call cannot be finished by prefill.
	RefusedToolCall
	// Refused: not continued for another reason (ContinuationEvent.Cause):
	// thinking output, a request option a seam could break, a reply that
	// was already whole, the deadline, the budget, the attempts.
	Refused
	// ContinuationFailed: the continuation's request got no stream.
	ContinuationFailed
	// OverCap: the stream was already continued Continuation.Max times.
	OverCap
	// Completed: the reply had said it was whole (a stop reason, a
	// finish_reason) and only the family's last event was missing, whether
	// the connection broke or closed cleanly: nothing is sent again, and
	// the caller's stream gets that last event (message_stop, [DONE])
	// after an SSE comment that says so.
	Completed
)

var outcomeNames = map[ContinuationOutcome]string{
	Continued: "continued", RefusedToolCall: "refused: tool call", Refused: "refused",
	ContinuationFailed: "failed", OverCap: "over the cap", Completed: "completed",
}

func (o ContinuationOutcome) String() string {
	if s, ok := outcomeNames[o]; ok {
		return s
	}
	return "ContinuationOutcome(?)"
}

// ContinuationEvent reports a stream that broke after output reached the
// caller, with continuation on, and what became of it.
type ContinuationEvent struct {
	Method string
	// URL has no query string and no user info.
	URL string
	// After is how many characters of output the caller had when the
	// stream broke; Seams, how many continuations came before this one.
	After, Seams int
	Outcome      ContinuationOutcome
	// Cause says why the stream broke, or why it was not continued.
	Cause string
	// PromptTokens and OutputTokens are the usage the broken stream had
	// reported when it broke (0: none reported): the output is added to the
	// usage the continuation reports, and the prompt, which the
	// continuation's own usage replaces, was billed all the same.
	PromptTokens, OutputTokens int
	// Target and Key name where the broken stream came from, and
	// NextTarget and NextKey where the continuation went (failover only;
	// with a model mapping, another model may have finished the answer).
	Target, Key, NextTarget, NextKey string
}

// WithOnContinuation calls f for each stream that broke after output
// reached the caller, with continuation on, from the goroutine reading the
// stream. f must not block.
func WithOnContinuation(f func(ContinuationEvent)) Option {
	return func(c *config) { c.onContinuation = f }
}

// continuable reports whether a stream answering req could ever be
// continued: its family is one continuation knows, and its body is
// replayable JSON with nothing a seam could break. cause says why not.
func continuable(req *http.Request, family streamFamily) (body map[string]json.RawMessage, cause string) {
	if family != streamAnthropic && family != streamOpenAIChat {
		return nil, "not an OpenAI chat or Anthropic messages stream"
	}
	if req.GetBody == nil {
		return nil, "request body not replayable"
	}
	rc, err := req.GetBody()
	if err != nil {
		return nil, "request body not replayable"
	}
	raw, err := io.ReadAll(io.LimitReader(rc, maxContinuedBody+1))
	_ = rc.Close()
	if err != nil || len(raw) > maxContinuedBody || json.Unmarshal(raw, &body) != nil || body == nil {
		return nil, "request body not replayable JSON"
	}
	var msgs []json.RawMessage
	if json.Unmarshal(body["messages"], &msgs) != nil || len(msgs) == 0 {
		return nil, "request has no messages"
	}
	has := func(name string) bool { v, ok := body[name]; return ok && !jsonEmpty(v) && string(v) != "false" }
	switch family {
	case streamAnthropic:
		if has("thinking") && !bytes.Contains(body["thinking"], []byte(`"disabled"`)) {
			return nil, "extended thinking (prefill is not supported with it)"
		}
		if has("stop_sequences") {
			return nil, "stop sequences (one could straddle the seam)"
		}
		if has("output_format") || bytes.Contains(body["output_config"], []byte(`"format"`)) {
			return nil, "structured output (a seam could break it)"
		}
	case streamOpenAIChat:
		var n int
		if json.Unmarshal(body["n"], &n) == nil && n > 1 {
			return nil, "n above 1"
		}
		if has("logprobs") || has("top_logprobs") {
			return nil, "logprobs"
		}
		var rf struct {
			Type string `json:"type"`
		}
		if has("response_format") && (json.Unmarshal(body["response_format"], &rf) != nil || rf.Type != "text") {
			return nil, "structured output (a seam could break it)"
		}
		if has("stop") {
			return nil, "stop sequences (one could straddle the seam)"
		}
	}
	return body, ""
}

// maxContinuedBody bounds the request body a continuation rebuilds.
const maxContinuedBody = 32 << 20

// continuationBody builds the continuation's request body from the
// original's: delivered is the text the caller has. For Anthropic, the
// text is sent as the assistant's prefill, which may not end in white
// space: trimmed is the white space left off, which the caller already has.
//
// form is how: for Anthropic "prefill" (a trailing assistant message) or
// "" (the instruction form, for a model that takes no prefill); for
// OpenAI-compatible servers Continuation.OpenAIPrefix.
func continuationBody(body map[string]json.RawMessage, family streamFamily, delivered []byte, form string) (out []byte, trimmed string, err error) {
	var msgs []map[string]json.RawMessage
	if err := json.Unmarshal(body["messages"], &msgs); err != nil {
		return nil, "", err
	}
	text := string(delivered)
	next := make(map[string]json.RawMessage, len(body)+2)
	for k, v := range body {
		next[k] = v
	}
	switch family {
	case streamAnthropic:
		last := msgs[len(msgs)-1]
		prefill := text
		if role, _ := stringOf(last["role"]); role == "assistant" {
			// The caller's own prefill: the reply goes on after it.
			own, ok := stringOf(last["content"])
			if !ok {
				return nil, "", errors.New("the request's own prefill is not plain text")
			}
			prefill = own + text
			msgs = msgs[:len(msgs)-1]
		}
		kept := strings.TrimRightFunc(prefill, isSpace)
		trimmed = prefill[len(kept):]
		if kept == "" {
			return nil, "", errors.New("nothing but white space was delivered")
		}
		msgs = append(msgs, map[string]json.RawMessage{"role": jsonString("assistant"), "content": jsonString(kept)})
		if form != "prefill" {
			msgs = append(msgs, map[string]json.RawMessage{"role": jsonString("user"), "content": jsonString(continueInstruction)})
		}
	default:
		assistant := map[string]json.RawMessage{"role": jsonString("assistant"), "content": jsonString(text)}
		switch form {
		case "prefix":
			assistant["prefix"] = json.RawMessage("true")
			msgs = append(msgs, assistant)
		case "vllm":
			msgs = append(msgs, assistant)
			next["continue_final_message"] = json.RawMessage("true")
			next["add_generation_prompt"] = json.RawMessage("false")
		default:
			msgs = append(msgs, assistant,
				map[string]json.RawMessage{"role": jsonString("user"), "content": jsonString(continueInstruction)})
		}
	}
	m, err := json.Marshal(msgs)
	if err != nil {
		return nil, "", err
	}
	next["messages"] = m
	out, err = json.Marshal(next)
	return out, trimmed, err
}

func isSpace(r rune) bool { return r == ' ' || r == '\t' || r == '\n' || r == '\r' }

func jsonString(s string) json.RawMessage {
	b, _ := json.Marshal(s)
	return b
}

// stringOf decodes a JSON string; ok is false for anything else.
func stringOf(raw json.RawMessage) (string, bool) {
	var s string
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

// continuing reports a continuation to the observers.
func (t *Transport) continuing(req *http.Request, ev ContinuationEvent) {
	if t.cfg.onContinuation != nil {
		t.cfg.onContinuation(ev)
	}
	if t.cfg.logger != nil {
		level := slog.LevelInfo
		if ev.Outcome != Continued {
			level = slog.LevelWarn
		}
		attrs := []slog.Attr{slog.String("method", ev.Method), slog.String("url", ev.URL),
			slog.Int("after_chars", ev.After), slog.Int("seams", ev.Seams),
			slog.String("outcome", ev.Outcome.String()), slog.String("cause", ev.Cause)}
		if ev.Target != "" {
			attrs = append(attrs, slog.String("target", ev.Target), slog.String("key", ev.Key),
				slog.String("next_target", ev.NextTarget), slog.String("next_key", ev.NextKey))
		}
		t.cfg.logger.LogAttrs(req.Context(), level, "llmretry: stream broke after output", attrs...)
	}
}

// runeCount is the number of characters of text.
func runeCount(text []byte) int { return utf8.RuneCount(text) }

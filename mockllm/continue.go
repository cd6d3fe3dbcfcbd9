package mockllm

import (
	"encoding/json"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// The mock is a model that always writes the same reply (ReplyText, or
// ReplyTextUTF8). A request that hands it part of that reply as the
// assistant's turn, in a form its API uses for continuing, gets the rest.

// Forms of continuation request, as continuation.form names them.
const (
	formPrefill     = "Anthropic prefill"
	formInstruction = "instruction"
	formPrefix      = "prefix"
	formVLLM        = "continue_final_message"
)

// chatRequest is what the mock reads of a request body.
type chatRequest struct {
	Model    string        `json:"model"`
	Stream   bool          `json:"stream"`
	Messages []chatMessage `json:"messages"`
	// vLLM's continuation: continue the final (assistant) message, with
	// add_generation_prompt false.
	ContinueFinalMessage bool  `json:"continue_final_message"`
	AddGenerationPrompt  *bool `json:"add_generation_prompt"`
}

type chatMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
	Prefix  bool            `json:"prefix"` // DeepSeek's and Mistral's prefix completion
}

// text is a message's text: its content string, or its text parts (blocks)
// joined.
func (m chatMessage) text() string {
	var s string
	if json.Unmarshal(m.Content, &s) == nil {
		return s
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	_ = json.Unmarshal(m.Content, &parts)
	var b strings.Builder
	for _, p := range parts {
		if p.Type == "text" {
			b.WriteString(p.Text)
		}
	}
	return b.String()
}

// continuation is what a request continues: the reply text the caller
// already has, and the form it was asked in ("" when the request
// continues nothing).
type continuation struct {
	form      string
	delivered string
	trimmed   int // of delivered, the whitespace a prefill had to drop
}

// continuationOf reads a request as a continuation of reply. A request
// that is malformed as a continuation, or whose text is not where reply
// begins (a wrong seam), gets an error, to be answered 400.
func continuationOf(api API, req chatRequest, reply string) (continuation, error) {
	msgs := req.Messages
	if len(msgs) == 0 {
		if req.ContinueFinalMessage {
			return continuation{}, fmt.Errorf("continue_final_message is set but there are no messages")
		}
		return continuation{}, nil
	}
	last := msgs[len(msgs)-1]
	var c continuation
	switch api {
	case Anthropic:
		// Native prefill: a final assistant turn, which Claude continues.
		if last.Role != "assistant" {
			return c, nil
		}
		prefill := last.text()
		if prefill != strings.TrimRightFunc(prefill, unicode.IsSpace) {
			return c, fmt.Errorf("messages: final assistant content cannot end with trailing whitespace")
		}
		if prefill == "" {
			return c, nil
		}
		if !strings.HasPrefix(reply, prefill) {
			return c, wrongSeam(formPrefill, prefill, reply)
		}
		// The caller saw the whitespace that follows the prefill in the
		// reply (the mock streams word by word, so whole events end in
		// it), and the prefill had to drop it.
		after := reply[len(prefill):]
		ws := len(after) - len(strings.TrimLeftFunc(after, unicode.IsSpace))
		return continuation{form: formPrefill, delivered: reply[:len(prefill)+ws], trimmed: ws}, nil
	case OpenAI:
		for i, m := range msgs {
			if m.Prefix && (i != len(msgs)-1 || m.Role != "assistant") {
				return c, fmt.Errorf("messages[%d]: prefix is only allowed on the last message, an assistant's", i)
			}
		}
		switch {
		case req.ContinueFinalMessage:
			if req.AddGenerationPrompt == nil || *req.AddGenerationPrompt {
				return c, fmt.Errorf("continue_final_message: Cannot set both `continue_final_message` and `add_generation_prompt` to True. (add_generation_prompt defaults to true: send it false)")
			}
			if last.Role != "assistant" {
				return c, fmt.Errorf("continue_final_message is set but the final message is a %q message, not an assistant's", last.Role)
			}
			c = continuation{form: formVLLM, delivered: last.text()}
		case last.Role == "assistant" && last.Prefix:
			c = continuation{form: formPrefix, delivered: last.text()}
		case len(msgs) >= 2 && last.Role == "user" && msgs[len(msgs)-2].Role == "assistant" &&
			strings.Contains(strings.ToLower(last.text()), "continue"):
			c = continuation{form: formInstruction, delivered: msgs[len(msgs)-2].text()}
		default:
			return c, nil // a final assistant turn alone is history, not a prefix
		}
		if c.delivered == "" {
			return continuation{}, nil
		}
		if !strings.HasPrefix(reply, c.delivered) {
			return continuation{}, wrongSeam(c.form, c.delivered, reply)
		}
		return c, nil
	}
	return c, nil
}

// wrongSeam says where a continuation's text leaves the reply.
func wrongSeam(form, delivered, reply string) error {
	i := 0
	for i < len(delivered) && i < len(reply) && delivered[i] == reply[i] {
		i++
	}
	return fmt.Errorf("mock provider: %s continuation: the assistant text (%d bytes) is not the start of the mock's reply: it departs from it at byte %d, %q where the reply has %q",
		form, len(delivered), i, clip(delivered[i:]), clip(reply[min(i, len(reply)):]))
}

func clip(s string) string {
	if len(s) <= 24 {
		return s
	}
	i := 24
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "..."
}

// rest is what a continuation of reply serves: from the seam, or overlap
// bytes before it (clamped to what was delivered, and moved back to the
// start of a character), as a model restarts a sentence. With
// repeatTrimmed the seam is the end of a prefill, before the whitespace
// it dropped.
func (c continuation) rest(reply string, overlap int, repeatTrimmed bool) string {
	seam := len(c.delivered)
	if repeatTrimmed {
		seam -= c.trimmed
	}
	start := seam - max(overlap, 0)
	if start < 0 {
		start = 0
	}
	for start > 0 && start < len(reply) && !utf8.RuneStart(reply[start]) {
		start--
	}
	return reply[start:]
}

package llmretry

import (
	"bytes"
	"net/http"
	"strings"
)

// streamFamily is the API a stream speaks, which says which of its events
// carry output, which end it, and how it reports an error. It is read from
// the request's path and from the events' own shape, never from the host:
// one host (a gateway, a local server) can serve several families.
type streamFamily uint8

const (
	// streamUnknown: a stream of no family recognised; its first event is
	// taken as output.
	streamUnknown streamFamily = iota
	// streamAnthropic: Anthropic Messages (POST .../v1/messages), named
	// events message_start ... message_stop.
	streamAnthropic
	// streamOpenAIChat: OpenAI chat completions and the servers compatible
	// with it (POST .../chat/completions), data-only chunks and [DONE].
	streamOpenAIChat
	// streamResponses: the OpenAI Responses API (POST .../responses),
	// named events response.created ... response.completed.
	streamResponses
	// streamGemini: Gemini's streamGenerateContent with alt=sse, every
	// event a whole GenerateContentResponse.
	streamGemini
)

var streamFamilyNames = [...]string{streamUnknown: "unknown", streamAnthropic: "anthropic",
	streamOpenAIChat: "openai-chat", streamResponses: "openai-responses", streamGemini: "gemini"}

func (f streamFamily) String() string {
	if int(f) < len(streamFamilyNames) {
		return streamFamilyNames[f]
	}
	return "streamFamily(?)"
}

// streamFamilyOf reads a stream's family from its request's path: the
// endpoint each family streams from, wherever it is mounted ("/v1/messages",
// "/anthropic/v1/messages", "/openai/deployments/d/chat/completions"). A
// path it does not know is streamUnknown; the events may still name the
// family (see streamEvents).
func streamFamilyOf(req *http.Request) streamFamily {
	if req == nil || req.URL == nil {
		return streamUnknown
	}
	p := strings.TrimSuffix(req.URL.Path, "/")
	switch {
	case strings.HasSuffix(p, "/messages"):
		return streamAnthropic
	case strings.HasSuffix(p, "/chat/completions"):
		return streamOpenAIChat
	case strings.HasSuffix(p, "/responses"):
		return streamResponses
	case strings.Contains(p, ":streamGenerateContent"):
		return streamGemini
	}
	return streamUnknown
}

// familyOfEvent reads the family an event's shape names, if it names one:
// an Anthropic event name (message_start, content_block_delta, ping ...) or
// a "response." one, or for a data-only event, its JSON "type" naming one
// of those, or a "choices" (OpenAI chat) or "candidates" (Gemini) member,
// or [DONE]. An error event names no family: every family can send one.
func familyOfEvent(ev sseEvent) (streamFamily, bool) {
	if len(ev.name) > 0 {
		return familyOfKind(ev.name)
	}
	if isDone(ev.data) {
		return streamOpenAIChat, true
	}
	it, ok := jsonIterate(ev.data)
	if !ok || !it.object {
		return streamUnknown, false
	}
	for {
		k, ok := it.member() // a value is read only when its key asks for it
		if !ok {
			return streamUnknown, false
		}
		switch string(k) {
		case "type":
			v, _ := it.value()
			if f, ok := familyOfKind(jsonStringContents(v)); ok {
				return f, true
			}
		case "choices":
			return streamOpenAIChat, true
		case "candidates":
			return streamGemini, true
		}
	}
}

// familyOfKind reads the family an event's kind (its name, or its data's
// "type") names.
func familyOfKind(kind []byte) (streamFamily, bool) {
	switch string(kind) {
	case "message_start", "content_block_start", "content_block_delta", "content_block_stop",
		"message_delta", "message_stop", "ping":
		return streamAnthropic, true
	}
	if bytes.HasPrefix(kind, []byte("response.")) {
		return streamResponses, true
	}
	return streamUnknown, false
}

// streamEvents follows the events of one stream: its family, read from the
// request's path and settled by the first event whose shape names a family
// (which wins over the path), and the role of each event in it. It is
// small, copyable, and allocates nothing: the stream hold uses it up to the
// first output, and a watcher can go on with the same value after the
// hand-over.
type streamEvents struct {
	family  streamFamily
	settled bool // an event named the family: the path is no longer asked
}

// newStreamEvents starts following the stream that answers req.
func newStreamEvents(req *http.Request) streamEvents {
	return streamEvents{family: streamFamilyOf(req)}
}

// role returns ev's role in the stream, settling the family on the way.
func (s *streamEvents) role(ev sseEvent) eventRole {
	if !s.settled {
		if f, ok := familyOfEvent(ev); ok {
			s.family, s.settled = f, true
		}
	}
	return s.family.role(ev)
}

package llmretry

import "bytes"

// eventRole is what one event of a stream is, for its family: what it
// carries (output, or nothing yet), whether it ends the reply or the
// stream, and whether it is an error. It is a set: a chunk can carry the
// last words and the finish_reason at once, and response.failed is both
// the Responses API's last event and an error. The zero role is an opening
// event: it carries nothing (message_start, an empty content_block_start, a
// ping, a role-only chunk, response.created).
//
// Only events known to carry nothing are opening events. Anything a family
// does not name (a new event type, a chunk of a shape not seen before, data
// that is not JSON) counts as output, so that an unfamiliar stream is
// handed over at its first event, as before, rather than held.
type eventRole uint8

const (
	// roleOutput: the event carries output: text, a refusal, reasoning or
	// thinking, a tool call (its name or its arguments).
	roleOutput eventRole = 1 << iota
	// roleEnd: the event says the reply is complete: Anthropic's
	// message_delta with a stop_reason and message_stop; an OpenAI chunk
	// with a finish_reason, a usage chunk and [DONE]; response.completed
	// and response.incomplete; a Gemini chunk with a finishReason. Nothing
	// more will be generated after it.
	roleEnd
	// roleTerminal: the family's last event, after which a whole stream
	// sends nothing: Anthropic's message_stop, OpenAI's [DONE],
	// response.completed, response.incomplete or response.failed, and a
	// Gemini chunk with a finishReason. A stream that ends without one
	// was cut short, even if it ended cleanly; a stream of an unknown
	// family has none.
	roleTerminal
	// roleError: an error sent inside the stream: Anthropic's event:
	// error, a data: {"error": ...} object (OpenRouter and others),
	// response.failed and the Responses API's error event.
	roleError
)

// roleOpening is the zero role: an event that carries nothing yet.
const roleOpening eventRole = 0

// decides reports an event that ends the stream hold: output, an end, or
// an error. Only opening events are held past.
func (r eventRole) decides() bool { return r != roleOpening }

func (r eventRole) isOutput() bool   { return r&roleOutput != 0 }
func (r eventRole) isEnd() bool      { return r&roleEnd != 0 }
func (r eventRole) isTerminal() bool { return r&roleTerminal != 0 }
func (r eventRole) isError() bool    { return r&roleError != 0 }

// role returns ev's role in a stream of family f.
func (f streamFamily) role(ev sseEvent) eventRole {
	switch f {
	case streamAnthropic:
		return anthropicRole(ev)
	case streamOpenAIChat:
		return chatRole(ev)
	case streamResponses:
		return responsesRole(ev)
	case streamGemini:
		return geminiRole(ev)
	}
	return unknownRole(ev)
}

// eventKind is an event's type: its name, or for an unnamed event its
// data's "type" (Anthropic and the Responses API write both).
func eventKind(ev sseEvent) []byte {
	if len(ev.name) > 0 {
		return ev.name
	}
	return jsonStringMember(ev.data, "type")
}

// anthropicRole: Anthropic Messages. Output begins with a
// content_block_delta of any kind (text, input_json, thinking, signature,
// citations), or a content_block_start whose block already carries
// something (a tool_use names a tool; text or thinking already written).
func anthropicRole(ev sseEvent) eventRole {
	switch string(eventKind(ev)) {
	case "message_start", "ping", "content_block_stop":
		return roleOpening
	case "content_block_start":
		if emptyContentBlock(ev.data) {
			return roleOpening
		}
		return roleOutput
	case "content_block_delta":
		return roleOutput
	case "message_delta":
		delta, ok := jsonMember(ev.data, "delta")
		if !ok {
			if _, isObject := jsonIterate(ev.data); isObject {
				return roleOpening // usage alone
			}
			return roleOutput // unreadable: not known to carry nothing
		}
		if v, ok := jsonMember(delta, "stop_reason"); ok && !jsonEmpty(v) {
			return roleEnd
		}
		return roleOpening
	case "message_stop":
		return roleEnd | roleTerminal
	case "error":
		return roleError
	}
	return roleOutput
}

// emptyContentBlock reports a content_block_start whose block carries
// nothing yet: a text block with empty text, or a thinking block with empty
// thinking. Any other block (tool_use, server_tool_use, redacted_thinking,
// a result) carries output, and so does one that cannot be read.
func emptyContentBlock(data []byte) bool {
	block, ok := jsonMember(data, "content_block")
	if !ok {
		return false
	}
	var text []byte
	switch string(jsonStringMember(block, "type")) {
	case "text":
		text, ok = jsonMember(block, "text")
	case "thinking":
		text, ok = jsonMember(block, "thinking")
	default:
		return false
	}
	return !ok || jsonEmpty(text)
}

// chatRole: OpenAI chat completions and compatible servers. Output is a
// chunk whose delta carries anything but its role (content, a refusal,
// tool_calls, a function_call, reasoning or reasoning_content, audio ...);
// a chunk with a finish_reason or a usage object, and [DONE], end it; a
// chunk with a non-null "error" is an error. A first chunk with no choices
// (Azure's prompt_filter_results) carries nothing.
func chatRole(ev sseEvent) eventRole {
	if string(ev.name) == "error" {
		return roleError
	}
	if isDone(ev.data) {
		return roleEnd | roleTerminal
	}
	it, ok := jsonIterate(ev.data)
	if !ok || !it.object {
		return roleOutput
	}
	var role eventRole
	chunk := false
	for {
		k, ok := it.member()
		if !ok {
			break
		}
		switch string(k) {
		case "error":
			if v, ok := it.value(); ok && !jsonEmpty(v) {
				return roleError
			}
		case "choices":
			chunk = true
			role |= choicesRole(&it)
		case "usage":
			if v, ok := it.value(); ok && !jsonEmpty(v) {
				chunk = true
				role |= roleEnd
			}
		}
	}
	if it.malformed() || !chunk {
		return roleOutput
	}
	return role
}

// choicesRole reads a chunk's choices, the value parent is at, walking
// into it rather than reading it whole first (as each role function
// below does: an event's bytes are read once).
func choicesRole(parent *jsonIter) eventRole {
	it, ok := parent.enter()
	if !ok || it.object {
		if ok {
			parent.leave(&it)
		}
		return roleOutput
	}
	var role eventRole
	for {
		if _, ok := it.member(); !ok {
			break
		}
		role |= choiceRole(&it)
	}
	parent.leave(&it)
	if it.malformed() {
		return roleOutput
	}
	return role
}

func choiceRole(parent *jsonIter) eventRole {
	it, ok := parent.enter()
	if !ok || !it.object {
		if ok {
			parent.leave(&it)
		}
		return roleOutput
	}
	var role eventRole
	for {
		k, ok := it.member()
		if !ok {
			break
		}
		switch string(k) {
		case "delta":
			role |= deltaRole(&it)
		case "finish_reason":
			if v, ok := it.value(); ok && !jsonEmpty(v) {
				role |= roleEnd
			}
		case "index", "logprobs", "native_finish_reason", "content_filter_results":
			// They carry no output of their own.
		default:
			// "text" (legacy completions), or a field not seen before.
			if v, ok := it.value(); ok && !jsonEmpty(v) {
				role |= roleOutput
			}
		}
	}
	parent.leave(&it)
	if it.malformed() {
		return roleOutput
	}
	return role
}

// deltaRole: a delta carries output when any member but its role has a
// value: {"role":"assistant","content":""} carries nothing.
func deltaRole(parent *jsonIter) eventRole {
	it, ok := parent.enter()
	if !ok {
		if v, ok := parent.value(); ok && jsonEmpty(v) { // null, ""
			return roleOpening
		}
		return roleOutput
	}
	if !it.object { // [] carries nothing; any other array, output
		_, more := it.member()
		parent.leave(&it)
		if more || it.malformed() {
			return roleOutput
		}
		return roleOpening
	}
	role := roleOpening
	for {
		k, ok := it.member()
		if !ok {
			break
		}
		if string(k) == "role" {
			continue
		}
		if v, ok := it.value(); ok && !jsonEmpty(v) {
			role = roleOutput
			break
		}
	}
	parent.leave(&it)
	if it.malformed() {
		return roleOutput
	}
	return role
}

// responsesRole: the OpenAI Responses API. It opens with response.created
// and response.in_progress, then an output item and a content part are
// added before their first delta; those carry nothing.
func responsesRole(ev sseEvent) eventRole {
	switch string(eventKind(ev)) {
	case "response.created", "response.in_progress", "response.queued",
		"response.output_item.added", "response.content_part.added",
		"response.reasoning_summary_part.added":
		return roleOpening
	case "response.completed", "response.incomplete":
		return roleEnd | roleTerminal
	case "response.failed":
		return roleError | roleTerminal
	case "error":
		return roleError
	}
	return roleOutput
}

// geminiRole: Gemini. Every chunk is a whole response, output from the
// first; a chunk with a finishReason is the last.
func geminiRole(ev sseEvent) eventRole {
	if string(ev.name) == "error" {
		return roleError
	}
	it, ok := jsonIterate(ev.data)
	if !ok || !it.object {
		return roleOutput
	}
	role := roleOutput
	for {
		k, v, ok := it.next()
		if !ok {
			return role
		}
		switch string(k) {
		case "error":
			if !jsonEmpty(v) {
				return roleError
			}
		case "candidates":
			if anyMemberSet(v, "finishReason") {
				role |= roleEnd | roleTerminal
			}
		}
	}
}

// anyMemberSet reports whether an element of the array arr has a non-empty
// member key.
func anyMemberSet(arr []byte, key string) bool {
	it, ok := jsonIterate(arr)
	if !ok || it.object {
		return false
	}
	for {
		_, el, ok := it.next()
		if !ok {
			return false
		}
		if v, ok := jsonMember(el, key); ok && !jsonEmpty(v) {
			return true
		}
	}
}

// unknownRole: a stream of no known family. Its first event decides, as
// it always has: an error (event: error, or data with a non-null "error"
// member) or output.
func unknownRole(ev sseEvent) eventRole {
	if string(ev.name) == "error" {
		return roleError
	}
	if bytes.Contains(ev.data, []byte(`"error"`)) {
		if v, ok := jsonMember(ev.data, "error"); ok && !jsonEmpty(v) {
			return roleError
		}
	}
	return roleOutput
}

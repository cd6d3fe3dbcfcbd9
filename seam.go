package llmretry

import (
	"bytes"
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// The seam of a continued stream: what the caller was given (delivered),
// and how a continuation's events are rewritten so that the caller reads
// one well-formed stream.
//
// Anthropic: no second message_start; the interrupted text block goes on
// (the continuation's first text block is its continuation) or, when the
// cut fell between blocks, block indices go on after the last one; one
// message_stop. OpenAI chat: every chunk keeps the first attempt's id,
// created and model; no second role chunk; one finish_reason; one [DONE].
//
// The seam is exact in bytes. A model often restarts a sentence: the
// longest suffix of the delivered text that the continuation's text starts
// with, if at least minOverlap bytes, is removed. Anthropic's prefill may
// not end in white space, so the white space left off it (which the caller
// already has) is removed from the continuation's start too, as far as the
// continuation repeats it. What the model says after the seam is the
// model's own: nothing else is removed or added.

const (
	// minOverlap is the shortest repeat removed at the seam: a shorter
	// one ("the the") may be the model's own words.
	minOverlap = 8
	// seamWindow is how much of a continuation's text is held to find a
	// repeat, and how far back in the delivered text a repeat may start.
	seamWindow = 512
)

// delivery is what the caller has been given of a stream, as far as a
// continuation needs it. Tracking it costs no allocation per event but
// the growth of the delivered text.
type delivery struct {
	family streamFamily
	text   textBuf // the output text, decoded
	// What forbids a continuation.
	toolSeen, thinkingSeen, refusalSeen bool
	// complete: the reply said it was whole: Anthropic's stop_reason, or a
	// finish_reason on every choice seen (never usage alone: some servers
	// send it in every chunk).
	complete bool
	// OpenAI: the choices seen, and those finished, by index (bits).
	choices, finished uint64
	truncated         bool // an event outgrew the tracking limit
	// Anthropic: the block open at the cut (-1: none), and the last index.
	openIndex, lastIndex int
	// OpenAI: the first chunk's id, created and model, as written.
	id, created, model []byte
	// ended: the family's last event (message_stop, [DONE]) was given.
	ended bool
	// The usage the given events reported (-1: none). Providers report
	// it as a running total, so the last figure is the one kept: OpenAI's
	// usage.completion_tokens and prompt_tokens (in the last chunk, or in
	// every chunk with vLLM's continuous usage), Anthropic's
	// usage.output_tokens and input_tokens (message_start, message_delta).
	outTokens, promptTokens int
}

func newDelivery(f streamFamily) delivery {
	return delivery{family: f, openIndex: -1, lastIndex: -1, outTokens: -1, promptTokens: -1}
}

// usage reads a usage object's output and prompt figures, each when it is
// there: out and prompt are the names the family gives them.
func (d *delivery) usage(u []byte, out, prompt string) {
	if n := jsonInt(u, out); n >= 0 {
		d.outTokens = n
	}
	if n := jsonInt(u, prompt); n >= 0 {
		d.promptTokens = n
	}
}

// observe reads one event the caller is given.
func (d *delivery) observe(ev sseEvent) {
	if ev.truncated {
		d.truncated = true
	}
	switch d.family {
	case streamAnthropic:
		d.observeAnthropic(ev)
	case streamOpenAIChat:
		d.observeChat(ev)
	}
}

func (d *delivery) observeAnthropic(ev sseEvent) {
	kind := eventKind(ev)
	switch string(kind) {
	case "content_block_start":
		idx := jsonInt(ev.data, "index")
		d.lastIndex = max(d.lastIndex, idx)
		block, _ := jsonMember(ev.data, "content_block")
		switch string(jsonStringMember(block, "type")) {
		case "text":
			d.openIndex = idx
			if t, ok := jsonMember(block, "text"); ok {
				d.text.appendJSON(t)
			}
		case "thinking", "redacted_thinking":
			d.thinkingSeen, d.openIndex = true, idx
		default: // tool_use, server_tool_use, results: a tool call
			d.toolSeen, d.openIndex = true, idx
		}
	case "content_block_delta":
		delta, _ := jsonMember(ev.data, "delta")
		switch string(jsonStringMember(delta, "type")) {
		case "text_delta":
			if t, ok := jsonMember(delta, "text"); ok {
				d.text.appendJSON(t)
			}
		case "thinking_delta", "signature_delta":
			d.thinkingSeen = true
		case "citations_delta":
		default:
			d.toolSeen = true // input_json_delta, and anything not known to be text
		}
	case "content_block_stop":
		if jsonInt(ev.data, "index") == d.openIndex {
			d.openIndex = -1
		}
	case "message_start":
		msg, _ := jsonMember(ev.data, "message")
		if u, ok := jsonMember(msg, "usage"); ok {
			d.usage(u, "output_tokens", "input_tokens")
		}
	case "message_delta":
		delta, _ := jsonMember(ev.data, "delta")
		if v, ok := jsonMember(delta, "stop_reason"); ok && !jsonEmpty(v) {
			d.complete = true
		}
		if u, ok := jsonMember(ev.data, "usage"); ok {
			d.usage(u, "output_tokens", "input_tokens")
		}
	case "message_stop":
		d.complete, d.ended = true, true
	}
}

func (d *delivery) observeChat(ev sseEvent) {
	if isDone(ev.data) {
		d.ended = true
		return
	}
	// One walk over the chunk's members: this runs for every chunk.
	top, ok := jsonIterate(ev.data)
	if !ok || !top.object {
		return
	}
	var id, model, created, choices []byte
	for {
		k, v, ok := top.next()
		if !ok {
			break
		}
		switch string(k) {
		case "id":
			id = v
		case "model":
			model = v
		case "created":
			created = v
		case "choices":
			choices = v
		case "usage":
			if !jsonEmpty(v) { // OpenAI writes "usage":null in every chunk but the last
				d.usage(v, "completion_tokens", "prompt_tokens")
			}
		}
	}
	if d.id == nil {
		if v := jsonStringContents(id); v != nil {
			d.id = append([]byte{}, v...)
			d.model = append([]byte{}, jsonStringContents(model)...)
			d.created = append([]byte{}, created...)
		}
	}
	it, ok := jsonIterate(choices)
	if !ok {
		return
	}
	for {
		_, choice, ok := it.next()
		if !ok {
			d.complete = d.choices != 0 && d.finished == d.choices
			return
		}
		if idx := jsonInt(choice, "index"); idx >= 0 && idx < 64 {
			d.choices |= 1 << idx
			if v, ok := jsonMember(choice, "finish_reason"); ok && !jsonEmpty(v) {
				d.finished |= 1 << idx
			}
		}
		delta, _ := jsonMember(choice, "delta")
		dit, ok := jsonIterate(delta)
		if !ok || !dit.object {
			continue
		}
		for {
			k, v, ok := dit.next()
			if !ok {
				break
			}
			switch string(k) {
			case "content":
				d.text.appendJSON(v)
			case "tool_calls", "function_call":
				if !jsonEmpty(v) {
					d.toolSeen = true
				}
			case "refusal":
				if !jsonEmpty(v) {
					d.refusalSeen = true
				}
			case "reasoning", "reasoning_content":
				if !jsonEmpty(v) {
					d.thinkingSeen = true
				}
			}
		}
	}
}

// jsonInt reads obj's member key as a small non-negative integer; -1 if it
// is not one.
func jsonInt(obj []byte, key string) int {
	v, ok := jsonMember(obj, key)
	if !ok {
		return -1
	}
	n, err := strconv.Atoi(string(bytes.TrimSpace(v)))
	if err != nil || n < 0 {
		return -1
	}
	return n
}

// appendJSONString appends the decoded text of the JSON string v (with
// its quotes) to dst. A value that is not a string appends nothing.
func appendJSONString(dst, v []byte) []byte {
	s := jsonStringContents(v)
	if s == nil {
		return dst
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' {
			dst = append(dst, c)
			continue
		}
		if i+1 >= len(s) {
			return dst
		}
		i++
		switch s[i] {
		case 'n':
			dst = append(dst, '\n')
		case 't':
			dst = append(dst, '\t')
		case 'r':
			dst = append(dst, '\r')
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'u':
			if i+4 >= len(s) {
				return dst
			}
			r := rune(hexVal(s[i+1 : i+5]))
			i += 4
			if utf16High(r) && i+6 < len(s) && s[i+1] == '\\' && s[i+2] == 'u' {
				lo := rune(hexVal(s[i+3 : i+7]))
				if lo >= 0xdc00 && lo < 0xe000 {
					r = 0x10000 + (r-0xd800)<<10 + (lo - 0xdc00)
					i += 6
				}
			}
			if r < 0 || utf16High(r) || r >= 0xdc00 && r < 0xe000 {
				r = utf8.RuneError
			}
			dst = utf8.AppendRune(dst, r)
		default: // " \ /
			dst = append(dst, s[i])
		}
	}
	return dst
}

func utf16High(r rune) bool { return r >= 0xd800 && r < 0xdc00 }

func hexVal(h []byte) int {
	n := 0
	for _, c := range h {
		switch {
		case c >= '0' && c <= '9':
			n = n<<4 | int(c-'0')
		case c >= 'a' && c <= 'f':
			n = n<<4 | int(c-'a'+10)
		case c >= 'A' && c <= 'F':
			n = n<<4 | int(c-'A'+10)
		default:
			return -1
		}
	}
	return n
}

// splice rewrites one continuation's events into the caller's stream.
type splice struct {
	d *delivery // the caller's stream so far (observed as events pass)
	// trimmed is the white space left off an Anthropic prefill.
	trimmed string
	// Anthropic: the continuation's block indices are moved by shift; its
	// first text block continues the caller's open block when continueOpen.
	shift        int
	continueOpen bool
	firstText    bool // the continuation's first text block was met
	// The seam: the continuation's first text is held until a repeat can
	// be told, then written as one delta.
	holding bool
	hold    []byte
	holdIdx int // Anthropic: the index the held text goes to
	// heldUsage is the usage of the last chunk held (OpenAI, a server that
	// reports it in every chunk), summed, for the chunk the seam writes.
	heldUsage json.RawMessage
	// deliveredOut is the output the caller's stream had reported at the
	// seam (0: none): it is added to what the continuation reports, which
	// counts its own output only.
	deliveredOut int
}

func newSplice(d *delivery, trimmed string) *splice {
	s := &splice{d: d, trimmed: trimmed, holding: true, deliveredOut: max(d.outTokens, 0)}
	if d.family == streamAnthropic {
		if d.openIndex >= 0 {
			s.continueOpen, s.shift = true, d.openIndex
		} else {
			s.shift = d.lastIndex + 1
		}
	}
	return s
}

// rewrite turns one continuation event into what the caller gets: out
// (nil to drop the event), in the order it must be written.
func (s *splice) rewrite(ev sseEvent, raw []byte) []byte {
	if s.d.family == streamAnthropic {
		return s.rewriteAnthropic(ev, raw)
	}
	return s.rewriteChat(ev, raw)
}

func (s *splice) rewriteAnthropic(ev sseEvent, raw []byte) []byte {
	kind := string(eventKind(ev))
	var out []byte
	switch kind {
	case "message_start", "ping", "content_block_start", "content_block_delta":
		// The seam's text is still being held (or these decide it).
	default:
		out = s.release(out)
	}
	switch kind {
	case "message_start":
		return out // the caller has its message already
	case "ping":
		return append(out, raw...)
	case "content_block_start":
		idx := jsonInt(ev.data, "index")
		block, _ := jsonMember(ev.data, "content_block")
		isText := string(jsonStringMember(block, "type")) == "text"
		if s.continueOpen && idx == 0 {
			s.continueOpen = false
			if isText { // the caller's open text block goes on
				s.firstText, s.holdIdx = true, s.shift
				return out
			}
			// Not text: the caller's open block is closed, and this one
			// takes the next index.
			stop, _ := json.Marshal(map[string]any{"type": "content_block_stop", "index": s.shift})
			out = append(out, anthropicEvent("content_block_stop", stop)...)
			s.shift++
		}
		if isText && !s.firstText {
			s.firstText, s.holdIdx = true, s.shift+idx
		} else {
			out = s.release(out)
		}
		return append(out, anthropicEvent("content_block_start", setMember(ev.data, "index", s.shift+idx))...)
	case "content_block_delta":
		idx := jsonInt(ev.data, "index")
		delta, _ := jsonMember(ev.data, "delta")
		if s.holding && string(jsonStringMember(delta, "type")) == "text_delta" && s.shift+idx == s.holdIdx {
			t, _ := jsonMember(delta, "text")
			s.hold = appendJSONString(s.hold, t)
			if len(s.hold) >= seamWindow {
				return s.release(out)
			}
			return out
		}
		out = s.release(out)
		return append(out, anthropicEvent("content_block_delta", setMember(ev.data, "index", s.shift+idx))...)
	case "content_block_stop":
		return append(out, anthropicEvent("content_block_stop", setMember(ev.data, "index", s.shift+jsonInt(ev.data, "index")))...)
	case "message_delta":
		// Its output_tokens counts the continuation's output only: the
		// output the caller's stream had reported is added.
		if u, ok := jsonMember(ev.data, "usage"); ok && s.deliveredOut > 0 {
			return append(out, anthropicEvent("message_delta", setRaw(ev.data, "usage", addTokens(u, s.deliveredOut, "output_tokens")))...)
		}
	}
	return append(out, raw...) // message_delta, message_stop, and what is not known
}

func (s *splice) rewriteChat(ev sseEvent, raw []byte) []byte {
	if isDone(ev.data) {
		return append(s.release(nil), raw...)
	}
	var chunk map[string]json.RawMessage
	if json.Unmarshal(ev.data, &chunk) != nil {
		return append(s.release(nil), raw...)
	}
	var choices []map[string]json.RawMessage
	_ = json.Unmarshal(chunk["choices"], &choices)
	usage := !jsonEmpty(chunk["usage"])
	if usage && s.deliveredOut > 0 {
		chunk["usage"] = addTokens(chunk["usage"], s.deliveredOut, "completion_tokens", "total_tokens")
	}
	// other: the chunk carries something besides the held content. Usage
	// alongside content is not (a server may send it in every chunk, and
	// the seam's hold would end at the first); a usage chunk of its own is.
	other := usage && len(choices) == 0
	for _, c := range choices {
		var delta map[string]json.RawMessage
		_ = json.Unmarshal(c["delta"], &delta)
		delete(delta, "role") // the caller had its role chunk
		if text, ok := delta["content"]; ok && s.holding {
			s.hold = appendJSONString(s.hold, text)
			delete(delta, "content")
		}
		if len(delta) > 0 || !jsonEmpty(c["finish_reason"]) || !jsonEmpty(c["logprobs"]) {
			other = true
		}
		c["delta"], _ = json.Marshal(delta)
	}
	if s.holding && !other {
		if usage { // a running total: the last one held is written at the seam
			s.heldUsage = chunk["usage"]
		}
		if len(s.hold) < seamWindow {
			return nil // held: written at the seam
		}
		return s.release(nil)
	}
	out := s.release(nil)
	if !other {
		return out // nothing but a role: the caller had its role chunk
	}
	chunk["choices"], _ = json.Marshal(choices)
	s.stamp(chunk)
	b, err := json.Marshal(chunk)
	if err != nil {
		return append(out, raw...)
	}
	return append(append(append(out, "data: "...), b...), "\n\n"...)
}

// stamp gives a continuation chunk the caller's id, created and model.
func (s *splice) stamp(chunk map[string]json.RawMessage) {
	if len(s.d.id) > 0 {
		chunk["id"] = json.RawMessage(`"` + string(s.d.id) + `"`)
	}
	if len(s.d.created) > 0 && json.Valid(s.d.created) {
		chunk["created"] = json.RawMessage(s.d.created)
	}
	if len(s.d.model) > 0 {
		chunk["model"] = json.RawMessage(`"` + string(s.d.model) + `"`)
	}
}

// release writes the held text, less the repeat at the seam, as one delta,
// and stops holding.
func (s *splice) release(out []byte) []byte {
	if !s.holding {
		return out
	}
	s.holding = false
	text := s.hold[seamCut(s.d.text.tail(seamWindow), s.hold, s.trimmed, s.d.text.size):]
	s.hold = nil
	usage := s.heldUsage
	s.heldUsage = nil
	if len(text) == 0 && usage == nil {
		return out
	}
	if s.d.family == streamAnthropic {
		data, _ := json.Marshal(map[string]any{"type": "content_block_delta", "index": s.holdIdx,
			"delta": map[string]any{"type": "text_delta", "text": string(text)}})
		return append(out, anthropicEvent("content_block_delta", data)...)
	}
	chunk := map[string]json.RawMessage{"object": json.RawMessage(`"chat.completion.chunk"`)}
	delta := map[string]any{}
	if len(text) > 0 {
		delta["content"] = string(text)
	}
	choice, _ := json.Marshal([]map[string]any{{"index": 0, "delta": delta, "finish_reason": nil}})
	chunk["choices"] = choice
	if usage != nil {
		chunk["usage"] = usage
	}
	s.stamp(chunk)
	b, _ := json.Marshal(chunk)
	return append(append(append(out, "data: "...), b...), "\n\n"...)
}

// seamCut is how many bytes of the continuation's text cont repeat what
// was delivered: the longest suffix of delivered that cont starts with, of
// at least minOverlap bytes (and within seamWindow), or the whole of a
// shorter delivered text (the model began again); failing that, as much of
// the white space trimmed off a prefill as cont starts with.
//
// tail is the delivered text's end (seamWindow bytes at most), and
// delivered the whole text's length.
func seamCut(tail, cont []byte, trimmed string, delivered int) int {
	for k := min(len(tail), len(cont)); k > 0; k-- {
		if (k >= minOverlap || k == delivered) && bytes.HasSuffix(tail, cont[:k]) {
			return k
		}
	}
	k := 0
	for k < len(trimmed) && k < len(cont) && trimmed[k] == cont[k] {
		k++
	}
	return k
}

// anthropicEvent writes an Anthropic event of name with data.
func anthropicEvent(name string, data []byte) []byte {
	b := make([]byte, 0, len(name)+len(data)+16)
	b = append(b, "event: "...)
	b = append(b, name...)
	b = append(b, "\ndata: "...)
	b = append(b, data...)
	return append(b, "\n\n"...)
}

// addTokens returns the usage object u with n added to each of its
// members keys that is a count; u as it is when it is not an object.
func addTokens(u []byte, n int, keys ...string) []byte {
	var m map[string]json.RawMessage
	if json.Unmarshal(u, &m) != nil || m == nil {
		return u
	}
	for _, k := range keys {
		if v := jsonInt(u, k); v >= 0 {
			m[k] = json.RawMessage(strconv.Itoa(v + n))
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		return u
	}
	return b
}

// setRaw returns obj with its top-level member key set to the JSON v.
func setRaw(obj []byte, key string, v json.RawMessage) []byte {
	var m map[string]json.RawMessage
	if json.Unmarshal(obj, &m) != nil || m == nil {
		return obj
	}
	m[key] = v
	b, err := json.Marshal(m)
	if err != nil {
		return obj
	}
	return b
}

// setMember returns obj with its top-level member key set to the number n.
func setMember(obj []byte, key string, n int) []byte {
	var m map[string]json.RawMessage
	if json.Unmarshal(obj, &m) != nil {
		return obj
	}
	m[key] = json.RawMessage(strconv.Itoa(n))
	b, err := json.Marshal(m)
	if err != nil {
		return obj
	}
	return b
}

// textBuf holds the delivered text in blocks of textBlock bytes, so that
// what it holds beyond the text is under one block, and growing it never
// copies what it has.
type textBuf struct {
	blocks  [][]byte
	size    int
	scratch []byte // one delta, decoded
}

const textBlock = 1 << 10

// appendJSON appends the decoded text of the JSON string v.
func (t *textBuf) appendJSON(v []byte) {
	t.scratch = appendJSONString(t.scratch[:0], v)
	t.write(t.scratch)
}

func (t *textBuf) write(p []byte) {
	t.size += len(p)
	for len(p) > 0 {
		if n := len(t.blocks); n == 0 || len(t.blocks[n-1]) == textBlock {
			t.blocks = append(t.blocks, make([]byte, 0, textBlock))
		}
		last := &t.blocks[len(t.blocks)-1]
		k := copy((*last)[len(*last):textBlock], p)
		*last = (*last)[:len(*last)+k]
		p = p[k:]
	}
}

// bytes is the whole text, in one slice (made when a stream breaks).
func (t *textBuf) bytes() []byte {
	out := make([]byte, 0, t.size)
	for _, b := range t.blocks {
		out = append(out, b...)
	}
	return out
}

// tail is the text's last n bytes at most.
func (t *textBuf) tail(n int) []byte {
	all := t.bytes()
	return all[max(len(all)-n, 0):]
}

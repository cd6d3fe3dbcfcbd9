package llmretry

import (
	"fmt"
	"strings"
	"testing"
)

// scannedEvent is an sseEvent copied out of the scanner.
type scannedEvent struct {
	name, data string
	truncated  bool
}

// scanPieces feeds pieces to a scanner with the given limit, in order, and
// returns every event, copied, and the bytes consumed at each event's end
// (counted over the whole input).
func scanPieces(limit int, pieces ...[]byte) (events []scannedEvent, ends []int) {
	s := sseScanner{limit: limit}
	offset := 0
	for _, p := range pieces {
		for len(p) > 0 {
			ev, n, ok := s.scan(p)
			p = p[n:]
			offset += n
			if !ok {
				break
			}
			events = append(events, scannedEvent{string(ev.name), string(ev.data), ev.truncated})
			ends = append(ends, offset)
		}
	}
	return events, ends
}

// firstSSEEvent is the first complete event of b, if any.
func firstSSEEvent(b []byte) (scannedEvent, bool) {
	evs, _ := scanPieces(0, b)
	if len(evs) == 0 {
		return scannedEvent{}, false
	}
	return evs[0], true
}

func TestFirstEventParser(t *testing.T) {
	cases := []struct {
		in   string
		done bool
		name string
		data string
	}{
		{"data: x\n\n", true, "", "x"},
		{"data: x\n", false, "", ""},
		{"event: error\ndata: {}\n\n", true, "error", "{}"},
		{": c\n\ndata: y\n\n", true, "", "y"},
		{": only\n\n", false, "", ""},
		{"data: a\ndata: b\n\n", true, "", "a\nb"},
		{"data: x\r\n\r\n", true, "", "x"},
		{"data: x\r\r", true, "", "x"},
		{"data: x\r", false, "", ""},
		{"\n\ndata: z\n\n", true, "", "z"},
		{"id: 1\n\ndata: w\n\n", true, "", "w"},
		{"data:nospace\n\n", true, "", "nospace"},
		{"data\n\n", true, "", ""},
		{"event: ping\n\n", true, "ping", ""},
		{"event: a\nevent: b\ndata: x\n\n", true, "b", "x"},
		{"data:  two spaces\n\n", true, "", " two spaces"},
		{"\xef\xbb\xbfdata: bom\n\n", true, "", "bom"},
		{"retry: 10\n\n", false, "", ""},
	}
	for _, tc := range cases {
		ev, done := firstSSEEvent([]byte(tc.in))
		if done != tc.done || ev.name != tc.name || ev.data != tc.data {
			t.Errorf("%q: got %q %q %v", tc.in, ev.name, ev.data, done)
		}
	}
}

// anthropicOpening is what Anthropic sends before its first output.
const anthropicOpening = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n" +
	"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n" +
	"event: ping\ndata: {\"type\": \"ping\"}\n\n"

// The scanner yields the same events, ending at the same offsets, however
// the bytes are split into pieces: mid-line, mid-event, or between the two
// bytes of a CRLF.
func TestSSEScannerSameEventsWhateverThePieces(t *testing.T) {
	streams := []string{
		anthropicOpening + "event: content_block_delta\ndata: {\"delta\":{\"text\":\"Hi\"}}\n\n",
		strings.ReplaceAll(anthropicOpening, "\n", "\r\n"),
		strings.ReplaceAll(anthropicOpening, "\n", "\r"),
		"\xef\xbb\xbf: c\n\ndata: a\ndata: b\n\ndata: [DONE]\n\n",
		"event: x\ndata: 1\r\n\r\ndata: 2\r\rdata: 3\n\n",
	}
	for _, stream := range streams {
		want, wantEnds := scanPieces(0, []byte(stream))
		if len(want) == 0 {
			t.Fatalf("%q: no events", stream)
		}
		for cut := 0; cut <= len(stream); cut++ {
			got, ends := scanPieces(0, []byte(stream[:cut]), []byte(stream[cut:]))
			if fmt.Sprint(got) != fmt.Sprint(want) || !sameEnds(ends, wantEnds, cut, stream) {
				t.Fatalf("%q cut at %d: got %v %v, want %v %v", stream, cut, got, ends, want, wantEnds)
			}
		}
		var bytewise [][]byte
		for i := range len(stream) {
			bytewise = append(bytewise, []byte(stream[i:i+1]))
		}
		if got, _ := scanPieces(0, bytewise...); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("%q byte by byte: got %v, want %v", stream, got, want)
		}
	}
}

// sameEnds reports event ends that match, but for the one documented
// difference: an event whose blank line ends in a CR at the end of a piece
// is returned without waiting for the LF that follows.
func sameEnds(got, want []int, cut int, stream string) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i] != want[i] && !(got[i] == cut && want[i] == cut+1 && stream[cut-1:cut+1] == "\r\n") {
			return false
		}
	}
	return true
}

// Each event ends where its blank line does: a caller can pass whole
// events on.
func TestSSEScannerReportsWhereEachEventEnds(t *testing.T) {
	stream := "data: one\n\n: comment\n\nevent: e\ndata: two\r\n\r\n"
	_, ends := scanPieces(0, []byte(stream))
	if fmt.Sprint(ends) != fmt.Sprint([]int{len("data: one\n\n"), len(stream)}) {
		t.Fatalf("ends %v", ends)
	}
}

// Memory stays bounded: a line or data longer than the limit keeps its
// start, and the event says it was truncated; the events after it are
// whole.
func TestSSEScannerBoundsWhatItKeeps(t *testing.T) {
	long := strings.Repeat("x", 1000)
	stream := []byte("data: " + long + "\n\nevent: " + long + "\ndata: a\ndata: " + long + "\n\ndata: ok\n\n")
	for _, pieces := range [][][]byte{{stream}, splitEvery(stream, 7)} {
		evs, _ := scanPieces(100, pieces...)
		if len(evs) != 3 {
			t.Fatalf("events %v", evs)
		}
		for _, ev := range evs[:2] {
			if !ev.truncated || len(ev.data) > 100 || len(ev.name) > maxEventName {
				t.Fatalf("not bounded: %d bytes of data, %d of name, truncated %v", len(ev.data), len(ev.name), ev.truncated)
			}
		}
		if evs[2] != (scannedEvent{data: "ok"}) {
			t.Fatalf("the event after the long ones: %+v", evs[2])
		}
	}
	s := sseScanner{limit: 100}
	for _, p := range splitEvery(stream, 3) {
		for len(p) > 0 {
			_, n, ok := s.scan(p)
			p = p[n:]
			if !ok {
				break
			}
		}
		if cap(s.line) > 2*100 || cap(s.dataBuf) > 2*100 || cap(s.nameBuf) > 2*maxEventName {
			t.Fatalf("buffers grew past the limit: line %d data %d name %d", cap(s.line), cap(s.dataBuf), cap(s.nameBuf))
		}
	}
}

func splitEvery(b []byte, n int) [][]byte {
	var out [][]byte
	for len(b) > n {
		out = append(out, b[:n])
		b = b[n:]
	}
	return append(out, b)
}

// The scanner sits on the hot path of a stream: once its buffers have
// grown, an event costs no allocation, whole in a piece or split across
// two.
func TestSSEScannerAllocatesNothingPerEvent(t *testing.T) {
	stream := []byte(anthropicOpening + "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n")
	half := len(stream) / 2
	s := sseScanner{limit: 64 << 10}
	events := 0
	feed := func(p []byte) {
		for len(p) > 0 {
			_, n, ok := s.scan(p)
			p = p[n:]
			if !ok {
				return
			}
			events++
		}
	}
	feed(stream[:half]) // grow the buffers once
	feed(stream[half:])
	allocs := testing.AllocsPerRun(100, func() {
		feed(stream)
		feed(stream[:half])
		feed(stream[half:])
	})
	if allocs != 0 || events == 0 {
		t.Fatalf("%v allocations per run, %d events", allocs, events)
	}
}

func FuzzFirstEvent(f *testing.F) {
	f.Add([]byte(anthropicOverloaded))
	f.Add([]byte(openRouterError))
	f.Add([]byte("data: x\r\r\n"))
	f.Add([]byte("\xef\xbb\xbfevent: error\ndata: {\"error\":{\"type\":\"overloaded_error\"}}\n\n"))
	f.Add([]byte(": OPENROUTER PROCESSING\n\ndata: {\"error\":{\"code\":502}}\n\n"))
	f.Add([]byte(anthropicOpening + anthropicOverloaded))
	f.Add([]byte("data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\ndata: {\"error\":{\"code\":502}}\n\n"))
	f.Add([]byte("event: response.created\ndata: {\"type\":\"response.created\"}\n\nevent: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"error\":{\"code\":\"server_error\"}}}\n\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var s sseScanner
		if ev, _, ok := s.scan(b); !ok && (ev.data != nil || ev.name != nil) {
			t.Fatalf("data without an event")
		}
		whole, wholeEnds := scanPieces(0, b)
		cut := 0
		if len(b) > 0 {
			cut = int(b[0]) % (len(b) + 1)
		}
		split, splitEnds := scanPieces(0, b[:cut], b[cut:])
		if fmt.Sprint(whole) != fmt.Sprint(split) || !sameEnds(splitEnds, wholeEnds, cut, string(b)) {
			t.Fatalf("split at %d changed the events: %v vs %v", cut, whole, split)
		}
		bounded, _ := scanPieces(16, splitEvery(b, 5)...)
		if len(bounded) != len(whole) {
			t.Fatalf("a limit changed the number of events: %d vs %d", len(bounded), len(whole))
		}
		for i, ev := range bounded {
			if len(ev.data) > 16 || (!ev.truncated && (ev != whole[i])) {
				t.Fatalf("bounded event %d: %+v, whole %+v", i, ev, whole[i])
			}
		}
		for _, f := range []streamFamily{streamUnknown, streamAnthropic, streamOpenAIChat, streamResponses, streamGemini} {
			for _, ev := range whole {
				e := sseEvent{name: []byte(ev.name), data: []byte(ev.data)}
				if role := f.role(e); role.isError() {
					_ = streamErrorDecision(f, e, testNow)
				}
				_, _ = familyOfEvent(e)
			}
		}
	})
}

var testNow = newFakeClock().Now()

package mockllm_test

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"unicode/utf8"

	"github.com/llmretry/llmretry/mockllm"
)

// cuts is a script that cuts the n-th request after n bytes, from 0 to
// upTo.
func cuts(upTo int) mockllm.Script {
	var s mockllm.Script
	for n := 0; n <= upTo; n++ {
		s.Faults = append(s.Faults, mockllm.Fault{Kind: mockllm.Cut, Bytes: n})
	}
	return s
}

// A cut at every byte offset of a streamed reply, for each API and each
// reply, sends exactly that many bytes of the whole stream and then cuts
// the connection: nothing is added, nothing before the cut is missing.
// Past the end, the whole stream goes and the connection is still cut.
func TestCutAtEveryByte(t *testing.T) {
	for name, reply := range replies {
		for api := range apis {
			whole, aborted := serve(t, mockllm.New(mockllm.Script{}, 1), post(t, api, name, map[string]any{"stream": true}))
			full := whole.Body.String()
			if aborted || text(t, api, true, full) != reply {
				t.Fatalf("%s %s: the whole stream: %q", name, api, full)
			}
			m := mockllm.New(cuts(len(full)+1), 1)
			inChar := 0 // cuts that fall inside a multi-byte character
			for n := 0; n <= len(full)+1; n++ {
				rec, aborted := serve(t, m, post(t, api, name, map[string]any{"stream": true}))
				got := rec.Body.String()
				if !aborted || rec.Code != 200 || got != full[:min(n, len(full))] {
					t.Fatalf("%s %s cut=%d: aborted %v, status %d, got %d bytes ending %q, want %d",
						name, api, n, aborted, rec.Code, len(got), got[max(len(got)-40, 0):], min(n, len(full)))
				}
				if n < len(full) && !utf8.RuneStart(full[n]) {
					inChar++
				}
			}
			inReply := 0 // bytes of the reply that do not start a character
			for i := range len(reply) {
				if !utf8.RuneStart(reply[i]) {
					inReply++
				}
			}
			if inChar < inReply || name == mockllm.ReplyUTF8 && inReply < 40 {
				t.Fatalf("%s %s: %d cuts fell inside a character, want %d at least", name, api, inChar, inReply)
			}
		}
	}
}

// fetch sends one request straight to the mock (no retry layer) and
// returns the status, what arrived of the body, and the read's error.
func fetch(t *testing.T, c *http.Client, req *http.Request) (int, []byte, error) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// Over real HTTP, what was sent before a cut reaches the client, and the
// client sees the cut as an unexpected EOF. A stride of offsets, and the
// end (every offset is proven in-process above), keeps the test quick.
func TestCutReachesTheClient(t *testing.T) {
	base := &http.Transport{}
	defer base.CloseIdleConnections()
	c := &http.Client{Transport: base}
	for name := range replies {
		for api := range apis {
			full, _ := serve(t, mockllm.New(mockllm.Script{}, 1), post(t, api, name, map[string]any{"stream": true}))
			want := full.Body.String()
			var offsets []int
			for n := 0; n < len(want)-1; n += 29 {
				offsets = append(offsets, n)
			}
			offsets = append(offsets, len(want)-1, len(want), len(want)+1)
			var script mockllm.Script
			for _, n := range offsets {
				script.Faults = append(script.Faults, mockllm.Fault{Kind: mockllm.Cut, Bytes: n})
			}
			srv := httptest.NewServer(mockllm.New(script, 1))
			for _, n := range offsets {
				in := post(t, api, name, map[string]any{"stream": true})
				req, err := http.NewRequest(http.MethodPost, srv.URL+in.URL.String(), in.Body)
				if err != nil {
					t.Fatal(err)
				}
				req.Header = in.Header
				code, b, err := fetch(t, c, req)
				if code != 200 || string(b) != want[:min(n, len(want))] || !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("%s %s cut=%d: status %d, err %v, got %d bytes, want %d", name, api, n, code, err, len(b), min(n, len(want)))
				}
			}
			srv.Close()
		}
	}
}

package mockllm_test

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/llmretry/llmretry/mockllm"
)

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

// A cut at every byte offset of a streamed reply, for each API, leaves
// exactly that many bytes of the whole stream, and the client sees the
// cut: nothing is added, nothing is missing before the cut.
func TestCutAtEveryByte(t *testing.T) {
	for api := range apis {
		t.Run(api, func(t *testing.T) {
			base := &http.Transport{}
			defer base.CloseIdleConnections()
			c := &http.Client{Transport: base}
			whole := func() []byte {
				srv := httptest.NewServer(mockllm.New(mockllm.Script{}, 1))
				defer srv.Close()
				code, b, err := fetch(t, c, request(t, srv.URL, api, true))
				if code != 200 || err != nil || text(t, api, true, string(b)) != mockllm.ReplyText {
					t.Fatalf("whole stream: status %d, err %v, body %q", code, err, b)
				}
				return b
			}()
			var script mockllm.Script
			for n := 0; n <= len(whole)+1; n++ {
				script.Faults = append(script.Faults, mockllm.Fault{Kind: mockllm.Cut, Bytes: n})
			}
			m := mockllm.New(script, 1)
			srv := httptest.NewServer(m)
			defer srv.Close()
			for n := 0; n <= len(whole)+1; n++ {
				code, b, err := fetch(t, c, request(t, srv.URL, api, true))
				want := whole[:min(n, len(whole))]
				if code != 200 || string(b) != string(want) || !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("cut=%d: status %d, err %v, got %d bytes %q, want %d bytes %q",
						n, code, err, len(b), tail(b), len(want), tail(want))
				}
			}
			if m.Served(mockllm.Cut) != len(whole)+2 {
				t.Fatalf("served %d cuts, want %d", m.Served(mockllm.Cut), len(whole)+2)
			}
		})
	}
}

// tail is the end of b, for a readable failure.
func tail(b []byte) []byte {
	if len(b) > 60 {
		return b[len(b)-60:]
	}
	return b
}

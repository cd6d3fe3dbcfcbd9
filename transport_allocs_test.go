package llmretry

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// A request that succeeds at once, with a JSON reply, costs the Transport
// no allocation of its own: the whole round trip allocates what the base
// transport does (BENCHMARKS.md: 88 and 88). For a while it cost one, the
// method value base.RoundTrip made afresh on every request (the attempt
// loop keeps its send function, for a stream's continuation); this guards
// against that coming back, or another like it.
func TestSuccessPathAllocatesNothingOfItsOwn(t *testing.T) {
	resp := &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/json"}}, Body: http.NoBody}
	base := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		resp.Request = r
		return resp, nil
	})
	tr := NewTransport(base)
	body := strings.NewReader(`{"model":"m"}`)
	req, _ := http.NewRequest("POST", "https://api.example.com/v1/chat/completions", body)
	req.GetBody = func() (io.ReadCloser, error) { return http.NoBody, nil }
	allocs := testing.AllocsPerRun(200, func() {
		r, err := tr.RoundTrip(req)
		if err != nil || r.StatusCode != 200 {
			t.Fatalf("%v %v", r, err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%.0f allocations a request, want none", allocs)
	}
}

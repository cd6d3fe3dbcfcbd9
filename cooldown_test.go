package llmretry

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// chat is an OpenAI-style request for model with key.
func chat(t *testing.T, url, key, model string) *http.Request {
	req := post(t, url+"/v1/chat/completions", `{"messages":[{"role":"user","content":"a \"model\": \"x\" {[ in text"}],"model":"`+model+`","stream":false}`)
	req.Header.Set("Authorization", "Bearer "+key)
	return req
}

// A 429's wait held every later request on that key, whatever model it was
// for. It now holds only the same key and model: a 429 for gpt-4o holds no
// embedding request, nor another chat model, on the same key.
func TestCooldownHoldsOnlyTheSameModel(t *testing.T) {
	srv := newScripted(t, status(429, "", "Retry-After", "20", "X-Ratelimit-Remaining-Requests", "0"), status(200, "ok"))
	clk := newFakeClock()
	_, c := testTransport(t, clk, WithPolicy(Policy{MaxAttempts: 1}))
	send := func(req *http.Request) {
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
	}
	send(chat(t, srv.URL, "k1", "gpt-4o")) // the 429
	send(chat(t, srv.URL, "k1", "text-embedding-3-small"))
	send(chat(t, srv.URL, "k1", "gpt-4o-mini"))
	if w := clk.Waits(); len(w) != 0 {
		t.Fatalf("other models waited %v", w)
	}
	send(chat(t, srv.URL, "k1", "gpt-4o"))
	if w := clk.Waits(); len(w) != 1 || w[0] < 20*time.Second {
		t.Fatalf("the same model waited %v, want 20s and its spread", w)
	}
	// Gemini names the model in the path.
	gem := newScripted(t, status(429, "", "Retry-After", "20"), status(429, "", "Retry-After", "20"), status(200, "ok"))
	gemini := func(model string) *http.Request {
		req := post(t, gem.URL+"/v1beta/models/"+model+":generateContent", `{"contents":[]}`)
		req.Header.Set("X-Goog-Api-Key", "g1")
		return req
	}
	send(gemini("gemini-2.0-flash"))
	send(gemini("gemini-2.0-flash")) // the second 429 in a row starts the cooldown
	send(gemini("gemini-2.5-pro"))
	if w := clk.Waits(); len(w) != 1 {
		t.Fatalf("another Gemini model waited: %v", w)
	}
	send(gemini("gemini-2.0-flash"))
	if w := clk.Waits(); len(w) != 2 || w[1] < 20*time.Second {
		t.Fatalf("the same Gemini model did not wait: %v", w)
	}
}

// One "Retry-After: 999999", which ends its own request at once, froze every
// later request on that key for MaxRetryAfter. It starts no cooldown now.
func TestWaitAboveMaxRetryAfterStartsNoCooldown(t *testing.T) {
	srv := newScripted(t, status(429, "", "Retry-After", "999999"), status(200, "ok"))
	clk := newFakeClock()
	_, c := testTransport(t, clk)
	for range 2 {
		resp, err := c.Do(chat(t, srv.URL, "k1", "gpt-4o"))
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
	}
	if w := clk.Waits(); len(w) != 0 || srv.Hits() != 2 {
		t.Fatalf("waits %v, hits %d: the second request was held", w, srv.Hits())
	}
}

// A 503 (or 529) with Retry-After from one replica of a load-balanced
// service stalled every request to the host. It is retried after its own
// wait, and holds no other request.
func TestServerBusyWaitHoldsNoOtherRequest(t *testing.T) {
	for _, code := range []int{503, 529} {
		srv := newScripted(t, status(code, "", "Retry-After", "10"), status(200, "ok"))
		clk := newFakeClock()
		_, c := testTransport(t, clk, WithPolicy(Policy{MaxAttempts: 1}))
		for range 2 {
			resp, err := c.Do(chat(t, srv.URL, "k1", "claude-sonnet-4"))
			if err != nil {
				t.Fatal(err)
			}
			readAll(t, resp)
		}
		if w := clk.Waits(); len(w) != 0 {
			t.Fatalf("%d: the next request waited %v", code, w)
		}
	}
}

// frozenClock records waits and ends them at once without moving its time,
// so that several requests arrive at the same instant.
type frozenClock struct {
	now   time.Time
	waits []time.Duration
}

func (c *frozenClock) Now() time.Time { return c.now }
func (c *frozenClock) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	c.waits = append(c.waits, d)
	ch := make(chan time.Time, 1)
	ch <- c.now
	return ch, func() bool { return false }
}
func (c *frozenClock) AfterFunc(time.Duration, func()) func() bool {
	return func() bool { return true }
}

// Requests held by one cooldown were all released in the same instant.
// Arriving together, each now gets its own share of the spread.
func TestHeldRequestsAreReleasedSpreadOut(t *testing.T) {
	srv := newScripted(t, status(200, "ok"))
	clk := &frozenClock{now: time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)}
	draws := []float64{0.1, 0.5, 0.9}
	i := 0
	next := func() float64 { r := draws[i%len(draws)]; i++; return r }
	cd := NewLocalHealthStore()
	_, c := testTransport(t, nil, WithClock(clk), WithRand(next), WithHealthStore(cd))
	cd.Put(cooldownMarkOf(chat(t, srv.URL, "k1", "gpt-4o")), clk.now.Add(10*time.Second))
	for range 3 {
		resp, err := c.Do(chat(t, srv.URL, "k1", "gpt-4o"))
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
	}
	want := []time.Duration{10100 * time.Millisecond, 10500 * time.Millisecond, 10900 * time.Millisecond}
	if len(clk.waits) != 3 || clk.waits[0] != want[0] || clk.waits[1] != want[1] || clk.waits[2] != want[2] {
		t.Fatalf("held %v, want %v", clk.waits, want)
	}
}

func TestRequestModelIsReadOnce(t *testing.T) {
	cases := map[string]string{
		`{"model":"gpt-4o","messages":[]}`:                                    "gpt-4o",
		`{"messages":[{"model":"inner"}],"model" : "claude-sonnet-4-5"}`:      "claude-sonnet-4-5",
		`{"input":"the \"model\":\"no\" in a string","model":"text-embed-3"}`: "text-embed-3",
		`{"meta":{"model":"nested"}}`:                                         "",
		`{"model":42}`:                                                        "",
		`["model","x"]`:                                                       "",
		`not json`:                                                            "",
		`{"model":"openrouter/anthropic/claude"}`:                             "openrouter/anthropic/claude",
		`{"model":"` + strings.Repeat("m", 300) + `"}`:                        "",
	}
	for body, want := range cases {
		req, _ := http.NewRequest("POST", "https://api.test/v1/chat/completions", strings.NewReader(body))
		j := journey{rt: ownRoute(nil), req: req}
		if got := j.modelName(); got != want {
			t.Errorf("%s: got %q, want %q", body, got, want)
		}
	}
	paths := map[string]string{
		"/v1beta/models/gemini-2.0-flash:generateContent":                                           "gemini-2.0-flash",
		"/v1/projects/p/locations/us/publishers/google/models/gemini-2.5-pro:streamGenerateContent": "gemini-2.5-pro",
		"/v1/chat/completions": "",
	}
	for path, want := range paths {
		req, _ := http.NewRequest("POST", "https://api.test"+path, strings.NewReader(`{"model":"not-this"}`))
		j := journey{rt: ownRoute(nil), req: req}
		if path == "/v1/chat/completions" {
			want = "not-this"
		}
		if got := j.modelName(); got != want {
			t.Errorf("%s: got %q, want %q", path, got, want)
		}
	}
}

// A lone 429 among successes (a burst one request hit) held every later
// request for its key and model, so that in a mix of faults requests that
// never failed waited on it. Without a sign that the limit binds beyond
// the one request (an empty bucket, or a second 429 in a row), it holds no
// one; a success in between starts the count again.
func TestLone429HoldsNoOne(t *testing.T) {
	limited := status(429, "", "Retry-After-Ms", "300")
	ok := status(200, "ok")
	cases := []struct {
		name     string
		script   []http.HandlerFunc
		wantHeld bool
	}{
		{"one 429", []http.HandlerFunc{limited, ok}, false},
		{"429, success, 429", []http.HandlerFunc{limited, ok, limited, ok}, false},
		{"two 429s in a row", []http.HandlerFunc{limited, limited, ok}, true},
		{"one 429 with an empty bucket", []http.HandlerFunc{status(429, "", "Retry-After-Ms", "300", "Anthropic-Ratelimit-Tokens-Remaining", "0"), ok}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := newScripted(t, tc.script...)
			clk := newFakeClock()
			_, c := testTransport(t, clk, WithPolicy(Policy{MaxAttempts: 1}))
			for range len(tc.script) {
				resp, err := c.Do(chat(t, srv.URL, "k1", "claude-sonnet-4-5"))
				if err != nil {
					t.Fatal(err)
				}
				readAll(t, resp)
			}
			if held := len(clk.Waits()) > 0; held != tc.wantHeld {
				t.Fatalf("held %v (waits %v), want %v", held, clk.Waits(), tc.wantHeld)
			}
		})
	}
}

package mockllm

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// A request that names its draw key and attempt draws its fault from the
// seed, the key and the attempt alone: the same faults whatever order the
// requests arrive in, and recorded per key.
func TestKeyedDrawsIgnoreArrivalOrder(t *testing.T) {
	script, err := ParseFaults("503@30%,reset@20%,quota@10%")
	if err != nil {
		t.Fatal(err)
	}
	draws := func(order []int) map[int][]Fault {
		s := New(script, 42)
		for _, n := range order {
			for attempt := 1; attempt <= 2; attempt++ {
				r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", nil)
				r.Header.Set(DrawKeyHeader, fmt.Sprint(n))
				r.Header.Set(AttemptHeader, fmt.Sprint(attempt))
				s.next(r)
			}
		}
		got := map[int][]Fault{}
		for _, n := range order {
			got[n] = s.FaultsFor(fmt.Sprint(n))
		}
		return got
	}
	forward, backward := draws([]int{1, 2, 3, 4, 5, 6, 7, 8}), draws([]int{8, 7, 6, 5, 4, 3, 2, 1})
	kinds := map[Kind]bool{}
	for n, fs := range forward {
		if len(fs) != 2 || fmt.Sprint(fs) != fmt.Sprint(backward[n]) {
			t.Fatalf("request %d: %v forward, %v backward", n, fs, backward[n])
		}
		for _, f := range fs {
			kinds[f.Kind] = true
		}
	}
	if len(kinds) < 2 {
		t.Fatalf("every draw the same kind: %v", kinds)
	}
}

// A key with a script of its own plays it; other keys play the server's.
func TestForKeyPlaysTheKeysOwnScript(t *testing.T) {
	limited, err := ParseFaults("429:retry-after=20@100%")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(New(Script{}, 1).ForKey("sk-a", limited))
	defer srv.Close()
	for _, c := range []struct {
		header, value string
		want          int
	}{
		{"Authorization", "Bearer sk-a", 429},
		{"X-Api-Key", "sk-a", 429},
		{"Authorization", "Bearer sk-b", 200},
		{"Authorization", "Bearer sk-a", 429},
	} {
		req, _ := http.NewRequest("POST", srv.URL+"/v1/chat/completions", strings.NewReader(`{"model":"m"}`))
		req.Header.Set(c.header, c.value)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want || c.want == 429 && resp.Header.Get("Retry-After") != "20" {
			t.Fatalf("%s %s: status %d, want %d", c.header, c.value, resp.StatusCode, c.want)
		}
	}
}

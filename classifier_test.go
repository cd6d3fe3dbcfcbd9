package llmretry

import (
	"bytes"
	"net/http"
	"testing"
	"time"
)

// A rule put in front of the built-in ones: this API's 409s are transient.
func TestCustomRuleInFrontOfTheDefaults(t *testing.T) {
	conflicts := ClassifierFunc(func(a Attempt) Decision {
		if a.Response != nil && a.Response.StatusCode == http.StatusConflict {
			return Decision{Action: Retry, Cause: "conflict"}
		}
		return Decision{}
	})
	srv := newScripted(t, status(409, "busy"), status(503, "down"), status(200, "ok"))
	var causes []string
	_, c := testTransport(t, newFakeClock(), WithClassifier(Classifiers(conflicts, DefaultClassifier())),
		WithOnRetry(func(e RetryEvent) { causes = append(causes, e.Cause) }))
	resp, err := c.Do(post(t, srv.URL, "x"))
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); body != "ok" || srv.Hits() != 3 {
		t.Fatalf("hits %d body %q", srv.Hits(), body)
	}
	if len(causes) != 2 || causes[0] != "conflict" || causes[1] != "status 503" {
		t.Fatalf("causes %q", causes)
	}
}

// A rule that makes a 503 from a health-check path final; other paths keep
// the built-in rule.
func TestCustomRuleStops(t *testing.T) {
	health := ClassifierFunc(func(a Attempt) Decision {
		if a.Request.URL.Path == "/healthz" && a.Response != nil && a.Response.StatusCode == 503 {
			return Decision{Action: Stop, Cause: "unhealthy"}
		}
		return Decision{}
	})
	srv := newScripted(t, status(503, "down"), status(200, "ok"))
	var stop StopEvent
	_, c := testTransport(t, newFakeClock(), WithClassifier(Classifiers(health, DefaultClassifier())),
		WithOnStop(func(e StopEvent) { stop = e }))
	resp, err := c.Get(srv.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	if srv.Hits() != 1 || resp.StatusCode != 503 || stop.Reason != ReasonNotRetryable || stop.Cause != "unhealthy" || stop.Failure != FailureStatus {
		t.Fatalf("hits %d status %d stop %+v", srv.Hits(), resp.StatusCode, stop)
	}
}

// A rule that reads a self-hosted server's own error shape, with a wait in
// it. The body it read is put back: the caller of the last attempt reads
// every byte.
func TestCustomRuleReadsTheBody(t *testing.T) {
	const overloaded = `{"object":"error","type":"EngineOverloaded","retry_in_ms":1500}`
	vllm := ClassifierFunc(func(a Attempt) Decision {
		if a.Response == nil || a.Response.StatusCode != 400 {
			return Decision{}
		}
		body, err := a.Body()
		if err == nil && bytes.Contains(body, []byte(`"EngineOverloaded"`)) {
			return Decision{Action: Retry, Wait: 1500 * time.Millisecond, Source: SourceMessage, Cause: "engine overloaded"}
		}
		return Decision{}
	})
	srv := newScripted(t, status(400, overloaded))
	clk := newFakeClock()
	_, c := testTransport(t, clk, WithRand(fixedRand(0)), WithClassifier(Classifiers(vllm, DefaultClassifier())))
	resp, err := c.Do(post(t, srv.URL, "x"))
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); body != overloaded || srv.Hits() != 3 {
		t.Fatalf("hits %d, body %q", srv.Hits(), body)
	}
	if w := clk.Waits(); len(w) != 2 || w[0] != 1500*time.Millisecond || w[1] != 1500*time.Millisecond {
		t.Fatalf("waits %v, want the rule's 1.5s twice", w)
	}
}

// WithClassifier replaces the built-in rules: a rule that always stops
// makes a 503 final.
func TestClassifierReplacesTheDefaults(t *testing.T) {
	srv := newScripted(t, status(503, "down"), status(200, "ok"))
	never := ClassifierFunc(func(a Attempt) Decision { return Decision{Action: Stop} })
	_, c := testTransport(t, newFakeClock(), WithClassifier(never))
	resp, err := c.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	if srv.Hits() != 1 || resp.StatusCode != 503 {
		t.Fatalf("hits %d status %d", srv.Hits(), resp.StatusCode)
	}
}

// The chain asks in order and the first opinion wins; a chain that passes
// to its end delivers a response, and never delivers an error.
func TestClassifierChain(t *testing.T) {
	say := func(act Action, cause string) Classifier {
		return ClassifierFunc(func(Attempt) Decision { return Decision{Action: act, Cause: cause} })
	}
	resp := &http.Response{StatusCode: 503}
	if d := Classifiers(say(Pass, "a"), say(Stop, "b"), say(Retry, "c")).Classify(Attempt{Response: resp}); d.Action != Stop || d.Cause != "b" {
		t.Fatalf("got %+v", d)
	}
	tr := NewTransport(nil, WithClassifier(Classifiers(say(Pass, ""))))
	if v := tr.decide(Attempt{Response: resp}); v.retry || v.reason != 0 {
		t.Fatalf("all-pass on a response: %+v, want delivered", v)
	}
	if v := tr.decide(Attempt{Err: errNilURL}); v.retry || v.reason != ReasonNotRetryable || v.failure != FailureTransport {
		t.Fatalf("all-pass on an error: %+v, want stopped", v)
	}
}

package llmretry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// A stream is committed at its first output, per family: errors and cuts
// after the opening events are retried, and the caller gets the attempt
// that succeeded, byte for byte.

// Anthropic's events, as it sends them.
const (
	aMessageStart = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude\",\"stop_reason\":null,\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n"
	aEmptyBlock   = "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"
	aPing         = "event: ping\ndata: {\"type\": \"ping\"}\n\n"
	aToolUse      = "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"get_weather\",\"input\":{}}}\n\n"
	aDelta        = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n"
	aEnd          = "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n" +
		"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":2}}\n\n" +
		"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
	aStream      = aMessageStart + aEmptyBlock + aPing + aDelta + aEnd
	aRateLimited = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"Please try again in 7s.\"}}\n\n"
)

// OpenAI chat completions, and an OpenAI-compatible server's error.
const (
	oRole     = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n"
	oContent  = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"finish_reason\":null}]}\n\n"
	oEnd      = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n"
	oStream   = oRole + oContent + oEnd
	o502      = "data: {\"error\":{\"code\":502,\"message\":\"Provider returned error\"}}\n\n"
	o400      = "data: {\"error\":{\"code\":400,\"message\":\"bad request\"}}\n\n"
	oQuota    = "data: {\"error\":{\"type\":\"insufficient_quota\",\"code\":\"insufficient_quota\",\"message\":\"You exceeded your current quota\"}}\n\n"
	oCommentA = ": OPENROUTER PROCESSING\n\n"
)

// The Responses API.
const (
	rCreated    = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"status\":\"in_progress\"}}\n\n"
	rInProgress = "event: response.in_progress\ndata: {\"type\":\"response.in_progress\",\"response\":{\"id\":\"resp_1\",\"status\":\"in_progress\"}}\n\n"
	rItemAdded  = "event: response.output_item.added\ndata: {\"type\":\"response.output_item.added\",\"output_index\":0,\"item\":{\"type\":\"message\",\"content\":[]}}\n\n"
	rDelta      = "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hello\"}\n\n"
	rCompleted  = "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"status\":\"completed\"}}\n\n"
	rStream     = rCreated + rInProgress + rItemAdded + rDelta + rCompleted
	rFailed     = "event: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"id\":\"resp_1\",\"status\":\"failed\",\"error\":{\"code\":\"server_error\",\"message\":\"The server had an error\"}}}\n\n"
)

func TestCommitPointIsTheFirstOutput(t *testing.T) {
	cases := []struct {
		name  string
		path  string
		first http.HandlerFunc
		ok    string // what the second attempt sends
		hits  int
		want  string // what the caller reads
	}{
		// Anthropic.
		{"anthropic overload after message_start retried", "/v1/messages", sse(aMessageStart, anthropicOverloaded), aStream, 2, aStream},
		{"anthropic overload after an empty block and a ping retried", "/v1/messages", sse(aMessageStart, aEmptyBlock, aPing, anthropicOverloaded), aStream, 2, aStream},
		{"anthropic api_error after message_start retried", "/v1/messages", sse(aMessageStart, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"Internal\"}}\n\n"), aStream, 2, aStream},
		{"anthropic cut after message_start retried", "/v1/messages", sseThenCut(aMessageStart), aStream, 2, aStream},
		{"anthropic cut after an empty block retried", "/v1/messages", sseThenCut(aMessageStart, aEmptyBlock, "event: ping\nda"), aStream, 2, aStream},
		{"anthropic end after message_start retried", "/v1/messages", sse(aMessageStart, aEmptyBlock), aStream, 2, aStream},
		{"anthropic opening events one byte at a time", "/v1/messages", sse(bytewise(aMessageStart + aPing + anthropicOverloaded)...), aStream, 2, aStream},
		{"anthropic overload after the first delta delivered", "/v1/messages", sse(aMessageStart, aDelta, anthropicOverloaded), aStream, 1, aMessageStart + aDelta + anthropicOverloaded},
		{"anthropic overload after a tool_use block delivered", "/v1/messages", sse(aMessageStart, aToolUse, anthropicOverloaded), aStream, 1, aMessageStart + aToolUse + anthropicOverloaded},
		{"anthropic invalid request after message_start delivered", "/v1/messages", sse(aMessageStart, anthropicInvalid), aStream, 1, aMessageStart + anthropicInvalid},
		{"anthropic whole stream delivered", "/v1/messages", sse(aStream), oStream, 1, aStream},
		// OpenAI chat completions and compatible servers.
		{"openrouter error after the role chunk retried", "/api/v1/chat/completions", sse(oCommentA, oRole, oCommentA, o502), oStream, 2, oStream},
		{"cut after the role chunk retried", "/v1/chat/completions", sseThenCut(oRole), oStream, 2, oStream},
		{"error after content delivered", "/v1/chat/completions", sse(oRole, oContent, o502), oStream, 1, oRole + oContent + o502},
		{"client error after the role chunk delivered", "/v1/chat/completions", sse(oRole, o400), oStream, 1, oRole + o400},
		{"chat stream delivered whole", "/v1/chat/completions", sse(oStream), aStream, 1, oStream},
		// The Responses API.
		{"response.failed after response.created retried", "/v1/responses", sse(rCreated, rInProgress, rFailed), rStream, 2, rStream},
		{"cut after an item was added retried", "/v1/responses", sseThenCut(rCreated, rInProgress, rItemAdded), rStream, 2, rStream},
		{"response.failed after output delivered", "/v1/responses", sse(rCreated, rDelta, rFailed), rStream, 1, rCreated + rDelta + rFailed},
		// The family is read from the events when the path does not say.
		{"anthropic events on an unknown path", "/proxy/anthropic", sse(aMessageStart, anthropicOverloaded), aStream, 2, aStream},
		{"a role chunk on an unknown path", "/", sse(oRole, o502), oStream, 2, oStream},
		// Gemini and unknown streams: the first event decides, as before.
		{"gemini first chunk delivered", "/v1beta/models/g:streamGenerateContent", sse("data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}]}}]}\n\n", o502), oStream, 1,
			"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}]}}]}\n\n" + o502},
		{"unknown first event delivered", "/", sse("data: one\n\n", o502), oStream, 1, "data: one\n\n" + o502},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := newScripted(t, tc.first, sse(tc.ok))
			_, c := testTransport(t, newFakeClock())
			resp, err := c.Do(post(t, srv.URL+tc.path, "x"))
			if err != nil {
				t.Fatal(err)
			}
			if got := readAll(t, resp); got != tc.want || srv.Hits() != tc.hits {
				t.Fatalf("hits %d, body\n%q\nwant %d,\n%q", srv.Hits(), got, tc.hits, tc.want)
			}
		})
	}
}

// Once the first output is handed over, a break is the caller's: never
// retried, never replayed. (Before issue 21 the commit point was the first
// event, and this test cut the stream right after message_start; that cut
// is now retried: TestCommitPointIsTheFirstOutput.)
func TestNoRetryAfterFirstOutput(t *testing.T) {
	first := aMessageStart + aEmptyBlock + aDelta
	srv := newScripted(t, sseThenCut(first, "event: content_block_delta\ndata: {\"par"), sse(aStream))
	_, c := testTransport(t, newFakeClock())
	resp, err := c.Do(post(t, srv.URL+"/v1/messages", "x"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err == nil {
		t.Fatal("want the read error of the cut stream")
	}
	if !strings.HasPrefix(string(got), first) || srv.Hits() != 1 {
		t.Fatalf("hits %d body %q", srv.Hits(), got)
	}
}

// A rate limit sent in the stream, with a wait it states, is retried after
// that wait.
func TestInStreamRateLimitWaitsTheWaitItStates(t *testing.T) {
	srv := newScripted(t, sse(aMessageStart, aRateLimited), sse(aStream))
	clk := newFakeClock()
	var events []RetryEvent
	_, c := testTransport(t, clk, WithOnRetry(func(e RetryEvent) { events = append(events, e) }))
	resp, err := c.Do(post(t, srv.URL+"/v1/messages", "x"))
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, resp); got != aStream || srv.Hits() != 2 {
		t.Fatalf("hits %d body %q", srv.Hits(), got)
	}
	w := clk.Waits()
	if len(w) != 1 || w[0] < 7*time.Second || len(events) != 1 || events[0].Source != SourceMessage ||
		events[0].Failure != FailureFirstEvent || events[0].Cause != "in-stream error: rate_limit_error" {
		t.Fatalf("waits %v events %+v", w, events)
	}
}

// A used-up quota sent in the stream stops, as a 429 quota body does: the
// stream is delivered as it is, and the verdict carries the 429 it stands
// for, so that failover can take the key out.
func TestInStreamQuotaStopsWithItsStatus(t *testing.T) {
	srv := newScripted(t, sse(oRole, oQuota), sse(oStream))
	var stops []StopEvent
	tr, c := testTransport(t, newFakeClock(), WithOnStop(func(e StopEvent) { stops = append(stops, e) }))
	resp, err := c.Do(post(t, srv.URL+"/v1/chat/completions", "x"))
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, resp); got != oRole+oQuota || srv.Hits() != 1 || len(stops) != 1 || stops[0].Reason != ReasonNotRetryable {
		t.Fatalf("hits %d body %q stops %+v", srv.Hits(), got, stops)
	}

	req := post(t, "http://api.test/v1/chat/completions", "x")
	held := &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"text/event-stream"}},
		Body: io.NopCloser(strings.NewReader(oRole + oQuota)), Request: req}
	v := tr.decide(Attempt{Request: req, Response: held, Number: 1, Now: testNow, t: tr})
	if v.retry || v.status != http.StatusTooManyRequests || v.reason != ReasonNotRetryable || v.cause != "in-stream error: insufficient_quota" {
		t.Fatalf("verdict %+v", v)
	}
}

// On a failover Transport, a quota error sent in the stream after the role
// chunk, before any output, moves the request to another key as a 429
// quota response would, and takes the key out: key b serves the stream
// whole, and the caller never sees key a's.
func TestInStreamQuotaMovesAFailoverTransportToAnotherKey(t *testing.T) {
	p := newProvider(t, func(key string) http.HandlerFunc {
		if key == "sk-a" {
			return sse(oRole, oQuota)
		}
		return sse(oStream)
	})
	var health []HealthEvent
	_, c := failoverTransport(t, newFakeClock(), Failover{Targets: []Target{{
		Name: "openai", BaseURL: p.URL + "/v1", Keys: []Key{NewKey("a", "sk-a"), NewKey("b", "sk-b")},
	}}}, WithOnHealth(func(e HealthEvent) { health = append(health, e) }))
	resp, err := c.Do(post(t, p.URL+"/v1/chat/completions", `{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, resp); got != oStream || fmt.Sprint(p.keys()) != "[sk-a sk-b]" {
		t.Fatalf("keys %v, body %q: want key b's stream, whole", p.keys(), got)
	}
	if len(health) != 1 || health[0].Health != KeyOutQuota || health[0].Key != "a" {
		t.Fatalf("health %+v: want key a out for its quota", health)
	}
}

// A Classifier sees the event the stream is judged by, and can still read
// the opening events before it; both are put back for the caller.
func TestClassifierSeesTheDecidingEventAndTheOpeningEvents(t *testing.T) {
	srv := newScripted(t, sse(aMessageStart, aEmptyBlock, ": keep-alive\n\n", aPing, aDelta, aEnd))
	var first Event
	var firstOK bool
	var opening []Event
	rule := ClassifierFunc(func(a Attempt) Decision {
		var err error
		first, firstOK, err = a.FirstEvent()
		if err != nil {
			t.Error(err)
		}
		opening = a.OpeningEvents()
		return Decision{}
	})
	_, c := testTransport(t, newFakeClock(), WithClassifier(Classifiers(rule, DefaultClassifier())))
	resp, err := c.Do(post(t, srv.URL+"/v1/messages", "x"))
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, resp); got != aMessageStart+aEmptyBlock+": keep-alive\n\n"+aPing+aDelta+aEnd {
		t.Fatalf("body %q", got)
	}
	if !firstOK || first.Name != "content_block_delta" || !strings.Contains(string(first.Data), `"text":"Hello"`) {
		t.Fatalf("first event %v %q %q", firstOK, first.Name, first.Data)
	}
	var names []string
	for _, e := range opening {
		names = append(names, e.Name)
	}
	if strings.Join(names, ",") != "message_start,content_block_start,ping" || !strings.Contains(string(opening[0].Data), `"id":"msg_1"`) {
		t.Fatalf("opening events %v", names)
	}
}

// Opening events past 64 KiB end the hold: the stream is handed over as it
// is, and what follows is the caller's.
func TestHoldEndsAtItsByteBound(t *testing.T) {
	pings := strings.Repeat(aPing, (64<<10)/len(aPing)+1)
	srv := newScripted(t, sse(aMessageStart, pings, anthropicOverloaded), sse(aStream))
	_, c := testTransport(t, newFakeClock())
	resp, err := c.Do(post(t, srv.URL+"/v1/messages", "x"))
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, resp); got != aMessageStart+pings+anthropicOverloaded || srv.Hits() != 1 {
		t.Fatalf("hits %d, %d bytes", srv.Hits(), len(got))
	}
}

// A reasoning model sends message_start at once and then thinks for a
// minute. It is handed over when the hold passes and never failed or
// retried, even with a first-event timeout shorter than the hold: that
// timeout is about a stream that sends nothing at all.
func TestSynctest_ThinkingModelIsDeliveredLateNeverRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		writers := make(chan *io.PipeWriter, 2)
		var calls atomic.Int32
		base := pipeBase(t, writers)
		counting := roundTripFunc(func(r *http.Request) (*http.Response, error) {
			calls.Add(1)
			return base(r)
		})
		tr := NewTransport(counting, WithFirstEventTimeout(5*time.Second))
		go func() {
			w := <-writers
			_, _ = io.WriteString(w, aMessageStart+aEmptyBlock)
			time.Sleep(time.Minute)
			_, _ = io.WriteString(w, aDelta+aEnd)
			_ = w.Close()
		}()
		start := time.Now()
		req, _ := http.NewRequest(http.MethodPost, "http://api.test/v1/messages", strings.NewReader("x"))
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d != defaultFirstEventHold {
			t.Fatalf("handed over after %v, want the %v hold", d, defaultFirstEventHold)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(body) != aMessageStart+aEmptyBlock+aDelta+aEnd || calls.Load() != 1 {
			t.Fatalf("body %q err %v calls %d", body, err, calls.Load())
		}
	})
}

// The hold counts from the response, not from the first event: with the
// timeout before the hold, an event at 4 s leaves the hold its last 6 s.
func TestSynctest_HoldCountsFromTheResponseAfterTheTimeoutIsMet(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		writers := make(chan *io.PipeWriter, 1)
		tr := NewTransport(pipeBase(t, writers), WithFirstEventTimeout(5*time.Second))
		go func() {
			w := <-writers
			time.Sleep(4 * time.Second)
			_, _ = io.WriteString(w, aMessageStart)
		}()
		start := time.Now()
		req, _ := http.NewRequest(http.MethodPost, "http://api.test/v1/messages", strings.NewReader("x"))
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if d := time.Since(start); d != defaultFirstEventHold {
			t.Fatalf("handed over after %v", d)
		}
	})
}

// With the hold off, the stream is held until its first output however
// long it takes, and an error after the opening events is still retried.
func TestSynctest_HoldOffWaitsForTheFirstOutput(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		writers := make(chan *io.PipeWriter, 2)
		tr := NewTransport(pipeBase(t, writers), WithFirstEventHold(0), WithRand(fixedRand(0.5)))
		go func() {
			w := <-writers
			_, _ = io.WriteString(w, aMessageStart)
			time.Sleep(time.Hour)
			_, _ = io.WriteString(w, anthropicOverloaded)
			_ = w.Close()
			w = <-writers
			_, _ = io.WriteString(w, aStream)
			_ = w.Close()
		}()
		req, _ := http.NewRequest(http.MethodPost, "http://api.test/v1/messages", strings.NewReader("x"))
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != aStream {
			t.Fatalf("body %q", body)
		}
	})
}

// A stream that broke before its first output, on every attempt, ends in
// an *Error that says so.
func TestCutBeforeFirstOutputEveryTimeIsAnError(t *testing.T) {
	srv := newScripted(t, sseThenCut(aMessageStart))
	_, c := testTransport(t, newFakeClock(), WithPolicy(Policy{MaxAttempts: 2}))
	_, err := c.Do(post(t, srv.URL+"/v1/messages", "x"))
	var e *Error
	if !errors.As(err, &e) || e.Reason != ReasonExhausted || e.Attempts != 2 || srv.Hits() != 2 {
		t.Fatalf("got %v after %d hits", err, srv.Hits())
	}
}

// The first output reaches the caller before the server sends more:
// nothing is held past the commit point.
func TestStreamIsLiveFromTheFirstOutput(t *testing.T) {
	release := make(chan struct{})
	srv := newScripted(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, aMessageStart+aEmptyBlock+aPing+aDelta)
		w.(http.Flusher).Flush()
		<-release
		_, _ = io.WriteString(w, aEnd)
	})
	defer close(release)
	_, c := testTransport(t, newFakeClock())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/v1/messages", strings.NewReader("x"))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	want := aMessageStart + aEmptyBlock + aPing + aDelta
	got := make([]byte, len(want))
	if _, err := io.ReadFull(resp.Body, got); err != nil || string(got) != want {
		t.Fatalf("read %q, %v: the first output was held back until the server sent more", got, err)
	}
}

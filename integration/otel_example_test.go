package integration

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/llmretry/llmretry"
)

// attemptHeader carries the attempt's number from llmretry's Transport to
// the span of that attempt.
const attemptHeader = "X-Llmretry-Attempt"

// resendCount sits under otelhttp's Transport, where the request's context
// holds the attempt's span: it marks a resend with the semantic-convention
// attribute http.request.resend_count (1 on the first retry), and takes the
// attempt header off before the request leaves.
type resendCount struct{ base http.RoundTripper }

func (rc resendCount) RoundTrip(r *http.Request) (*http.Response, error) {
	if n, err := strconv.Atoi(r.Header.Get(attemptHeader)); err == nil {
		if n > 1 {
			trace.SpanFromContext(r.Context()).SetAttributes(attribute.Int("http.request.resend_count", n-1))
		}
		r = r.Clone(r.Context())
		r.Header.Del(attemptHeader)
	}
	return rc.base.RoundTrip(r)
}

// llmretry composed with OpenTelemetry's otelhttp: a client span per attempt,
// under the caller's own span around all of them, each resend marked with
// http.request.resend_count. otelhttp goes under llmretry, so that each
// attempt is its own span; put it over llmretry instead for one span around
// all attempts. This lives beside the tests, not in the core package, so
// that OpenTelemetry is no dependency of llmretry's.
func Example_otelhttp() {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) <= 2 {
			w.Header().Set("Retry-After-Ms", "5")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, `{"ok":true}`)
	}))
	defer srv.Close()

	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer func() { _ = tp.Shutdown(context.Background()) }()

	perAttempt := otelhttp.NewTransport(resendCount{http.DefaultTransport}, otelhttp.WithTracerProvider(tp))
	client := &http.Client{Transport: llmretry.NewTransport(perAttempt, llmretry.WithAttemptHeader(attemptHeader))}

	ctx, parent := tp.Tracer("example").Start(context.Background(), "chat")
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	resp, err := client.Do(req)
	if err != nil {
		fmt.Println(err)
		return
	}
	resp.Body.Close()
	parent.End()

	for _, s := range spans.Ended() {
		resend := "-"
		for _, a := range s.Attributes() {
			if a.Key == "http.request.resend_count" {
				resend = a.Value.Emit()
			}
		}
		fmt.Printf("%s: resend_count %s, parent %v\n", s.Name(), resend, s.Parent().SpanID() == parent.SpanContext().SpanID())
	}
	// Output:
	// HTTP GET: resend_count -, parent true
	// HTTP GET: resend_count 1, parent true
	// HTTP GET: resend_count 2, parent true
	// chat: resend_count -, parent false
}

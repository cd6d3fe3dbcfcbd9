package proxy

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/llmretry/llmretry"
)

// Metrics counts what the proxy did, for /metrics in the Prometheus text
// format. Label values come from small fixed sets (status codes, wait
// sources, stop reasons), never from request data.
type Metrics struct {
	attempts atomic.Int64
	// requests counts answers by status code, without a lock: every request
	// passes here, where retries and stops are rare.
	requests [1000]atomic.Int64
	mu       sync.Mutex
	retries  map[string]int64 // by cause
	waits    map[string]int64 // by wait source
	waitSecs map[string]float64
	stops    map[string]int64 // by reason
	budget   func() (requests, retries int64)
}

func newMetrics() *Metrics {
	return &Metrics{
		retries: map[string]int64{}, waits: map[string]int64{},
		waitSecs: map[string]float64{}, stops: map[string]int64{},
	}
}

func (m *Metrics) request(code int) {
	if code < 0 || code >= len(m.requests) { // net/http allows only three digits
		code = 0
	}
	m.requests[code].Add(1)
}

func (m *Metrics) onRetry(e llmretry.RetryEvent) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e.Attempt > 0 {
		m.retries[causeLabel(e)]++
	}
	m.waits[e.Source.String()]++
	m.waitSecs[e.Source.String()] += e.Wait.Seconds()
}

func (m *Metrics) onStop(e llmretry.StopEvent) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stops[reasonLabel(e.Reason)]++
}

// causeLabel turns a retry's cause into a label of a small fixed set.
func causeLabel(e llmretry.RetryEvent) string {
	switch e.Failure {
	case llmretry.FailureFirstEvent:
		return "first_event_error"
	case llmretry.FailureStream:
		return "stream_before_first_event"
	case llmretry.FailureStatus:
		return fmt.Sprintf("status_%d", e.StatusCode)
	}
	return "transport_error"
}

func reasonLabel(r llmretry.Reason) string {
	return strings.NewReplacer(" ", "_", "-", "_").Replace(r.String())
}

// WriteTo writes the metrics in the Prometheus text exposition format.
func (m *Metrics) WriteTo(w io.Writer) (int64, error) {
	var b strings.Builder
	m.mu.Lock()
	family := func(name, help, typ string) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
	}
	labelled := func(name, label string, vals map[string]int64) {
		for _, k := range slices.Sorted(maps.Keys(vals)) {
			fmt.Fprintf(&b, "%s{%s=%q} %d\n", name, label, k, vals[k])
		}
	}
	family("llmretry_requests_total", "Requests the proxy answered, by status code.", "counter")
	for code := range m.requests {
		if n := m.requests[code].Load(); n > 0 {
			fmt.Fprintf(&b, "llmretry_requests_total{code=\"%d\"} %d\n", code, n)
		}
	}
	family("llmretry_attempts_total", "Attempts sent upstream, first attempts and retries.", "counter")
	fmt.Fprintf(&b, "llmretry_attempts_total %d\n", m.attempts.Load())
	family("llmretry_retries_total", "Retries, by what caused them.", "counter")
	labelled("llmretry_retries_total", "cause", m.retries)
	family("llmretry_waits_total", "Waits before an attempt, by where the wait came from.", "counter")
	labelled("llmretry_waits_total", "source", m.waits)
	family("llmretry_wait_seconds_total", "Seconds waited before attempts, by where the wait came from.", "counter")
	for _, k := range slices.Sorted(maps.Keys(m.waitSecs)) {
		fmt.Fprintf(&b, "llmretry_wait_seconds_total{source=%q} %g\n", k, m.waitSecs[k])
	}
	family("llmretry_stops_total", "Requests that ended on a failure without further retries, by reason.", "counter")
	labelled("llmretry_stops_total", "reason", m.stops)
	m.mu.Unlock()
	if m.budget != nil {
		req, ret := m.budget()
		family("llmretry_budget_requests", "First attempts counted in the retry budget's window.", "gauge")
		fmt.Fprintf(&b, "llmretry_budget_requests %d\n", req)
		family("llmretry_budget_retries", "Retries counted in the retry budget's window.", "gauge")
		fmt.Fprintf(&b, "llmretry_budget_retries %d\n", ret)
	}
	n, err := io.WriteString(w, b.String())
	return int64(n), err
}

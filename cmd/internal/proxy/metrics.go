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
	// What storm control cost, for the one upstream (its host is the only
	// label value): retries the budget refused, requests a cooldown held,
	// and for how long.
	upstream    string
	refused     int64
	held        int64
	heldSeconds float64
	budget      func() llmretry.BudgetCounts
	heldBodies  func() int64 // bytes of request bodies held now
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
	if e.Source == llmretry.SourceCooldown {
		m.held++
		m.heldSeconds += e.Wait.Seconds()
	}
	m.waits[e.Source.String()]++
	m.waitSecs[e.Source.String()] += e.Wait.Seconds()
}

func (m *Metrics) onStop(e llmretry.StopEvent) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stops[reasonLabel(e.Reason)]++
	if e.Reason == llmretry.ReasonBudget {
		m.refused++
	}
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
	up := map[string]int64{m.upstream: m.refused}
	family("llmretry_budget_refused_total", "Retries the retry budget refused, by upstream host.", "counter")
	labelled("llmretry_budget_refused_total", "upstream", up)
	up[m.upstream] = m.held
	family("llmretry_cooldown_held_total", "Requests a cooldown held before their first attempt, by upstream host.", "counter")
	labelled("llmretry_cooldown_held_total", "upstream", up)
	family("llmretry_cooldown_held_seconds_total", "Seconds requests were held by cooldowns, by upstream host.", "counter")
	fmt.Fprintf(&b, "llmretry_cooldown_held_seconds_total{upstream=%q} %g\n", m.upstream, m.heldSeconds)
	m.mu.Unlock()
	if m.heldBodies != nil {
		family("llmretry_request_body_held_bytes", "Bytes of request bodies the proxy holds now, so that a retry can resend them.", "gauge")
		fmt.Fprintf(&b, "llmretry_request_body_held_bytes %d\n", m.heldBodies())
	}
	if m.budget != nil {
		c := m.budget()
		for _, g := range []struct {
			name, help string
			v          int64
		}{
			{"llmretry_budget_requests", "First attempts counted in the retry budget's window.", c.Requests},
			{"llmretry_budget_retries", "Retries granted in the retry budget's window.", c.Retries},
			{"llmretry_budget_retries_ok", "Retries in the window that worked, each paying for one that failed.", c.RetriesOK},
		} {
			family(g.name, g.help, "gauge")
			fmt.Fprintf(&b, "%s %d\n", g.name, g.v)
		}
		family("llmretry_budget_load_driven", "1 while failures rise with the proxy's own load, and retries are held to the ratio.", "gauge")
		loadDriven := 0
		if c.LoadDriven() {
			loadDriven = 1
		}
		fmt.Fprintf(&b, "llmretry_budget_load_driven %d\n", loadDriven)
	}
	n, err := io.WriteString(w, b.String())
	return int64(n), err
}

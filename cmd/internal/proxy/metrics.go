package proxy

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/llmretry/llmretry"
)

// Metrics is what the proxy did, for /metrics, through Prometheus's client
// library. Label values come from small fixed sets (status codes, wait
// sources, stop reasons, failure kinds, the one upstream's host), never from
// request data such as paths or keys.
type Metrics struct {
	reg *prometheus.Registry
	// requests counts answers by status code, without a lock: every request
	// passes here, where retries and stops are rare.
	requests [1000]atomic.Int64

	attempts       prometheus.Counter
	retries        *prometheus.CounterVec // by cause
	waits          *prometheus.HistogramVec
	stops          *prometheus.CounterVec // by reason
	refused        prometheus.Counter
	held           prometheus.Counter
	heldSeconds    prometheus.Counter
	headerLatency  prometheus.Histogram
	firstEventWait prometheus.Histogram
}

// latencyBuckets run from a few milliseconds (a proxy's own cost) to ten
// minutes (a reasoning model's first byte).
var latencyBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}

// newMetrics registers the proxy's metrics, and the Go and process
// collectors, for upstream (its host is the storm-control label's one
// value). budget and heldBodies, if set, are read at each scrape.
func newMetrics(upstream string, budget func() llmretry.BudgetCounts, heldBodies func() int64) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	up := prometheus.Labels{"upstream": upstream}
	m.attempts = prometheus.NewCounter(prometheus.CounterOpts{Name: "llmretry_attempts_total", Help: "Attempts sent upstream, first attempts and retries."})
	m.retries = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "llmretry_retries_total", Help: "Retries, by what caused them."}, []string{"cause"})
	m.waits = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "llmretry_wait_seconds", Help: "Waits before an attempt, by where the wait came from.", Buckets: latencyBuckets}, []string{"source"})
	m.stops = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "llmretry_stops_total", Help: "Requests that ended on a failure without further retries, by reason."}, []string{"reason"})
	m.refused = prometheus.NewCounter(prometheus.CounterOpts{Name: "llmretry_budget_refused_total", Help: "Retries the retry budget refused, by upstream host.", ConstLabels: up})
	m.held = prometheus.NewCounter(prometheus.CounterOpts{Name: "llmretry_cooldown_held_total", Help: "Requests a cooldown held before their first attempt, by upstream host.", ConstLabels: up})
	m.heldSeconds = prometheus.NewCounter(prometheus.CounterOpts{Name: "llmretry_cooldown_held_seconds_total", Help: "Seconds requests were held by cooldowns, by upstream host.", ConstLabels: up})
	m.headerLatency = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "llmretry_response_header_seconds", Help: "From a request's arrival to its response headers, retries and waits included.", Buckets: latencyBuckets})
	m.firstEventWait = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "llmretry_first_event_seconds", Help: "From a streamed request's arrival to the first bytes of its stream reaching the client.", Buckets: latencyBuckets})
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.attempts, m.retries, m.waits, m.stops, m.refused, m.held, m.heldSeconds, m.headerLatency, m.firstEventWait,
		requestsCollector{m})
	if heldBodies != nil {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "llmretry_request_body_held_bytes",
			Help: "Bytes of request bodies the proxy holds now, so that a retry can resend them."}, func() float64 { return float64(heldBodies()) }))
	}
	if budget != nil {
		for _, g := range []struct {
			name, help string
			v          func(llmretry.BudgetCounts) float64
		}{
			{"llmretry_budget_requests", "First attempts counted in the retry budget's window.", func(c llmretry.BudgetCounts) float64 { return float64(c.Requests) }},
			{"llmretry_budget_retries", "Retries granted in the retry budget's window.", func(c llmretry.BudgetCounts) float64 { return float64(c.Retries) }},
			{"llmretry_budget_retries_ok", "Retries in the window that worked, each paying for one that failed.", func(c llmretry.BudgetCounts) float64 { return float64(c.RetriesOK) }},
			{"llmretry_budget_load_driven", "1 while failures rise with the proxy's own load, and successes stop paying for failed retries.", func(c llmretry.BudgetCounts) float64 {
				if c.LoadDriven() {
					return 1
				}
				return 0
			}},
		} {
			m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: g.name, Help: g.help}, func() float64 { return g.v(budget()) }))
		}
	}
	return m
}

// Handler serves the metrics in Prometheus's text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

func (m *Metrics) request(code int) {
	if code < 0 || code >= len(m.requests) { // net/http allows only three digits
		code = 0
	}
	m.requests[code].Add(1)
}

func (m *Metrics) attempt() { m.attempts.Inc() }

func (m *Metrics) onRetry(e llmretry.RetryEvent) {
	if e.Attempt > 0 {
		m.retries.WithLabelValues(causeLabel(e)).Inc()
	}
	m.waits.WithLabelValues(e.Source.String()).Observe(e.Wait.Seconds())
	if e.Source == llmretry.SourceCooldown {
		m.held.Inc()
		m.heldSeconds.Add(e.Wait.Seconds())
	}
}

func (m *Metrics) onStop(e llmretry.StopEvent) {
	m.stops.WithLabelValues(reasonLabel(e.Reason)).Inc()
	if e.Reason == llmretry.ReasonBudget {
		m.refused.Inc()
	}
}

// responded records a request's time to its response headers.
func (m *Metrics) responded(since time.Time) { m.headerLatency.Observe(time.Since(since).Seconds()) }

// firstEvent records a streamed request's time to its first bytes.
func (m *Metrics) firstEvent(since time.Time) { m.firstEventWait.Observe(time.Since(since).Seconds()) }

// requestsCollector exposes the lock-free counts of answers by code.
type requestsCollector struct{ m *Metrics }

var requestsDesc = prometheus.NewDesc("llmretry_requests_total", "Requests the proxy answered, by status code.", []string{"code"}, nil)

func (c requestsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- requestsDesc }

func (c requestsCollector) Collect(ch chan<- prometheus.Metric) {
	for code := range c.m.requests {
		if n := c.m.requests[code].Load(); n > 0 {
			ch <- prometheus.MustNewConstMetric(requestsDesc, prometheus.CounterValue, float64(n), strconv.Itoa(code))
		}
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

package proxy

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/llmretry/llmretry"
)

// Metrics is what the proxy did, for /metrics, through Prometheus's client
// library. Label values come from small fixed sets (status codes, wait
// sources, stop reasons, failure kinds, upstream hosts, and the route
// prefixes, target and key names of the config file), never from request
// data such as paths, and never a key's value. The routes of a config file
// share one Metrics; their per-target series carry the route beside the
// target, since two routes may well name their targets alike (the same
// upstream, with other keys), and two series of one name and labels would
// make every scrape fail.
type Metrics struct {
	reg *prometheus.Registry
	// routes: the series of a target carry a "route" label first (the
	// config's routes); without it, one upstream has no route to name.
	routes bool
	// requests counts answers by status code, without a lock: every request
	// passes here, where retries and stops are rare.
	requests [1000]atomic.Int64

	attempts       prometheus.Counter
	retries        *prometheus.CounterVec // by cause
	waits          *prometheus.HistogramVec
	stops          *prometheus.CounterVec // by reason
	refused        *prometheus.CounterVec // by [route and] upstream
	held           *prometheus.CounterVec // by [route and] upstream
	heldSeconds    *prometheus.CounterVec // by [route and] upstream
	headerLatency  prometheus.Histogram
	firstEventWait prometheus.Histogram
	served         *prometheus.CounterVec // by [route and] target
	failovers      *prometheus.CounterVec // by [route,] from and to target
	health         *prometheus.CounterVec // by [route,] target, key and change
	continuations  *prometheus.CounterVec // by [route,] outcome
	budgets        *budgetCollector
}

// latencyBuckets run from a few milliseconds (a proxy's own cost) to ten
// minutes (a reasoning model's first byte).
var latencyBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}

// newMetrics registers the proxy's metrics, and the Go and process
// collectors. heldBodies, if set, is read at each scrape; retry budgets are
// added with addBudget. routes: the per-target series carry the route.
func newMetrics(heldBodies func() int64, routes bool) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), routes: routes}
	m.budgets = &budgetCollector{gauges: budgetGauges(m.labels("upstream"))}
	up := m.labels("upstream")
	m.attempts = prometheus.NewCounter(prometheus.CounterOpts{Name: "llmretry_attempts_total", Help: "Attempts sent upstream, first attempts and retries."})
	m.retries = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "llmretry_retries_total", Help: "Retries, by what caused them."}, []string{"cause"})
	m.waits = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "llmretry_wait_seconds", Help: "Waits before an attempt, by where the wait came from.", Buckets: latencyBuckets}, []string{"source"})
	m.stops = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "llmretry_stops_total", Help: "Requests that ended on a failure without further retries, by reason."}, []string{"reason"})
	m.refused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "llmretry_budget_refused_total", Help: "Retries the retry budget refused, by upstream host (or failover target)."}, up)
	m.held = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "llmretry_cooldown_held_total", Help: "Requests a cooldown held before their first attempt, by upstream host."}, up)
	m.heldSeconds = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "llmretry_cooldown_held_seconds_total", Help: "Seconds requests were held by cooldowns, by upstream host."}, up)
	m.headerLatency = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "llmretry_response_header_seconds", Help: "From a request's arrival to its response headers, retries and waits included.", Buckets: latencyBuckets})
	m.firstEventWait = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "llmretry_first_event_seconds", Help: "From a streamed request's arrival to the first bytes of its stream reaching the client.", Buckets: latencyBuckets})
	m.served = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "llmretry_target_responses_total", Help: "Responses handed over, by the failover target that sent them."}, m.labels("target"))
	m.failovers = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "llmretry_failovers_total", Help: "Requests moved at once to another key or target, by the target they left and the one they went to."}, m.labels("from", "to"))
	m.health = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "llmretry_health_changes_total", Help: "Keys resting or taken out, targets ejected or restored, by target, key id and change."}, m.labels("target", "key", "change"))
	m.continuations = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "llmretry_continuations_total",
		Help: "Streams that broke after output reached the client, with continuation on, by what became of them."}, m.labels("outcome"))
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.attempts, m.retries, m.waits, m.stops, m.refused, m.held, m.heldSeconds, m.headerLatency, m.firstEventWait,
		m.served, m.failovers, m.health, m.continuations, requestsCollector{m}, m.budgets)
	if heldBodies != nil {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "llmretry_request_body_held_bytes",
			Help: "Bytes of request bodies the proxy holds now, so that a retry can resend them."}, func() float64 { return float64(heldBodies()) }))
	}
	return m
}

// labels are the label names of a per-target series: with routes, "route"
// first.
func (m *Metrics) labels(names ...string) []string {
	if m.routes {
		return append([]string{"route"}, names...)
	}
	return names
}

// values are the label values of a per-target series, as labels names
// them.
func (m *Metrics) values(route string, vs ...string) []string {
	if m.routes {
		return append([]string{route}, vs...)
	}
	return vs
}

// addUpstream shows upstream's storm-control counters from zero.
func (m *Metrics) addUpstream(route, upstream string) {
	lv := m.values(route, upstream)
	m.refused.WithLabelValues(lv...)
	m.held.WithLabelValues(lv...)
	m.heldSeconds.WithLabelValues(lv...)
}

// addBudget shows a retry budget's window under the route and upstream
// labels.
func (m *Metrics) addBudget(route, upstream string, counts func() llmretry.BudgetCounts) {
	m.budgets.mu.Lock()
	defer m.budgets.mu.Unlock()
	m.budgets.sources = append(m.budgets.sources, budgetSource{m.values(route, upstream), counts})
}

// budgetCollector reads the retry budgets at each scrape.
type budgetCollector struct {
	gauges  []budgetGauge
	mu      sync.Mutex
	sources []budgetSource
}

type budgetSource struct {
	labels []string
	counts func() llmretry.BudgetCounts
}

type budgetGauge struct {
	desc *prometheus.Desc
	v    func(llmretry.BudgetCounts) float64
}

// budgetGauges are the series of a retry budget, with the given labels.
func budgetGauges(labels []string) []budgetGauge {
	return []budgetGauge{
		{prometheus.NewDesc("llmretry_budget_requests", "First attempts counted in the retry budget's window.", labels, nil),
			func(c llmretry.BudgetCounts) float64 { return float64(c.Requests) }},
		{prometheus.NewDesc("llmretry_budget_retries", "Retries granted in the retry budget's window.", labels, nil),
			func(c llmretry.BudgetCounts) float64 { return float64(c.Retries) }},
		{prometheus.NewDesc("llmretry_budget_retries_ok", "Retries in the window that worked, each paying for one that failed.", labels, nil),
			func(c llmretry.BudgetCounts) float64 { return float64(c.RetriesOK) }},
		{prometheus.NewDesc("llmretry_budget_load_driven", "1 while failures rise with the proxy's own load, and successes stop paying for failed retries.", labels, nil),
			func(c llmretry.BudgetCounts) float64 {
				if c.LoadDriven() {
					return 1
				}
				return 0
			}},
	}
}

func (b *budgetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, g := range b.gauges {
		ch <- g.desc
	}
}

func (b *budgetCollector) Collect(ch chan<- prometheus.Metric) {
	b.mu.Lock()
	sources := append([]budgetSource(nil), b.sources...)
	b.mu.Unlock()
	for _, s := range sources {
		c := s.counts()
		for _, g := range b.gauges {
			ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, g.v(c), s.labels...)
		}
	}
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

// onRetry counts a retry, or a move, of a request on route to upstream
// (the host, or with failover the target the failed attempt went to).
func (m *Metrics) onRetry(e llmretry.RetryEvent, route, upstream string) {
	if e.Attempt > 0 {
		m.retries.WithLabelValues(causeLabel(e)).Inc()
	}
	if e.Source == llmretry.SourceFailover {
		m.failovers.WithLabelValues(m.values(route, e.Target, e.NextTarget)...).Inc()
		return
	}
	m.waits.WithLabelValues(e.Source.String()).Observe(e.Wait.Seconds())
	if e.Source == llmretry.SourceCooldown {
		m.held.WithLabelValues(m.values(route, upstream)...).Inc()
		m.heldSeconds.WithLabelValues(m.values(route, upstream)...).Add(e.Wait.Seconds())
	}
}

func (m *Metrics) onStop(e llmretry.StopEvent, route, upstream string) {
	m.stops.WithLabelValues(reasonLabel(e.Reason)).Inc()
	if e.Reason == llmretry.ReasonBudget {
		m.refused.WithLabelValues(m.values(route, upstream)...).Inc()
	}
}

func (m *Metrics) onHealth(e llmretry.HealthEvent, route string) {
	m.health.WithLabelValues(m.values(route, e.Target, e.Key, strings.NewReplacer(" ", "_", ":", "").Replace(e.Health.String()))...).Inc()
}

// onContinuation counts what became of a stream that broke after output:
// continued, refused_tool_call, refused, failed, over_cap, completed.
func (m *Metrics) onContinuation(e llmretry.ContinuationEvent, route string) {
	outcome := strings.NewReplacer(" the ", "_", " ", "_", ":", "").Replace(e.Outcome.String())
	m.continuations.WithLabelValues(m.values(route, outcome)...).Inc()
}

// servedBy counts a response a failover target handed over. Every
// response with failover passes here: no slice is built for the labels.
func (m *Metrics) servedBy(route, target string) {
	if m.routes {
		m.served.WithLabelValues(route, target).Inc()
		return
	}
	m.served.WithLabelValues(target).Inc()
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

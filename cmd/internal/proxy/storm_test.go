package proxy

import (
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
)

// metric reads one sample of the metrics: name{labels} value.
func metric(t *testing.T, p *Proxy, sample string) float64 {
	t.Helper()
	return metricOf(t, p.Metrics(), sample)
}

// metricOf reads one sample of m.
func metricOf(t *testing.T, m *Metrics, sample string) float64 {
	t.Helper()
	got := scrape(t, m)
	found := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(sample) + ` (\S+)$`).FindStringSubmatch(got)
	if found == nil {
		t.Fatalf("no %s in:\n%s", sample, got)
	}
	v, err := strconv.ParseFloat(found[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// The budget's choice is the operator's: on by default (retries refused in
// a full outage, and counted per upstream), or off.
func TestBudgetCanBeTurnedOffAndItsRefusalsAreCounted(t *testing.T) {
	for _, off := range []bool{false, true} {
		var hits atomic.Int64
		down := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			w.WriteHeader(http.StatusServiceUnavailable)
		})
		base, p, _ := start(t, down, func(c *Config) { c.BudgetOff = off })
		for range 30 {
			resp, err := client(t).Post(base+"/v1/chat/completions", "application/json", strings.NewReader(`{"model":"m"}`))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
		}
		host := p.cfg.Upstream.Host
		refused := metric(t, p, `llmretry_budget_refused_total{upstream="`+host+`"}`)
		if off {
			if hits.Load() != 90 || refused != 0 {
				t.Fatalf("budget off: %d attempts, %v refused; want 90 and 0", hits.Load(), refused)
			}
			continue
		}
		// The reserve's 10 retries, then first attempts only.
		if hits.Load() != 40 || refused != 25 {
			t.Fatalf("budget on: %d attempts, %v refused; want 40 and 25", hits.Load(), refused)
		}
		if metric(t, p, `llmretry_budget_requests{upstream="`+host+`"}`) != 30 || metric(t, p, `llmretry_budget_retries{upstream="`+host+`"}`) != 10 {
			t.Fatal("budget gauges do not match")
		}
	}
}

// Cooldowns are on by default and counted per upstream; off, a 429's wait
// holds no other request.
func TestCooldownsCanBeTurnedOffAndTheirHoldsAreCounted(t *testing.T) {
	for _, off := range []bool{false, true} {
		var hits atomic.Int64
		limited := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if hits.Add(1) == 1 {
				w.Header().Set("Retry-After", "7")
				w.Header().Set("X-Ratelimit-Remaining-Requests", "0")
				w.WriteHeader(http.StatusTooManyRequests)
				return
			}
			io.WriteString(w, "{}")
		})
		base, p, _ := start(t, limited, func(c *Config) {
			c.CooldownsOff = off
			c.Policy.MaxAttempts = 1
		})
		for range 2 {
			req, _ := http.NewRequest(http.MethodPost, base+"/v1/chat/completions", strings.NewReader(`{"model":"gpt-4o"}`))
			req.Header.Set("Authorization", "Bearer k")
			resp, err := client(t).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
		}
		host := p.cfg.Upstream.Host
		held := metric(t, p, `llmretry_cooldown_held_total{upstream="`+host+`"}`)
		secs := metric(t, p, `llmretry_cooldown_held_seconds_total{upstream="`+host+`"}`)
		if off && (held != 0 || secs != 0) {
			t.Fatalf("cooldowns off: held %v for %vs", held, secs)
		}
		if !off && (held != 1 || secs < 7) {
			t.Fatalf("cooldowns on: held %v for %vs; want 1 for at least 7s", held, secs)
		}
	}
}

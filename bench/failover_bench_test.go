package bench

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmretry/llmretry"
	"github.com/llmretry/llmretry/llmretrytest"
)

// Time to fail over: from the moment a primary sends the failure the
// caller would otherwise have waited on (a 429 with Retry-After 20, a 503
// with its attempts spent, a refused connection), to the moment the
// fallback has the request. Both moments are taken on the servers, on one
// machine's clock; what the fallback then takes to answer is its own
// latency, and not counted. Reported as the median and p99 of each run's
// requests (failover-p50-µs, failover-p99-µs).
func BenchmarkTimeToFailover(b *testing.B) {
	for _, c := range []struct {
		name  string
		setup func(b *testing.B, m *moments, fallback string) (llmretry.Failover, string)
	}{
		{"429 Retry-After 20 to another key", func(b *testing.B, m *moments, fallback string) (llmretry.Failover, string) {
			// One server: key a is told to wait, key b is the fallback.
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				if r.Header.Get("Authorization") == "Bearer sk-a" {
					w.Header().Set("Retry-After", "20")
					m.failed.Store(time.Now().UnixNano())
					w.WriteHeader(http.StatusTooManyRequests)
					return
				}
				m.arrive(w)
			}))
			b.Cleanup(srv.Close)
			return llmretry.Failover{Targets: []llmretry.Target{{Name: "one", BaseURL: srv.URL,
				Keys: []llmretry.Key{llmretry.NewKey("a", "sk-a"), llmretry.NewKey("b", "sk-b")}}}}, srv.URL
		}},
		{"503 to the next target", func(b *testing.B, m *moments, fallback string) (llmretry.Failover, string) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				m.failed.Store(time.Now().UnixNano())
				w.WriteHeader(http.StatusServiceUnavailable)
			}))
			b.Cleanup(srv.Close)
			return llmretry.Failover{AttemptsPerTarget: 1, Outliers: llmretry.Outliers{Failures: 1 << 30},
				Targets: []llmretry.Target{{Name: "primary", BaseURL: srv.URL}, {Name: "fallback", BaseURL: fallback}}}, srv.URL
		}},
		{"refused connection to the next target", func(b *testing.B, m *moments, fallback string) (llmretry.Failover, string) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			dead := "http://" + ln.Addr().String()
			ln.Close()
			return llmretry.Failover{AttemptsPerTarget: 1, Outliers: llmretry.Outliers{Failures: 1 << 30},
				Targets: []llmretry.Target{{Name: "primary", BaseURL: dead}, {Name: "fallback", BaseURL: fallback}}}, dead
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			var m moments
			fb := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				m.arrive(w)
			}))
			b.Cleanup(fb.Close)
			f, first := c.setup(b, &m, fb.URL)
			clk := llmretrytest.NewClock(time.Now())
			base := &http.Transport{MaxIdleConnsPerHost: 16}
			b.Cleanup(base.CloseIdleConnections)
			// On a clock of its own, moved on after each request, so that
			// the key told to wait is free again for the next.
			tr, err := llmretry.NewFailoverTransport(base, f, llmretry.WithClock(clk), llmretry.WithHealthStore(nil), llmretry.WithBudget(nil))
			if err != nil {
				b.Fatal(err)
			}
			var gaps []time.Duration
			b.ReportAllocs()
			for b.Loop() {
				req, _ := http.NewRequest("POST", first+"/chat/completions", bytes.NewReader(requestJSON))
				// A refused dial has no server to note it: it is taken to
				// fail when the request starts (it fails within
				// microseconds on loopback), which only adds to the figure.
				m.failed.Store(time.Now().UnixNano())
				resp, err := tr.RoundTrip(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Fatalf("status %d", resp.StatusCode)
				}
				gaps = append(gaps, time.Duration(m.arrived.Load()-m.failed.Load()))
				clk.Advance(21 * time.Second)
			}
			slices.Sort(gaps)
			b.ReportMetric(float64(gaps[len(gaps)/2].Nanoseconds())/1e3, "failover-p50-µs")
			b.ReportMetric(float64(gaps[len(gaps)*99/100].Nanoseconds())/1e3, "failover-p99-µs")
		})
	}
}

// moments are when the primary failed and when the fallback got the
// request, in Unix nanoseconds.
type moments struct{ failed, arrived atomic.Int64 }

// arrive notes the fallback's moment and answers.
func (m *moments) arrive(w http.ResponseWriter) {
	m.arrived.Store(time.Now().UnixNano())
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(reply4K)
}

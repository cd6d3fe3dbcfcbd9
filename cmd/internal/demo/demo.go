// Package demo is the llmretry command's demo: concurrent streamed chats
// through llmretry's Transport with the real openai-go client, against an
// in-process mock provider that fails on purpose (or a real API).
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/llmretry/llmretry"
	"github.com/llmretry/llmretry/mockllm"
)

// DefaultFaults is the embedded fault mix: what a bad hour at a provider
// looks like, compressed.
const DefaultFaults = "503@8%,429:retry-after=1@5%,529@4%,reset@5%,sse-error@8%,quota@3%,drop=4@3%"

// DefaultFailoverFaults is the primary's mix in a failover demo: a
// provider having a worse hour than DefaultFaults, so that the fallback has
// work to do.
const DefaultFailoverFaults = "503@25%,429:retry-after=20@15%,529@5%,reset@8%,quota@2%,drop=4@3%"

// DefaultSeed is the seed whose story, with DefaultFaults and 40 chats,
// shows every case: 503, 429 with Retry-After, 529, a reset, an error as
// the first stream event, a quota error and a stream cut mid-reply.
const DefaultSeed = 12

// Config sets up a demo run.
type Config struct {
	Requests    int
	Concurrency int
	Faults      string // a mockllm fault spec, for the in-process mock
	Seed        uint64
	// Upstream, when set, is a real OpenAI-compatible API base URL (such
	// as https://api.openai.com/v1), used with APIKey instead of the mock.
	Upstream string
	APIKey   string
	Model    string
	// Terminal draws a progress bar; otherwise progress is plain lines.
	Terminal bool
	Policy   llmretry.Policy
	// Failover starts a second mock provider, healthy, and sends the chats
	// through a failover Transport: the faulty mock first, with two keys,
	// then the healthy one, which knows the model by another name. Every
	// chat shares the keys' and targets' health, so the seed alone fixes
	// which target serves each chat only with Concurrency 1, the
	// command's default for it.
	Failover bool
	// Continue turns on stream continuation: a stream cut after its first
	// output is finished by a continuation (the mock answers one), and the
	// chat's line says so.
	Continue bool
}

// Summary is what a run did.
type Summary struct {
	Requests, Succeeded, Failed int
	Attempts                    int64
	Retries                     map[string]int // by cause
	Waits                       map[string]int // by where the wait came from
	WaitTime                    time.Duration
	Stops                       map[string]int // failures not (or no longer) retried, by reason
	StreamsIntact               int            // streams that arrived whole, exactly once
	StreamsCut                  int            // streams cut after their first event: never replayed
	StreamsContinued            int            // with Continue: streams cut mid-reply and finished by a continuation
	Duplicated                  int            // streams whose text came twice: must stay 0
	Held                        int            // chats a cooldown held before their first attempt
	Elapsed                     time.Duration
	// With Failover: the target that served each chat's reply, the moves to
	// another key or target, and what happened to keys and targets.
	ServedBy  map[string]int
	Moves     map[string]int // "primary -> fallback", "primary key a -> key b"
	Health    map[string]int // "primary key a: key out: quota"
	failovers bool
	continues bool
}

// ErrDuplicated is returned when any stream's content arrived more than
// once, the one thing llmretry must never do.
var ErrDuplicated = errors.New("a stream's content arrived more than once")

// Run runs the demo, writing progress and the summary table to out.
func Run(ctx context.Context, cfg Config, out io.Writer) (*Summary, error) {
	if cfg.Requests <= 0 || cfg.Concurrency <= 0 {
		return nil, errors.New("requests and concurrency must be positive")
	}
	base, expected := cfg.Upstream, mockllm.ReplyText
	var mock *mockllm.Server
	fallbackBase := ""
	if cfg.Failover && cfg.Upstream != "" {
		return nil, errors.New("failover is shown with the mock providers only")
	}
	if base == "" {
		script, err := mockllm.ParseFaults(cfg.Faults)
		if err != nil {
			return nil, fmt.Errorf("faults: %w", err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		mock = mockllm.New(script, cfg.Seed)
		srv := &http.Server{Handler: mock}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		base = "http://" + ln.Addr().String() + "/v1"
		cfg.APIKey = "sk-demo-no-key-needed"
		fmt.Fprintf(out, "mock provider on %s with faults %q\n", base, cfg.Faults)
		if cfg.Failover {
			fb, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return nil, err
			}
			fsrv := &http.Server{Handler: mockllm.New(mockllm.Script{}, cfg.Seed)}
			go func() { _ = fsrv.Serve(fb) }()
			defer fsrv.Close()
			fallbackBase = "http://" + fb.Addr().String() + "/v1"
			fmt.Fprintf(out, "fallback mock provider on %s, healthy, serving %s as %s\n", fallbackBase, cfg.Model, fallbackModel)
		}
	} else {
		expected = "" // a real model's reply cannot be known in advance
		fmt.Fprintf(out, "upstream %s, model %s\n", base, cfg.Model)
	}

	s := &Summary{Requests: cfg.Requests, Retries: map[string]int{}, Waits: map[string]int{}, Stops: map[string]int{},
		ServedBy: map[string]int{}, Moves: map[string]int{}, Health: map[string]int{}, failovers: cfg.Failover, continues: cfg.Continue}
	var mu sync.Mutex
	attempts := &attemptCounter{byKey: map[string]int{}}
	under := &http.Transport{MaxIdleConnsPerHost: cfg.Concurrency}
	defer under.CloseIdleConnections()
	// A demo run is too short for a 10% budget to show anything but its
	// reserve, so the reserve covers one retry per request; the proxy and
	// the library keep the default.
	budget := llmretry.NewRatioBudget(llmretry.BudgetConfig{Reserve: cfg.Requests})
	// Each chat names itself to the mock (its number, and each attempt's),
	// and jitter is fixed, so that the same seed tells the same story
	// however the chats interleave.
	opts := []llmretry.Option{
		llmretry.WithPolicy(cfg.Policy), llmretry.WithBudget(budget),
		llmretry.WithAttemptHeader(mockllm.AttemptHeader), llmretry.WithRand(func() float64 { return 0.5 }),
		llmretry.WithOnRetry(func(e llmretry.RetryEvent) {
			mu.Lock()
			defer mu.Unlock()
			if e.Attempt > 0 {
				s.Retries[cause(e)]++
			}
			if e.Source == llmretry.SourceFailover {
				s.Moves[move(e)]++
				return
			}
			s.Waits[e.Source.String()]++
			s.WaitTime += e.Wait
			if e.Source == llmretry.SourceCooldown {
				s.Held++
			}
		}),
		llmretry.WithOnStop(func(e llmretry.StopEvent) {
			mu.Lock()
			defer mu.Unlock()
			s.Stops[e.Reason.String()+" ("+e.Cause+")"]++
		}),
		llmretry.WithOnHealth(func(e llmretry.HealthEvent) {
			mu.Lock()
			defer mu.Unlock()
			who := e.Target
			if e.Key != "" {
				who += " key " + e.Key
			}
			s.Health[who+": "+e.Health.String()]++
		}),
	}
	if cfg.Continue {
		opts = append(opts, llmretry.WithStreamContinuation(llmretry.Continuation{}))
	}
	var tr http.RoundTripper
	if cfg.Failover {

		ft, err := llmretry.NewFailoverTransport(countingTransport{under, attempts}, llmretry.Failover{Targets: []llmretry.Target{
			{Name: "primary", BaseURL: base, Keys: []llmretry.Key{llmretry.NewKey("a", "sk-demo-a"), llmretry.NewKey("b", "sk-demo-b")}},
			{Name: "fallback", BaseURL: fallbackBase, Keys: []llmretry.Key{llmretry.NewKey("f", "sk-demo-f")},
				Models: map[string]string{cfg.Model: fallbackModel}},
		}}, opts...)
		if err != nil {
			return nil, err
		}
		tr = ft
	} else {
		tr = llmretry.NewTransport(countingTransport{under, attempts}, opts...)
	}
	clientOpts := []option.RequestOption{option.WithAPIKey(cfg.APIKey),
		option.WithHTTPClient(&http.Client{Transport: tr}), option.WithMaxRetries(0)}
	// openai-go drops a base URL's query: its parameters (Azure's
	// api-version) go on every request, as the proxy sends them.
	baseURL, query, _ := strings.Cut(base, "?")
	for _, kv := range strings.Split(query, "&") {
		if k, v, _ := strings.Cut(kv, "="); k != "" {
			k, _ = url.QueryUnescape(k)
			v, _ = url.QueryUnescape(v)
			clientOpts = append(clientOpts, option.WithQueryAdd(k, v))
		}
	}
	client := openai.NewClient(append(clientOpts, option.WithBaseURL(baseURL+"/"))...)

	maxAttempts := cfg.Policy.MaxAttempts
	if maxAttempts <= 0 {
		maxAttempts = llmretry.DefaultPolicy().MaxAttempts
	}
	p := newProgress(out, cfg.Terminal, cfg.Requests, maxAttempts)
	start := time.Now()
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range jobs {
				key := strconv.Itoa(n)
				res := chat(ctx, client, cfg.Model, expected, key)
				res.attempts = attempts.of(key)
				if mock != nil {
					res.faults = mock.FaultsFor(key)
				}
				mu.Lock()
				switch {
				case res.err == nil:
					s.Succeeded++
				default:
					s.Failed++
				}
				if cfg.Failover && res.target != "" {
					s.ServedBy[res.target]++
				}
				switch res.stream {
				case streamIntact:
					s.StreamsIntact++
					if res.continued() {
						s.StreamsContinued++
					}
				case streamCut:
					s.StreamsCut++
				case streamDuplicated:
					s.Duplicated++
				}
				mu.Unlock()
				p.done(n, res)
			}
		}()
	}
	for n := 1; n <= cfg.Requests; n++ {
		select {
		case jobs <- n:
		case <-ctx.Done():
		}
	}
	close(jobs)
	wg.Wait()
	p.finish()
	s.Elapsed = time.Since(start)
	s.Attempts = attempts.total()
	s.write(out)
	if s.Duplicated > 0 {
		return s, ErrDuplicated
	}
	return s, ctx.Err()
}

type streamOutcome int

const (
	streamNone       streamOutcome = iota // no stream: the request failed before one
	streamIntact                          // whole, exactly once
	streamCut                             // cut after its first event
	streamDuplicated                      // content came twice
)

type result struct {
	err      error
	stream   streamOutcome
	text     string
	attempts int
	faults   []mockllm.Fault // what the mock served each attempt (none for a real API)
	target   string          // the failover target that sent the reply
}

// chat makes one streamed chat and checks what arrived. key names it to
// the mock.
func chat(ctx context.Context, client openai.Client, model, expected, key string) result {
	var raw *http.Response
	st := client.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
		Model:    model,
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Say hello in one sentence.")},
	}, option.WithHeader(mockllm.DrawKeyHeader, key), option.WithResponseInto(&raw))
	defer st.Close()
	var b strings.Builder
	events := 0
	for st.Next() {
		events++
		for _, c := range st.Current().Choices {
			b.WriteString(c.Delta.Content)
		}
	}
	text := b.String()
	r := result{err: st.Err(), text: text}
	if raw != nil {
		r.target = raw.Header.Get(llmretry.TargetHeader)
	}
	switch {
	case expected != "" && strings.Count(text, expected) > 1:
		r.stream = streamDuplicated
	case r.err != nil && events > 0:
		r.stream = streamCut
	case r.err == nil && (expected == "" || text == expected):
		r.stream = streamIntact
	}
	return r
}

// continued reports a stream the mock cut mid-reply that still arrived
// whole: a continuation finished it.
func (r result) continued() bool {
	if r.stream != streamIntact {
		return false
	}
	for _, f := range r.faults {
		if f.Kind == mockllm.Drop || f.Kind == mockllm.Cut {
			return true
		}
	}
	return false
}

// fallbackModel is the name the demo's fallback gives the model.
const fallbackModel = "fallback-model-mini"

// move names a move to another key or target.
func move(e llmretry.RetryEvent) string {
	if e.Target == e.NextTarget {
		return fmt.Sprintf("%s key %s -> key %s", e.Target, e.Key, e.NextKey)
	}
	return e.Target + " -> " + e.NextTarget
}

func cause(e llmretry.RetryEvent) string {
	switch e.Failure {
	case llmretry.FailureFirstEvent:
		return "error as first stream event"
	case llmretry.FailureStream:
		return "stream failed before first event"
	case llmretry.FailureStatus:
		return fmt.Sprintf("status %d", e.StatusCode)
	}
	return e.Cause
}

// attemptCounter counts the attempts that reach the provider, per chat.
type attemptCounter struct {
	mu    sync.Mutex
	byKey map[string]int
	all   int64
}

func (c *attemptCounter) add(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.byKey[key]++
	c.all++
}

func (c *attemptCounter) of(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.byKey[key]
}

func (c *attemptCounter) total() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.all
}

// countingTransport counts the attempts that reach the provider.
type countingTransport struct {
	base http.RoundTripper
	n    *attemptCounter
}

func (c countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.add(r.Header.Get(mockllm.DrawKeyHeader))
	return c.base.RoundTrip(r)
}

func (s *Summary) write(out io.Writer) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	row := func(k string, v any) { fmt.Fprintf(tw, "  %s\t%v\n", k, v) }
	fmt.Fprintln(tw, "\nsummary")
	row("requests", s.Requests)
	row("succeeded", s.Succeeded)
	row("failed (returned to the caller)", s.Failed)
	row("attempts sent", s.Attempts)
	for _, k := range slices.Sorted(maps.Keys(s.Retries)) {
		row("retries: "+k, s.Retries[k])
	}
	waits := 0
	for _, n := range s.Waits {
		waits += n
	}
	row("waits honoured", fmt.Sprintf("%d, %v in all across concurrent requests (they overlap)", waits, s.WaitTime.Round(100*time.Millisecond)))
	for _, k := range slices.Sorted(maps.Keys(s.Waits)) {
		label := "  from " + k
		if k == llmretry.SourceCooldown.String() {
			label += " (429s in a row for one key and model: other requests for them waited out the server's wait first)"
		}
		row(label, s.Waits[k])
	}
	for _, k := range slices.Sorted(maps.Keys(s.Stops)) {
		row("stopped: "+k, s.Stops[k])
	}
	if s.failovers {
		for _, k := range slices.Sorted(maps.Keys(s.ServedBy)) {
			row("served by target "+k, s.ServedBy[k])
		}
		for _, k := range slices.Sorted(maps.Keys(s.Moves)) {
			row("moved at once, no wait: "+k, s.Moves[k])
		}
		for _, k := range slices.Sorted(maps.Keys(s.Health)) {
			row(k, s.Health[k])
		}
	}
	row("streams intact, exactly once", s.StreamsIntact)
	if s.continues {
		row("  of which cut mid-reply and finished by a continuation", s.StreamsContinued)
	}
	row("streams cut mid-reply, not replayed", s.StreamsCut)
	row("streams duplicated", s.Duplicated)
	row("elapsed", s.Elapsed.Round(time.Millisecond))
	_ = tw.Flush()
}

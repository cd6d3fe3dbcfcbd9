package llmretry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// everyErrorIn walks err's whole chain, through Unwrap() error and
// Unwrap() []error.
func everyErrorIn(err error) []error {
	var all []error
	var walk func(error)
	walk = func(e error) {
		if e == nil {
			return
		}
		all = append(all, e)
		switch u := e.(type) {
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		case interface{ Unwrap() []error }:
			for _, x := range u.Unwrap() {
				walk(x)
			}
		}
	}
	walk(err)
	return all
}

// assertNoSecret fails if secret can be reached from err: its text, %+v,
// any error in its chain, or the URL of a *url.Error found by errors.As.
func assertNoSecret(t *testing.T, what string, err error, secrets ...string) {
	t.Helper()
	if err == nil {
		return
	}
	for _, e := range everyErrorIn(err) {
		for _, s := range secrets {
			for _, text := range []string{e.Error(), fmt.Sprintf("%+v", e), fmt.Sprintf("%#v", e)} {
				if strings.Contains(text, s) {
					t.Errorf("%s: %q reachable in the chain (%T): %s", what, s, e, text)
				}
			}
		}
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		for _, s := range secrets {
			if strings.Contains(ue.URL, s) {
				t.Errorf("%s: errors.As finds a *url.Error with %q: %s", what, s, ue.URL)
			}
		}
	}
}

// Error() was clean, but errors.Unwrap(err) from Do, and RetryEvent.Err and
// StopEvent.Err, still held the *url.Error with ?key=SECRET (and user info).
func TestNoSecretReachableThroughErrorChain(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // refused from now on
	raw := "http://user:PASSWORD@" + addr + "/v1beta/models/gemini:generateContent?key=SECRET"
	var events []error
	onRetry := WithOnRetry(func(e RetryEvent) { events = append(events, e.Err) })
	onStop := WithOnStop(func(e StopEvent) { events = append(events, e.Err) })

	t.Run("Do", func(t *testing.T) {
		events = nil
		req, _ := http.NewRequest(http.MethodGet, raw, nil)
		tr := &http.Transport{}
		defer tr.CloseIdleConnections()
		_, err := Do(context.Background(), &http.Client{Transport: tr}, req, Policy{MaxAttempts: 2, BaseDelay: 1})
		if err == nil {
			t.Fatal("want an error")
		}
		assertNoSecret(t, "Do", err, "SECRET", "PASSWORD")
	})
	t.Run("Transport", func(t *testing.T) {
		events = nil
		// A base that wraps its failures in a *url.Error, as an
		// http.Client-based RoundTripper would, once bare and once under a
		// wrapper of its own.
		for i, wrap := range []func(error) error{
			func(e error) error { return e },
			func(e error) error { return fmt.Errorf("upstream said: %w", e) },
		} {
			base := roundTripFunc(func(r *http.Request) (*http.Response, error) {
				return nil, wrap(&url.Error{Op: "Get", URL: r.URL.String(), Err: io.ErrUnexpectedEOF})
			})
			tr := NewTransport(base, WithClock(newFakeClock()), onRetry, onStop)
			req, _ := http.NewRequest(http.MethodGet, raw, nil)
			_, err := tr.RoundTrip(req)
			if err == nil || !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("wrapper %d: got %v, want the cause kept", i, err)
			}
			assertNoSecret(t, fmt.Sprintf("RoundTrip, wrapper %d", i), err, "SECRET", "PASSWORD")
		}
		if len(events) == 0 {
			t.Fatal("no events")
		}
		for _, e := range events {
			assertNoSecret(t, "event", e, "SECRET", "PASSWORD")
		}
	})
}

// An upstream that echoes the key into error.code or error.type used to get
// it logged as the cause, unbounded and unfiltered.
func TestUpstreamErrorKindIsSafeToLog(t *testing.T) {
	const key = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"
	for name, body := range map[string]string{
		"code echoes key":    `{"error":{"message":"bad","type":"server_error","code":"` + key + `"}}`,
		"type echoes key":    `{"error":{"message":"bad","type":"` + key + `"}}`,
		"type has newline":   `{"error":{"message":"bad","type":"over\nloaded"}}`,
		"type is very long":  `{"error":{"message":"bad","type":"` + strings.Repeat("a", 500) + `"}}`,
		"gemini-style key":   `{"error":{"message":"bad","status":"AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW"}}`,
		"quota id with junk": `{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"PerDay ` + key + `"}]}]}}`,
	} {
		t.Run(name, func(t *testing.T) {
			srv := newScripted(t, status(503, body), status(200, "ok"))
			var causes []string
			var logged strings.Builder
			_, c := testTransport(t, newFakeClock(),
				WithOnRetry(func(e RetryEvent) { causes = append(causes, e.Cause) }),
				WithOnStop(func(e StopEvent) { causes = append(causes, e.Cause) }),
				WithLogger(slogTo(&logged)))
			resp, err := c.Do(post(t, srv.URL, "x"))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if len(causes) == 0 {
				t.Fatal("no event")
			}
			for _, cause := range append(causes, logged.String()) {
				if strings.Contains(cause, "sk-proj") || strings.Contains(cause, "AIza") || strings.Contains(cause, "\n"+"loaded") ||
					strings.Contains(cause, strings.Repeat("a", maxUpstreamWord+1)) {
					t.Errorf("unsafe cause: %q", cause)
				}
			}
		})
	}
	for _, ok := range []string{"rate_limit_exceeded", "RESOURCE_EXHAUSTED", "429", "overloaded_error", "GenerateRequestsPerDayPerProjectPerModel-FreeTier"} {
		if got := upstreamWord(ok); got != ok {
			t.Errorf("upstreamWord(%q) = %q, want it kept", ok, got)
		}
	}
}

// slogTo is a logger writing text lines to w, every level.
func slogTo(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

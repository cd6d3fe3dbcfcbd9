package h1

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

type dialKey struct{}

// The dial's context must have no Done channel: on one that has, net's
// connect registers a context.AfterFunc, whose first registration makes a
// map, and that grew every dial's goroutine to an 8 KiB stack in a burst.
// It keeps the request's values, and a deadline: the request's, or 30 s.
func TestTheDialRegistersNothingOnTheRequestsContext(t *testing.T) {
	for _, tc := range []struct {
		name     string
		deadline time.Duration // the request's; 0 for none
		want     time.Duration // the dial's, from now, at most
	}{
		{"no deadline", 0, dialTimeout},
		{"the request's deadline", 2 * time.Second, 2 * time.Second},
		{"a deadline beyond the dial's bound", time.Hour, dialTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got context.Context
			tr := &Transport{Fallback: noFallback{t}, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				got = ctx
				return nil, errors.New("no dial in this test")
			}}
			ctx := context.WithValue(context.Background(), dialKey{}, "v")
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			if tc.deadline > 0 {
				ctx, cancel = context.WithTimeout(ctx, tc.deadline)
				defer cancel()
			}
			start := time.Now()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://upstream.test/", nil)
			if _, err := tr.RoundTrip(req); err == nil {
				t.Fatal("RoundTrip succeeded without a connection")
			}
			if got == nil {
				t.Fatal("no dial")
			}
			if got.Done() != nil {
				t.Error("the dial's context has a Done channel: connect registers on it")
			}
			if v, _ := got.Value(dialKey{}).(string); v != "v" {
				t.Errorf("the dial's context lost the request's values: %q", v)
			}
			d, ok := got.Deadline()
			if !ok {
				t.Fatal("the dial's context has no deadline")
			}
			if left := time.Until(d); d.Before(start) || left > tc.want {
				t.Errorf("the dial's deadline is %v away, want at most %v", left, tc.want)
			}
			if tc.deadline > 0 && tc.deadline < dialTimeout {
				if rd, _ := ctx.Deadline(); !d.Equal(rd) {
					t.Errorf("the dial's deadline is %v, want the request's %v", d, rd)
				}
			}
		})
	}
}

// A request whose context ends while its connection is being dialled
// leaves at once, with its context's cause; the dial goes on by itself,
// and the connection it opens is closed, not leaked.
func TestARequestLeavesItsDialWhenItsContextEnds(t *testing.T) {
	dialing := make(chan struct{})
	release := make(chan struct{})
	client, upstream := net.Pipe()
	defer upstream.Close()
	tr := &Transport{Fallback: noFallback{t}, DialContext: func(context.Context, string, string) (net.Conn, error) {
		close(dialing)
		<-release
		return client, nil
	}}
	ctx, cancel := context.WithCancelCause(context.Background())
	cause := errors.New("the client left")
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://upstream.test/", nil)
	errc := make(chan error, 1)
	go func() {
		_, err := tr.RoundTrip(req)
		errc <- err
	}()
	<-dialing
	cancel(cause)
	select {
	case err := <-errc:
		if !errors.Is(err, cause) {
			t.Fatalf("RoundTrip returned %v, want the context's cause", err)
		}
	case <-time.After(10 * time.Second): // a bound on a failure, not a wait
		close(release)
		<-errc
		t.Fatal("RoundTrip waited for its dial after its context ended")
	}
	close(release)
	// The dialled connection is closed: its other end reads EOF.
	if _, err := upstream.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the connection dialled for a request that left was not closed: read %v", err)
	}
}

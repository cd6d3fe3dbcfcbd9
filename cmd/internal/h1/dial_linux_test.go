package h1

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"
)

// unanswering returns the address of a listener whose queue of accepted
// connections is full, so that the kernel drops every further SYN: a dial
// to it waits for an answer that does not come, as to a host that is down,
// until the kernel gives up (over two minutes).
func unanswering(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	filler, err := net.Dial("tcp", addr) // fills the queue: it is never accepted
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { filler.Close() })
	return addr
}

// A dial to a host that does not answer ends at DialTimeout, with a
// timeout, not when the kernel gives up. (A dial context with a deadline but
// no Done channel, tried once to keep the dial's stack small, left net's
// connect with no deadline on its socket: such a dial ran for 2 min 15 s.)
func TestADialToAHostThatDoesNotAnswerEndsAtDialTimeout(t *testing.T) {
	tr := &Transport{Fallback: noFallback{t}, DialTimeout: 100 * time.Millisecond}
	req, _ := http.NewRequest(http.MethodGet, "http://"+unanswering(t)+"/", nil)
	if err := roundTripBounded(t, tr, req); !isTimeout(err) {
		t.Fatalf("RoundTrip returned %v, want a dial timeout", err)
	}
}

// A request whose context ends while its connection is being dialled ends
// the dial and returns with its context's error: no dial is left behind
// (TestMain's leak check would find its goroutine).
func TestARequestWhoseContextEndsEndsItsDial(t *testing.T) {
	tr := &Transport{Fallback: noFallback{t}, DialTimeout: time.Hour}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+unanswering(t)+"/", nil)
	if err := roundTripBounded(t, tr, req); !isTimeout(err) {
		t.Fatalf("RoundTrip returned %v, want the request's deadline", err)
	}
}

// roundTripBounded returns RoundTrip's error, and fails the test if it
// has not returned in 30 s: far below the kernel's bound on a dial that
// is not answered, so a dial that nothing else ends fails the test.
func roundTripBounded(t *testing.T, tr *Transport, req *http.Request) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		_, err := tr.RoundTrip(req)
		errc <- err
	}()
	select {
	case err := <-errc:
		return err
	case <-time.After(30 * time.Second): // a bound on a failure, not a wait
		t.Fatal("the dial outlived its bound")
		return nil
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// A dial through DialTCP, which binds the socket before it connects, has
// its local port chosen at connect, as a dial with no bind has: a port
// taken at the bind is one no other socket holds, not even one in
// TIME_WAIT, and the proxy ran out of them (3,425 of 18,000 streams failed
// in the bench, BENCHMARKS.md, eighteenth session).
func TestADialChoosesItsLocalPortAtConnect(t *testing.T) {
	for _, loopback := range []string{"127.0.0.1:0", "[::1]:0"} {
		t.Run(loopback, func(t *testing.T) {
			ln, err := net.Listen("tcp", loopback)
			if err != nil && loopback == "[::1]:0" {
				t.Skipf("this machine has no IPv6 loopback: %v", err)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			c, err := dial(context.Background(), plainDialer(), nil, time.Minute, ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			raw, err := c.(syscall.Conn).SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var on int
			var gerr error
			if err := raw.Control(func(fd uintptr) {
				on, gerr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort)
			}); err != nil || gerr != nil {
				t.Fatal(err, gerr)
			}
			if on != 1 {
				t.Fatal("the dial's socket took its local port at its bind")
			}
		})
	}
}

// A dial whose request is cancelled while it connects ends at once, with
// the request's cancellation. (The cancel comes from the dialer's Control,
// the last step before connect, so connect finds it cancelled and must be
// interrupted; a dial that kept only the request's deadline would wait.)
func TestADialEndsWhenItsRequestIsCancelledDuringConnect(t *testing.T) {
	addr := unanswering(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d := plainDialer()
	d.Control = func(network, address string, c syscall.RawConn) error {
		cancel()
		return choosePortAtConnect(network, address, c)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := dial(ctx, d, nil, time.Hour, addr)
		errc <- err
	}()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("dial returned %v, want the request's cancellation", err)
		}
	case <-time.After(30 * time.Second): // a bound on a failure, not a wait
		t.Fatal("the dial outlived its request's cancellation")
	}
}

// The tests from here on follow the path through DialTCP, which dial takes
// on Linux only (portAtConnect).

// The default dial reaches an upstream named by its IP, by a name with one
// address, and by a name with several (which goes to net's own racing of
// addresses); it looks a name up once, and an IP never.
func TestTheDefaultDialReachesAnUpstreamByIPOrName(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	loopback := net.IPAddr{IP: net.IPv4(127, 0, 0, 1)}
	for _, tc := range []struct {
		name, host string
		addrs      []net.IPAddr // what the lookup answers; nil: it must not be asked
	}{
		{"an IP", "127.0.0.1", nil},
		{"a name with one address", "model.test", []net.IPAddr{loopback}},
		{"a name with several addresses", "localhost", []net.IPAddr{{IP: net.IPv6loopback}, loopback}},
		{"no host: the local system", "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lookups := 0
			lookup := func(_ context.Context, host string) ([]net.IPAddr, error) {
				lookups++
				if tc.addrs == nil || host != tc.host {
					t.Errorf("looked up %q", host)
				}
				return tc.addrs, nil
			}
			c, err := dial(context.Background(), plainDialer(), lookup, time.Minute, net.JoinHostPort(tc.host, port))
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			c.Close()
			if want := min(len(tc.addrs), 1); lookups != want {
				t.Errorf("%d lookups, want %d", lookups, want)
			}
		})
	}
}

// A name that cannot be looked up fails the dial with the lookup's error,
// in the form net.Dialer gives it.
func TestADialWhoseNameIsNotFoundSaysSo(t *testing.T) {
	notFound := &net.DNSError{Err: "no such host", Name: "model.test", IsNotFound: true}
	lookup := func(context.Context, string) ([]net.IPAddr, error) { return nil, notFound }
	c, err := dial(context.Background(), plainDialer(), lookup, time.Minute, "model.test:80")
	if c != nil {
		t.Fatalf("dial returned a connection (%v) with error %v", c, err)
	}
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "dial" || !errors.Is(err, notFound) {
		t.Fatalf("dial returned %v, want a dial OpError wrapping the lookup's", err)
	}
}

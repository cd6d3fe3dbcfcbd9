package h1

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

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

// A name whose one address has a zone (a link-local IPv6 address in
// /etc/hosts) is dialled with it: without, connect fails.
func TestANameWithOneZonedAddressKeepsItsZone(t *testing.T) {
	lookup := func(context.Context, string) ([]net.IPAddr, error) {
		return []net.IPAddr{{IP: net.ParseIP("fe80::1"), Zone: "eth0"}}, nil
	}
	ap, one, err := oneAddress(context.Background(), lookup, "zoned.test:80")
	if err != nil || !one || ap.String() != "[fe80::1%eth0]:80" {
		t.Fatalf("oneAddress gave %v %v %v, want [fe80::1%%eth0]:80", ap, one, err)
	}
}

// A refused dial is reported as net.Dialer reports it, word for word:
// DialTCP's error names the unspecified address it bound as its source.
func TestARefusedDialIsReportedAsNetDialerReportsIt(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, want := (&net.Dialer{}).DialContext(context.Background(), "tcp", addr)
	_, got := dial(context.Background(), plainDialer(), nil, time.Minute, addr)
	if want == nil || got == nil || got.Error() != want.Error() {
		t.Fatalf("dial reported %v, want %v", got, want)
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

// A dial is bounded by DialTimeout, and by 30 s when it is not set, as
// net/http's default dialer bounds its own.
func TestTheDialTimeoutIsThirtySecondsUnlessSet(t *testing.T) {
	if got := (&Transport{}).dialTimeout(); got != 30*time.Second {
		t.Errorf("the default dial timeout is %v, want 30 s", got)
	}
	if got := (&Transport{DialTimeout: time.Second}).dialTimeout(); got != time.Second {
		t.Errorf("DialTimeout 1 s gives %v", got)
	}
}

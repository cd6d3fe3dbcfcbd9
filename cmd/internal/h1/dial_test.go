package h1

import (
	"context"
	"net"
	"testing"
	"time"
)

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

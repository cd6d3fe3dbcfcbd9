package h1

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"time"
)

// plainDialer is the dialer of a Transport with no DialContext: 30 s
// keep-alives, as net/http's default dialer's, and local ports chosen at
// connect (dial).
func plainDialer() *net.Dialer {
	return &net.Dialer{KeepAlive: 30 * time.Second, Control: choosePortAtConnect}
}

// dial opens a TCP connection to addr (host:port) with d, bounded by
// timeout and by ctx, as d.DialContext would with that Timeout. d is
// plainDialer's.
//
// It is shaped to keep the goroutine it runs on at the stack it starts
// with. In a burst of streams to a cleartext upstream every stream dials,
// and many dials are in flight at once; a probe of 2,000 found most of
// their goroutines growing from 4 KiB to 8 KiB at the bottom of net's
// connect, where it registers a context.AfterFunc on the dial's context.
// That call chain is deep mostly for the frames of Dialer.DialContext and
// of the address racing beneath it (dialParallel alone takes 520 bytes),
// which Dialer.DialTCP skips. So an address that is one IP, or a name
// with one address, is dialled through DialTCP; a name with several goes
// to DialContext, which looks it up again and races its addresses as net
// does (RFC 6555).
//
// DialTCP binds the socket to the unspecified address before it connects
// (golang/go#81620). A bind to port 0 takes a local port of its own at
// once, one that no other socket holds, not even one in TIME_WAIT, where
// connect shares ports between destinations and reuses those waiting: a
// proxy that opens and closes many upstream connections ran out of ports
// (3,425 of 18,000 streams failed in the bench). So the socket asks, where
// the system allows it (Linux's IP_BIND_ADDRESS_NO_PORT), for its port to
// be chosen at connect, as without a bind; elsewhere dial goes through
// DialContext. It costs two system calls more per new connection.
func dial(ctx context.Context, d *net.Dialer, lookup lookupFunc, timeout time.Duration, addr string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if !portAtConnect {
		return d.DialContext(ctx, "tcp", addr)
	}
	ap, one, err := oneAddress(ctx, lookup, addr)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: err} // as DialContext reports it
	}
	if !one {
		return d.DialContext(ctx, "tcp", addr)
	}
	c, err := d.DialTCP(ctx, "tcp", netip.AddrPort{}, ap)
	if err != nil {
		// The error names the unspecified source DialTCP bound
		// ("dial tcp :0->..."); DialContext's names none.
		if op, ok := err.(*net.OpError); ok {
			if src, ok := op.Source.(*net.TCPAddr); ok && src.IP == nil && src.Port == 0 {
				op.Source = nil
			}
		}
		return nil, err // not a nil *TCPConn in a non-nil net.Conn
	}
	return c, nil
}

// lookupFunc is net.Resolver.LookupIPAddr's form: it keeps an address's
// zone (a link-local IPv6 address in /etc/hosts), which LookupNetIP drops.
type lookupFunc func(ctx context.Context, host string) ([]net.IPAddr, error)

// oneAddress returns addr's address when it has exactly one: addr is an IP
// and port, or a name that lookup resolves to one IP. An empty host (the
// local system, to DialContext) is left to DialContext.
func oneAddress(ctx context.Context, lookup lookupFunc, addr string) (ap netip.AddrPort, one bool, err error) {
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		return ap, true, nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return ap, false, nil // DialContext says what is wrong with it
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || host == "" {
		return ap, false, nil
	}
	ips, err := lookup(ctx, host)
	if err != nil || len(ips) != 1 {
		return ap, false, err
	}
	ip, ok := netip.AddrFromSlice(ips[0].IP)
	if !ok {
		return ap, false, nil
	}
	if ip = ip.Unmap(); ip.Is6() {
		ip = ip.WithZone(ips[0].Zone)
	}
	return netip.AddrPortFrom(ip, uint16(n)), true, nil
}

// Package tcptest gives tests the two ends of a real TCP connection, for
// what only a socket shows: a peer's close or reset seen by epoll, a
// descriptor to watch.
package tcptest

import (
	"net"
	"testing"
)

// Pair returns the two ends of a TCP connection on the loopback, closed
// when the test ends.
func Pair(t testing.TB) (server, client net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

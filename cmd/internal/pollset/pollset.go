// Package pollset tells when connections have something for their readers
// (bytes, or their peer's leaving) without a goroutine blocked on each.
//
// A goroutine blocked in a read is how Go waits on a connection, and a
// goroutine's stack (2 KiB at least) is the largest thing a connection
// that waits holds. The proxy has two such waits for each stream it takes
// before the stream's first output: its client's leaving (the proxy's
// hangup watch) and its upstream's first bytes (the hold's read, in the
// library). On Linux a Set watches any number of connections from one
// goroutine, with an epoll set of its own; elsewhere Watch reports that it
// cannot, and callers wait as before.
package pollset

// Event is what a watch waits for.
type Event int

const (
	// Hangup: the peer closed its side, or reset the connection.
	Hangup Event = iota
	// Readable: bytes to read, or a hangup (a read then ends).
	Readable
)

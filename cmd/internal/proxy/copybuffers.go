package proxy

import "sync"

// copyBuffers lends ReverseProxy the buffer it copies one reply through,
// sized by the reply: each request has its own, and ModifyResponse says
// what the reply is just before ReverseProxy asks.
//
// A stream holds its buffer for as long as it runs, most of it waiting for
// the next event, so ten thousand open streams hold ten thousand buffers: a
// stream's is 1 KiB, room for a chat event (a larger one takes two reads).
// A whole reply holds its buffer only while it is copied: 4 KiB, so that a
// JSON reply of that size copies in one read. (At 32 KiB, net/http's size,
// the buffers were most of what an open stream cost; bench/streams,
// BENCHMARKS.md.)
type copyBuffers struct{ stream bool }

const (
	streamBufferSize = 1 << 10
	replyBufferSize  = 4 << 10
)

var (
	streamBuffers = sync.Pool{New: func() any { return new([streamBufferSize]byte) }}
	replyBuffers  = sync.Pool{New: func() any { return new([replyBufferSize]byte) }}
)

func (c *copyBuffers) Get() []byte {
	if c.stream {
		return streamBuffers.Get().(*[streamBufferSize]byte)[:]
	}
	return replyBuffers.Get().(*[replyBufferSize]byte)[:]
}

func (c *copyBuffers) Put(b []byte) {
	switch len(b) {
	case streamBufferSize:
		streamBuffers.Put((*[streamBufferSize]byte)(b))
	case replyBufferSize:
		replyBuffers.Put((*[replyBufferSize]byte)(b))
	}
}

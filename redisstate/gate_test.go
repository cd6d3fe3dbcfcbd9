package redisstate

import (
	"bytes"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// gate is a TCP proxy in front of the test's Redis whose replies a test
// can hold back or drop, to play a Redis that is slow, or one that ran a
// script and lost its reply on the way back.
type gate struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu       sync.Mutex
	conns    []net.Conn
	held     chan struct{} // non-nil while replies are held; closed on release
	dropNext bool          // the next reply is dropped, with its connection
	// dropEvery drops the reply to every so many scripts; 0 drops none.
	dropEvery int64
	dropped   int64 // replies dropped

	// sent gets a value each time a request goes through while replies
	// are held, so a test knows its call has reached Redis.
	sent chan struct{}
	// scripts counts the scripts run (EVALSHA and EVAL commands) that went
	// through.
	scripts atomic.Int64
}

// newGate starts a gate in front of the test's Redis, closed with the test.
func newGate(t *testing.T) *gate {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &gate{ln: ln, target: redisAddr, sent: make(chan struct{}, 64)}
	g.wg.Add(1)
	go g.accept()
	t.Cleanup(g.close)
	return g
}

func (g *gate) addr() string { return g.ln.Addr().String() }

// hold keeps every reply back until release.
func (g *gate) hold() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.held == nil {
		g.held = make(chan struct{})
	}
}

// release lets held replies through, and those after.
func (g *gate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.held != nil {
		close(g.held)
		g.held = nil
	}
}

// drop loses the next reply: the request has reached Redis and run there,
// and its connection is closed before the reply gets back.
func (g *gate) drop() {
	g.mu.Lock()
	g.dropNext = true
	g.mu.Unlock()
}

func (g *gate) accept() {
	defer g.wg.Done()
	for {
		c, err := g.ln.Accept()
		if err != nil {
			return
		}
		r, err := net.Dial("tcp", g.target)
		if err != nil {
			c.Close()
			continue
		}
		g.mu.Lock()
		g.conns = append(g.conns, c, r)
		g.mu.Unlock()
		g.wg.Add(2)
		go g.requests(c, r)
		go g.replies(c, r)
	}
}

// requests forwards what the client sends.
func (g *gate) requests(c, r net.Conn) {
	defer g.wg.Done()
	defer r.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			low := bytes.ToLower(buf[:n])
			scripts := int64(bytes.Count(low, []byte("\r\nevalsha\r\n")) + bytes.Count(low, []byte("\r\neval\r\n")))
			total := g.scripts.Add(scripts)
			g.mu.Lock()
			if scripts > 0 && g.dropEvery > 0 && total%g.dropEvery == 0 {
				g.dropNext = true
			}
			holding := g.held != nil
			g.mu.Unlock()
			if _, werr := r.Write(buf[:n]); werr != nil {
				return
			}
			if holding {
				select {
				case g.sent <- struct{}{}:
				default:
				}
			}
		}
		if err != nil {
			return
		}
	}
}

// replies forwards what Redis answers, unless it is held or dropped.
func (g *gate) replies(c, r net.Conn) {
	defer g.wg.Done()
	defer c.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			g.mu.Lock()
			held, drop := g.held, g.dropNext
			g.dropNext = false
			if drop {
				g.dropped++
			}
			g.mu.Unlock()
			if drop {
				r.Close()
				return
			}
			if held != nil {
				<-held
			}
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				r.Close()
			}
			return
		}
	}
}

func (g *gate) close() {
	g.release()
	g.ln.Close()
	g.mu.Lock()
	for _, c := range g.conns {
		c.Close()
	}
	g.mu.Unlock()
	g.wg.Wait()
}

package h1

import (
	"sync"
	"time"
)

// idlePool keeps connections for reuse, per host, newest last. A timer closes
// those left unused too long; no goroutine waits on them.
type idlePool struct {
	mu    sync.Mutex
	conns map[string][]*conn
	n     int
	timer *time.Timer
	after time.Duration
}

// get returns the newest live connection to addr, closing any found dead or
// unused for longer than timeout.
func (p *idlePool) get(addr string, timeout time.Duration) *conn {
	for {
		p.mu.Lock()
		list := p.conns[addr]
		if len(list) == 0 {
			p.mu.Unlock()
			return nil
		}
		c := list[len(list)-1]
		list[len(list)-1] = nil
		p.conns[addr] = list[:len(list)-1]
		p.n--
		p.mu.Unlock()
		if time.Since(c.idleAt) < timeout && alive(c.nc) {
			return c
		}
		c.close()
	}
}

// put keeps c for reuse, unless max are kept for its host already.
func (p *idlePool) put(c *conn, max int, timeout time.Duration) {
	c.idleAt = time.Now()
	p.mu.Lock()
	if p.conns == nil {
		p.conns = make(map[string][]*conn)
	}
	if len(p.conns[c.addr]) >= max {
		p.mu.Unlock()
		c.close()
		return
	}
	p.conns[c.addr] = append(p.conns[c.addr], c)
	p.n++
	if p.timer == nil {
		p.after = timeout
		p.timer = time.AfterFunc(timeout, p.prune)
	} else if p.n == 1 {
		p.timer.Reset(timeout)
	}
	p.mu.Unlock()
}

// prune closes the connections unused for longer than the timeout and sets
// the timer for the oldest of the rest.
func (p *idlePool) prune() {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	var next time.Duration
	for addr, list := range p.conns {
		i := 0
		for ; i < len(list) && now.Sub(list[i].idleAt) >= p.after; i++ {
			list[i].close()
			list[i] = nil
		}
		p.n -= i
		if i == len(list) {
			delete(p.conns, addr)
			continue
		}
		// The survivors move to the front, and the shorter list is the
		// one kept: left at its old length, it would list the last ones
		// twice, and give one connection to two requests.
		kept := copy(list, list[i:])
		clear(list[kept:])
		list = list[:kept]
		p.conns[addr] = list
		if wait := p.after - now.Sub(list[0].idleAt); next == 0 || wait < next {
			next = wait
		}
	}
	if next > 0 {
		p.timer.Reset(next)
	}
}

// closeAll closes every connection kept for reuse.
func (p *idlePool) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for addr, list := range p.conns {
		for _, c := range list {
			c.close()
		}
		delete(p.conns, addr)
	}
	p.n = 0
}

package proxy

import (
	"errors"
	"net"
	"sync"
	"syscall"
)

// hangups watches taken connections for their clients leaving in one
// goroutine, with an epoll set of its own: each connection is in it for
// the peer's hangup only (EPOLLRDHUP, and the reset or error epoll always
// reports), once (EPOLLONESHOT), by an id, never by a descriptor number
// that a closed connection's successor could reuse. The goroutine runs
// while a connection is watched, and ends, closing the set, soon after
// the last one is not. Go's own poller keeps the connections in its set as
// before: a descriptor may be in several.
type hangups struct {
	mu      sync.Mutex
	epfd    int // the set; valid while running
	running bool
	next    uint64
	watched map[uint64]hangupEntry
}

type hangupEntry struct {
	fd     int
	cancel func()
}

// hangupPoll is how long the goroutine waits between looks at whether it
// still has a connection to watch: what it lingers after the last.
const hangupPoll = 200 // milliseconds

func (h *hangups) watch(c net.Conn, cancel func()) (stop func()) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return readWatch(c, cancel)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return readWatch(c, cancel)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.running {
		fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			return readWatch(c, cancel)
		}
		h.epfd, h.running = fd, true
		if h.watched == nil {
			h.watched = make(map[uint64]hangupEntry)
		}
		go h.loop(fd)
	}
	h.next++
	id := h.next
	var fd int
	cerr := rc.Control(func(u uintptr) {
		fd = int(u)
		ev := syscall.EpollEvent{Events: syscall.EPOLLRDHUP | syscall.EPOLLONESHOT, Fd: int32(id), Pad: int32(id >> 32)}
		err = syscall.EpollCtl(h.epfd, syscall.EPOLL_CTL_ADD, fd, &ev)
	})
	if cerr != nil || err != nil {
		return readWatch(c, cancel)
	}
	h.watched[id] = hangupEntry{fd: fd, cancel: cancel}
	return func() { h.unwatch(id) }
}

// unwatch takes a connection out of the set, before it is closed (its
// descriptor is still its own).
func (h *hangups) unwatch(id uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if e, ok := h.watched[id]; ok {
		delete(h.watched, id)
		_ = syscall.EpollCtl(h.epfd, syscall.EPOLL_CTL_DEL, e.fd, nil)
	}
}

// loop reports hangups until nothing is watched.
func (h *hangups) loop(epfd int) {
	var events [64]syscall.EpollEvent
	var gone []func()
	for {
		n, err := syscall.EpollWait(epfd, events[:], hangupPoll)
		if err != nil && !errors.Is(err, syscall.EINTR) {
			n = 0 // (not expected: the set is ours) look again, or end
		}
		gone = gone[:0]
		h.mu.Lock()
		for _, ev := range events[:max(n, 0)] {
			id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if e, ok := h.watched[id]; ok {
				delete(h.watched, id)
				_ = syscall.EpollCtl(epfd, syscall.EPOLL_CTL_DEL, e.fd, nil)
				gone = append(gone, e.cancel)
			}
		}
		done := len(h.watched) == 0
		if done {
			h.running = false
			_ = syscall.Close(epfd)
		}
		h.mu.Unlock()
		for _, cancel := range gone {
			cancel()
		}
		if done {
			return
		}
	}
}

package pollset

import (
	"errors"
	"net"
	"sync"
	"syscall"
)

// Set watches connections from one goroutine, with an epoll set of its
// own: each connection is in it for one event, once (EPOLLONESHOT), by an
// id, never by a descriptor number that a closed connection's successor
// could reuse. The goroutine runs while a connection is watched, and ends,
// closing the set, soon after the last one is not. Go's own poller keeps
// the connections in its set as before: a descriptor may be in several.
// The zero Set is ready to use.
type Set struct {
	mu      sync.Mutex
	epfd    int // the set; valid while running
	running bool
	next    uint64
	watched map[uint64]entry
}

type entry struct {
	fd int
	f  func()
}

// poll is how long the goroutine waits between looks at whether it still
// has a connection to watch: what it lingers after the last.
const poll = 200 // milliseconds

// Watch calls f once, from the Set's goroutine, when ev happens on c,
// unless stop is called first. stop reports whether it was: false when f
// has run or is running. ok is false when c cannot be watched here (it is
// not a socket, or the set cannot be made): f is then never called.
func (s *Set) Watch(c net.Conn, ev Event, f func()) (stop func() bool, ok bool) {
	sc, isSys := c.(syscall.Conn)
	if !isSys {
		return nil, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.running {
		fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			return nil, false
		}
		s.epfd, s.running = fd, true
		if s.watched == nil {
			s.watched = make(map[uint64]entry)
		}
		go s.loop(fd)
	}
	events := uint32(syscall.EPOLLRDHUP | syscall.EPOLLONESHOT)
	if ev == Readable {
		events |= syscall.EPOLLIN
	}
	s.next++
	id := s.next
	var fd int
	cerr := rc.Control(func(u uintptr) {
		fd = int(u)
		e := syscall.EpollEvent{Events: events, Fd: int32(id), Pad: int32(id >> 32)}
		err = syscall.EpollCtl(s.epfd, syscall.EPOLL_CTL_ADD, fd, &e)
	})
	if cerr != nil || err != nil {
		return nil, false
	}
	s.watched[id] = entry{fd: fd, f: f}
	return func() bool { return s.stop(id) }, true
}

// stop takes a connection out of the set, before it is closed (its
// descriptor is still its own).
func (s *Set) stop(id uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.watched[id]
	if ok {
		delete(s.watched, id)
		_ = syscall.EpollCtl(s.epfd, syscall.EPOLL_CTL_DEL, e.fd, nil)
	}
	return ok
}

// loop reports events until nothing is watched.
func (s *Set) loop(epfd int) {
	var events [64]syscall.EpollEvent
	var fired []func()
	for {
		n, err := syscall.EpollWait(epfd, events[:], poll)
		if err != nil && !errors.Is(err, syscall.EINTR) {
			n = 0 // (not expected: the set is ours) look again, or end
		}
		fired = fired[:0]
		s.mu.Lock()
		for _, ev := range events[:max(n, 0)] {
			id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if e, ok := s.watched[id]; ok {
				delete(s.watched, id)
				_ = syscall.EpollCtl(epfd, syscall.EPOLL_CTL_DEL, e.fd, nil)
				fired = append(fired, e.f)
			}
		}
		done := len(s.watched) == 0
		if done {
			s.running = false
			_ = syscall.Close(epfd)
		}
		s.mu.Unlock()
		for _, f := range fired {
			f()
		}
		if done {
			return
		}
	}
}

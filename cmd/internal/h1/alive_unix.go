//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package h1

import (
	"net"
	"syscall"
)

// alive reports whether an idle connection can carry a request: the
// upstream has neither closed it nor sent anything unasked (a late 408, say).
// One non-blocking peek, where net/http keeps a goroutine reading each idle
// connection to learn the same.
func alive(nc net.Conn) bool {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var b [1]byte
	idle := false
	err = rc.Read(func(fd uintptr) bool {
		_, _, perr := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		idle = perr == syscall.EAGAIN || perr == syscall.EWOULDBLOCK
		return true // never wait for readiness
	})
	return err == nil && idle
}

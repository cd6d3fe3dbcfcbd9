//go:build !linux

package proxy

import "net"

// hangups watches with a goroutine each where there is no epoll.
type hangups struct{}

func (*hangups) watch(c net.Conn, cancel func()) (stop func()) { return readWatch(c, cancel) }

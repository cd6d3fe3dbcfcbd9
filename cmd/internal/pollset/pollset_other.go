//go:build !linux

package pollset

import "net"

// Set cannot watch here: Watch always reports so.
type Set struct{}

// Watch reports that c cannot be watched here (ok false).
func (*Set) Watch(net.Conn, Event, func()) (stop func() bool, ok bool) { return nil, false }

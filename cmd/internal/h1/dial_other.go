//go:build !linux

package h1

import "syscall"

// portAtConnect: elsewhere a socket bound before it connects keeps the port
// its bind took, so dial does not go through DialTCP (dial.go).
const portAtConnect = false

func choosePortAtConnect(string, string, syscall.RawConn) error { return nil }

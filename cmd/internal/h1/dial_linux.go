package h1

import "syscall"

// portAtConnect: a socket bound before it connects can have its local
// port chosen at connect (dial.go).
const portAtConnect = true

// ipBindAddressNoPort is Linux's IP_BIND_ADDRESS_NO_PORT (linux/in.h; 4.2
// and later), which the syscall package does not name.
const ipBindAddressNoPort = 24

// choosePortAtConnect is a net.Dialer's Control: it asks that the socket's
// local port be chosen when it connects, not when DialTCP binds it.
func choosePortAtConnect(_, _ string, c syscall.RawConn) error {
	var err error
	if cerr := c.Control(func(fd uintptr) {
		err = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
	}); cerr != nil {
		return cerr
	}
	return err
}

// Package redistest starts a real redis-server for tests and simulations:
// in memory only, on a free loopback port.
package redistest

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"time"
)

// Server is a running redis-server.
type Server struct {
	// Addr is its loopback address.
	Addr string
	cmd  *exec.Cmd
	done chan struct{}
}

// Start runs redis-server (Debian's redis-server package) and waits until
// it is ready to accept connections.
func Start() (*Server, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errors.New("redis-server not found on PATH (apt-get install redis-server; scripts/test.sh does)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	cmd := exec.Command(bin, "--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &Server{Addr: fmt.Sprintf("127.0.0.1:%d", port), cmd: cmd, done: make(chan struct{})}
	ready := make(chan struct{})
	go func() {
		defer close(s.done)
		sc := bufio.NewScanner(out)
		signalled := false
		for sc.Scan() {
			if !signalled && strings.Contains(sc.Text(), "Ready to accept connections") {
				close(ready)
				signalled = true
			}
		}
	}()
	select {
	case <-ready:
		return s, nil
	case <-s.done:
		_ = cmd.Wait()
		return nil, errors.New("redis-server exited before it was ready")
	case <-time.After(20 * time.Second):
		s.Stop()
		return nil, errors.New("redis-server was not ready after 20 s")
	}
}

// Stop kills the server and waits for it to exit.
func (s *Server) Stop() {
	_ = s.cmd.Process.Kill()
	<-s.done
	_ = s.cmd.Wait()
}

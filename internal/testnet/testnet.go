// Package testnet has network fixtures for tests.
package testnet

import (
	"net"
	"sync"
	"testing"
)

// Hung listens on a loopback port, accepts every connection and never
// answers on it, like a process that is stuck but whose kernel still
// completes handshakes. Everything is closed when the test ends. It returns
// the address, host:port.
func Hung(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

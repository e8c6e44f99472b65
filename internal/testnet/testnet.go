// Package testnet has network fixtures for tests.
package testnet

import (
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
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

// HeldHTTP is an HTTP server that holds every request until the request
// ends or the test does: an instance that takes calls and never answers.
// held receives when it first holds one. Everything is closed when the
// test ends. It returns the server's URL.
func HeldHTTP(t testing.TB) (url string, held <-chan struct{}) {
	t.Helper()
	release := make(chan struct{})
	h := make(chan struct{}, 1)
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case h <- struct{}{}:
		default:
		}
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(func() { close(release); s.Close() })
	return s.URL, h
}

// DropsAfter is an HTTP server that answers /ok at once (closing the
// connection, so that the next call dials anew), and drops any other
// request after d without answering. It is closed when the test ends. It
// returns the server's URL.
func DropsAfter(t testing.TB, d time.Duration) string {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ok" {
			w.Header().Set("Connection", "close")
			return
		}
		time.Sleep(d)
		if c, _, err := w.(http.Hijacker).Hijack(); err == nil {
			c.Close()
		}
	}))
	t.Cleanup(s.Close)
	return s.URL
}

// EchoUpgrade is a handler that takes the connection over as WebSocket
// servers do (asserting http.Hijacker on its ResponseWriter), answers 101
// with Upgrade: echo, and sends back the first line it reads.
func EchoUpgrade(w http.ResponseWriter, r *http.Request) {
	h, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "the ResponseWriter is no http.Hijacker", http.StatusInternalServerError)
		return
	}
	c, rw, err := h.Hijack()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer c.Close()
	rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
	rw.Flush()
	line, _ := rw.ReadString('\n')
	rw.WriteString(line)
	rw.Flush()
}

package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/balance"
)

func echoServer(t *testing.T, name string) string {
	return serveConns(t, func(c net.Conn) {
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			fmt.Fprintf(c, "%s:%s\n", name, sc.Text())
		}
	})
}

// serveConns listens on a loopback port until the test ends, and serves
// each connection with serve in a goroutine of its own, closing it after.
// It returns the address.
func serveConns(t *testing.T, serve func(net.Conn)) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return ln.Addr().String()
}

func TestTCPBalancesAndSkipsDeadInstances(t *testing.T) {
	pool := balance.NewPool("redis", "dev")
	var ins []*sb.Instance
	for i, addr := range []string{echoServer(t, "a"), strings.TrimPrefix(deadAddr(t), "http://"), echoServer(t, "b")} {
		host, port, _ := net.SplitHostPort(addr)
		p, _ := strconv.Atoi(port)
		ins = append(ins, &sb.Instance{ID: fmt.Sprint(i), Address: host, Port: p, Status: sb.Passing, Enabled: true})
	}
	pool.Update(ins, 1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l4 := &TCP{Pool: pool}
	go l4.Serve(ln)
	defer l4.Close()
	seen := map[string]int{}
	for range 60 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprint(c, "ping\n")
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if err != nil && err != io.EOF {
			t.Fatalf("through L4: %v", err)
		}
		name, rest, _ := strings.Cut(line, ":")
		if rest != "ping\n" {
			t.Fatalf("through L4: %q", line)
		}
		seen[name]++
	}
	if seen["a"] < 10 || seen["b"] < 10 {
		t.Fatalf("L4 split %v; want both live instances used", seen)
	}
}

// TestTCPServeAfterCloseReturns: Close may come first; Serve then returns
// at once rather than accepting forever.
func TestTCPServeAfterCloseReturns(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	l4 := &TCP{Pool: balance.NewPool("redis", "dev")}
	l4.Close()
	served := make(chan error, 1)
	go func() { served <- l4.Serve(ln) }()
	select {
	case <-served:
	case <-time.After(2 * time.Second):
		t.Fatal("Serve after Close still accepting after 2s")
	}
}

// TestTCPCloseEndsConnectionsToDeafInstances: Close ends every connection
// even when the instance ignores the half-close it is sent (it neither
// reads nor closes): Close must not wait on the instance.
func TestTCPCloseEndsConnectionsToDeafInstances(t *testing.T) {
	deaf, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer deaf.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := deaf.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	host, port, _ := net.SplitHostPort(deaf.Addr().String())
	p, _ := strconv.Atoi(port)
	pool := balance.NewPool("redis", "dev")
	pool.Update([]*sb.Instance{{ID: "deaf", Address: host, Port: p, Status: sb.Passing, Enabled: true}}, 1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l4 := &TCP{Pool: pool}
	go l4.Serve(ln)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case bc := <-accepted:
		defer bc.Close()
	case <-time.After(2 * time.Second):
		t.Fatal("the instance got no connection")
	}
	closed := make(chan struct{})
	go func() { l4.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(2 * time.Second):
		t.Fatal("Close still waiting after 2s for a connection the instance keeps open")
	}
}

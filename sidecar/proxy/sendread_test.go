package proxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// pipePair returns the two ends of a real loopback TCP connection.
func pipePair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func TestSendReader(t *testing.T) {
	client, server := pipePair(t)
	bw := bufio.NewWriter(client)
	sr := newSendReader(client, bw)
	br := bufio.NewReader(sr)

	// The peer answers each line it gets with the line upper-cased.
	go func() {
		r := bufio.NewReader(server)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			b := []byte(line)
			for i, c := range b {
				if 'a' <= c && c <= 'z' {
					b[i] = c - 'a' + 'A'
				}
			}
			server.Write(b)
		}
	}()
	for _, msg := range []string{"one\n", "two\n", "three\n"} {
		bw.WriteString(msg)
		sr.sendOnRead()
		if bw.Buffered() == 0 {
			t.Fatal("sent before the read")
		}
		got, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if want := string([]byte{msg[0] - 'a' + 'A'}); got[:1] != want {
			t.Fatalf("got %q for %q", got, msg)
		}
		if bw.Buffered() != 0 {
			t.Fatal("request still buffered after its answer")
		}
	}

	// No answer: the read deadline ends the wait with a timeout.
	client.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	bw.WriteString("")
	sr.sendOnRead()
	_, err := br.ReadByte()
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past the deadline = %v, want a timeout", err)
	}
	client.SetReadDeadline(time.Time{})
}

// A peer that closed before the request was sent shows as EOF (what tells
// the pool to send a replayable request again on a new connection), not
// as a wait until the deadline.
func TestSendReaderPeerClosed(t *testing.T) {
	client, server := pipePair(t)
	server.Close()
	time.Sleep(20 * time.Millisecond) // the FIN arrives
	bw := bufio.NewWriter(client)
	sr := newSendReader(client, bw)
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	bw.WriteString("GET / HTTP/1.1\r\n\r\n")
	sr.sendOnRead()
	_, err := sr.Read(make([]byte, 16))
	if err != io.EOF {
		t.Fatalf("read = %v, want EOF", err)
	}
}

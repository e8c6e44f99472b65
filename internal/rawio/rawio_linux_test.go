package rawio

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// rawPair returns a rawConn and the plain TCP connection at its other end.
func rawPair(t *testing.T) (*rawConn, *net.TCPConn) {
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
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	r, ok := TCP(c).(*rawConn)
	if !ok {
		t.Fatalf("TCP(%T) did not wrap it", c)
	}
	t.Cleanup(func() { r.Close(); peer.Close() })
	// A test that goes wrong fails rather than hangs.
	r.SetDeadline(time.Now().Add(20 * time.Second))
	peer.SetDeadline(time.Now().Add(20 * time.Second))
	return r, peer.(*net.TCPConn)
}

// countSyscalls counts rawConn's own system calls until the test ends.
func countSyscalls(t *testing.T) *atomic.Int64 {
	var n atomic.Int64
	syscalls = &n
	t.Cleanup(func() { syscalls = nil })
	return &n
}

func TestRawConnMovesBytesBothWays(t *testing.T) {
	r, peer := rawPair(t)
	for _, size := range []int{1, 100, 4 << 10, rawMax, rawMax + 1, 3 << 20} {
		out := randomBytes(size)
		werr := make(chan error, 1)
		go func() {
			n, err := r.Write(out)
			if err == nil && n != len(out) {
				err = fmt.Errorf("wrote %d of %d bytes", n, len(out))
			}
			werr <- err
		}()
		got := make([]byte, size)
		if _, err := io.ReadFull(peer, got); err != nil {
			t.Fatalf("%d bytes written raw: %v", size, err)
		}
		if !bytes.Equal(got, out) {
			t.Fatalf("%d bytes written raw came out different", size)
		}
		if err := <-werr; err != nil {
			t.Fatalf("writing %d bytes raw: %v", size, err)
		}
		go func() { _, _ = peer.Write(out) }()
		if _, err := io.ReadFull(r, got); err != nil {
			t.Fatalf("%d bytes read raw: %v", size, err)
		}
		if !bytes.Equal(got, out) {
			t.Fatalf("%d bytes read raw came out different", size)
		}
	}
}

// TestRawConnErrorsAreNets: what callers test errors for (end of stream, a
// timeout, a closed connection, a reset) reads the same as from net's own
// connections.
func TestRawConnErrorsAreNets(t *testing.T) {
	t.Run("EOF", func(t *testing.T) {
		r, peer := rawPair(t)
		peer.Write([]byte("last"))
		peer.CloseWrite()
		got, err := io.ReadAll(r)
		if err != nil || string(got) != "last" {
			t.Fatalf("ReadAll = %q, %v; want \"last\", nil", got, err)
		}
		if n, err := r.Read(make([]byte, 8)); n != 0 || err != io.EOF {
			t.Fatalf("Read after the end = %d, %v; want 0, io.EOF", n, err)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		r, _ := rawPair(t)
		r.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		_, err := r.Read(make([]byte, 8))
		var ne net.Error
		if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("Read past the deadline: %v; want a net.Error that is a timeout and os.ErrDeadlineExceeded", err)
		}
		r.SetWriteDeadline(time.Now().Add(-time.Second))
		if _, err := r.Write([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Write past the deadline: %v; want os.ErrDeadlineExceeded", err)
		}
	})
	t.Run("closed", func(t *testing.T) {
		r, _ := rawPair(t)
		done := make(chan error, 1)
		go func() {
			_, err := r.Read(make([]byte, 8))
			done <- err
		}()
		time.Sleep(10 * time.Millisecond) // usually waiting in the poller by now
		r.Close()
		if err := <-done; !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read across Close: %v; want net.ErrClosed", err)
		}
		if _, err := r.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Write after Close: %v; want net.ErrClosed", err)
		}
	})
	t.Run("read reset", func(t *testing.T) {
		r, peer := rawPair(t)
		peer.SetLinger(0)
		peer.Close() // RST
		_, err := r.Read(make([]byte, 8))
		var oe *net.OpError
		if !errors.As(err, &oe) || oe.Op != "read" || !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("Read of a reset connection: %v; want a read OpError of ECONNRESET (not the end of a body)", err)
		}
	})
	t.Run("reset", func(t *testing.T) {
		r, peer := rawPair(t)
		peer.SetLinger(0)
		peer.Close() // RST
		var err error
		for i := 0; i < 100 && err == nil; i++ {
			_, err = r.Write([]byte("x"))
			time.Sleep(time.Millisecond)
		}
		var oe *net.OpError
		if !errors.As(err, &oe) || oe.Op != "write" || !(errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)) {
			t.Fatalf("Write to a reset connection: %v; want a write OpError of ECONNRESET or EPIPE", err)
		}
	})
}

// TestRawConnConcurrentReads: two reads at once each get bytes of their
// own, none lost or doubled (the race detector watches the shared state).
func TestRawConnConcurrentReads(t *testing.T) {
	r, peer := rawPair(t)
	const total = 1 << 20
	out := randomBytes(total)
	var mu sync.Mutex
	var sum, n int
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1000)
			for {
				k, err := r.Read(buf)
				mu.Lock()
				for _, b := range buf[:k] {
					sum += int(b)
				}
				n += k
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	go func() {
		peer.Write(out)
		peer.CloseWrite()
	}()
	wg.Wait()
	want := 0
	for _, b := range out {
		want += int(b)
	}
	if n != total || sum != want {
		t.Fatalf("read %d bytes summing to %d; want %d summing to %d", n, sum, total, want)
	}
}

func TestRawConnAllocatesNothing(t *testing.T) {
	r, peer := rawPair(t)
	msg := []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	buf := make([]byte, 64)
	pbuf := make([]byte, 64)
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := r.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(peer, pbuf[:len(msg)]); err != nil {
			t.Fatal(err)
		}
		if _, err := peer.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(r, buf[:len(msg)]); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 0 {
		t.Fatalf("a raw read and write allocate %.1f times; want 0", allocs)
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rand.Uint32())
	}
	return b
}

// TestRawConnTakesTheRawPath: short reads and writes go through rawConn's
// own calls, longer ones do not.
func TestRawConnTakesTheRawPath(t *testing.T) {
	r, peer := rawPair(t)
	calls := countSyscalls(t)
	msg := []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	if _, err := r.Write(msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(peer, buf); err != nil {
		t.Fatal(err)
	}
	peer.Write(msg)
	if _, err := io.ReadFull(r, buf); err != nil {
		t.Fatal(err)
	}
	if n := calls.Load(); n < 2 {
		t.Fatalf("a short write and read made %d raw calls; want at least 2", n)
	}
	calls.Store(0)
	big := randomBytes(rawMax + 1)
	go r.Write(big)
	if _, err := io.ReadFull(peer, make([]byte, len(big))); err != nil {
		t.Fatal(err)
	}
	go peer.Write(big)
	if _, err := io.ReadFull(r, make([]byte, len(big))); err != nil {
		t.Fatal(err)
	}
	if n := calls.Load(); n != 0 {
		t.Fatalf("a write and reads of rawMax + 1 bytes made %d raw calls; want 0 (Go's usual path)", n)
	}
}

// TestRawConnResumesAPartialWrite: writes the socket cannot take at once
// wait for room and go on where they stopped, as net's do.
func TestRawConnResumesAPartialWrite(t *testing.T) {
	r, peer := rawPair(t)
	r.SetWriteBuffer(4096)
	calls := countSyscalls(t)
	const writes = 256 // 4 MiB: more than the socket buffers on both ends hold
	out := randomBytes(writes * rawMax)
	werr := make(chan error, 1)
	go func() {
		for i := 0; i < writes; i++ {
			p := out[i*rawMax : (i+1)*rawMax]
			n, err := r.Write(p)
			if err == nil && n != len(p) {
				err = fmt.Errorf("write %d: wrote %d of %d bytes", i, n, len(p))
			}
			if err != nil {
				werr <- err
				return
			}
		}
		werr <- nil
	}()
	time.Sleep(50 * time.Millisecond) // the writes fill the buffers and wait for room
	got := make([]byte, len(out))
	if _, err := io.ReadFull(peer, got); err != nil {
		t.Fatal(err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, out) {
		t.Fatal("writes resumed after waiting for room came out different")
	}
	if n := calls.Load(); n <= writes {
		t.Fatalf("%d writes made %d raw calls; want more (some had to wait for room and go on)", writes, n)
	}
}

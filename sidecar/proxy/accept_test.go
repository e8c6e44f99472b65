package proxy

import (
	"errors"
	"log/slog"
	"net"
	"syscall"
	"testing"
	"time"
)

// failingListener fails every Accept with EMFILE until closed (a fake, to
// force the error path).
type failingListener struct {
	net.Listener // the address
	calls        chan struct{}
}

func (l *failingListener) Accept() (net.Conn, error) {
	l.calls <- struct{}{}
	return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
}

// TestAcceptRidesOutRunningOutOfFiles: accepting goes on after EMFILE, Err
// reports the failure while it lasts and forgets it after (an accept that
// failed may be followed by no connection for hours, and /readyz stayed
// failed until one came), and Close ends a wait between tries at once.
func TestAcceptRidesOutRunningOutOfFiles(t *testing.T) {
	real, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer real.Close()
	fl := &failingListener{Listener: real, calls: make(chan struct{}, 100)}
	l := keepAccepting(fl, slog.New(slog.DiscardHandler), "test")
	done := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		done <- err
	}()
	<-fl.calls
	<-fl.calls // tried again
	if l.Err() == nil || !errors.Is(l.Err(), syscall.EMFILE) {
		t.Fatalf("Err while accepting fails = %v; want EMFILE", l.Err())
	}
	l.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close = %v; want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Accept still waiting 10 s after Close")
	}
	// The failure is forgotten once it is older than two waits.
	l.failing.Store(&acceptFailure{syscall.EMFILE, time.Now().Add(-2 * acceptDelays[1])})
	if err := l.Err(); err != nil {
		t.Fatalf("Err of a failure two waits old = %v; want nil", err)
	}
}

package proxy

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// acceptListener rides out the errors of Accept that pass: too many open
// files, in the process or the system, a connection aborted before it was
// taken, no memory for one. fasthttp's serve loop ends at the first of
// them, and so did the L4 one: one burst of connections that reached the
// process's file limit stopped the sidecar's routing for good, with the
// listener still open and connections queueing unanswered. Like net/http,
// it waits 5 ms, doubling up to 1 s, and accepts again; the failure is
// logged once, and its end.
type acceptListener struct {
	net.Listener
	log  *slog.Logger
	what string
	// failing is the last failed accept of a run of them, nil once one
	// works. An accept that failed for want of a file may be followed by
	// no connection for hours (Linux reserves the file before it looks
	// for a connection), so Err reports it only while it is recent.
	failing atomic.Pointer[acceptFailure]
	closed  chan struct{} // closed by Close: a wait ends
	once    sync.Once
}

// acceptFailure is a failed accept and when it failed.
type acceptFailure struct {
	err error
	at  time.Time
}

// keepAccepting wraps ln (what names it in the log).
func keepAccepting(ln net.Listener, log *slog.Logger, what string) *acceptListener {
	return &acceptListener{Listener: ln, log: log, what: what, closed: make(chan struct{})}
}

// Close closes the listener, and ends a wait between accepts.
func (l *acceptListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// passes reports whether err is one Accept may succeed after.
func passes(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ECONNABORTED, syscall.ENOBUFS, syscall.ENOMEM} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// acceptDelays are the first and the longest wait between failed accepts.
var acceptDelays = [2]time.Duration{5 * time.Millisecond, time.Second}

func (l *acceptListener) Accept() (net.Conn, error) {
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err == nil {
			if l.failing.Swap(nil) != nil {
				l.log.Info("sidecar: "+l.what+" accepts connections again", "addr", l.Addr().String())
			}
			return c, nil
		}
		if !passes(err) {
			return nil, err
		}
		if l.failing.Swap(&acceptFailure{err, time.Now()}) == nil {
			l.log.Error("sidecar: "+l.what+" cannot accept connections; trying again until it can (not logged again until then)", "addr", l.Addr().String(), "err", err)
		}
		delay = min(max(2*delay, acceptDelays[0]), acceptDelays[1])
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-l.closed:
			t.Stop()
			return nil, net.ErrClosed
		}
	}
}

// Err returns the error of the accepts that fail now, or nil: that of one
// that failed within twice the longest wait between two tries.
func (l *acceptListener) Err() error {
	if f := l.failing.Load(); f != nil && time.Since(f.at) < 2*acceptDelays[1] {
		return f.err
	}
	return nil
}

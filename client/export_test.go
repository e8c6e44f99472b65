package client

import (
	"context"
	"time"
)

// SetDefaultSidecar moves the default sidecar address for a test.
func SetDefaultSidecar(addr string) (restore func()) {
	old := defaultSidecar
	defaultSidecar = addr
	return func() { defaultSidecar = old }
}

// SetTimeouts shortens the per-replica timeouts for a test.
func SetTimeouts(attempt, connect, idle time.Duration) (restore func()) {
	a, c, i := attemptTimeout, watchConnectTimeout, streamIdleTimeout
	attemptTimeout, watchConnectTimeout, streamIdleTimeout = attempt, connect, idle
	return func() { attemptTimeout, watchConnectTimeout, streamIdleTimeout = a, c, i }
}

// SetDefaultTimeout moves the timeout of direct calls that name none.
func SetDefaultTimeout(d time.Duration) (restore func()) {
	old := defaultTimeout
	defaultTimeout = d
	return func() { defaultTimeout = old }
}

// SetUnusedFor moves how long a service no direct call asked for is
// followed.
func SetUnusedFor(d time.Duration) (restore func()) {
	old := unusedFor
	unusedFor = d
	return func() { unusedFor = old }
}

// Ejected counts the ejected instances of a service the transport calls
// direct.
func (t *Transport) Ejected(service string) int {
	p, err := t.pool(context.Background(), service)
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range p.Endpoints() {
		if ej, _ := e.Ejected(time.Now()); ej {
			n++
		}
	}
	return n
}

// EndOldAtlasWait ends the wait after an Atlas refused ?sync=later, as if
// oldAtlasWait had passed.
func (a *Atlas) EndOldAtlasWait() {
	a.mu.Lock()
	a.noSyncUntil = time.Time{}
	a.mu.Unlock()
}

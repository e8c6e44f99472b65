// Package proxy is the sidecar's built-in proxy: the table of pools, the
// HTTP frontend (fasthttp) and the L4 TCP listeners. Choosing instances is
// package balance's work.
package proxy

import (
	"slices"
	"strings"
	"sync"

	"github.com/switchboard-go/switchboard/balance"
)

// Table maps service names to their pools. The first time a service is
// asked for, its pool is created and OnNew is called, so that the sidecar
// starts watching it.
type Table struct {
	// Realm of every pool.
	Realm string
	// OnNew is called once per new service, outside the table's lock.
	OnNew func(service string)
	// OnEject is called when outlier detection ejects an endpoint; may be
	// nil.
	OnEject func(service, id string)

	// mu guards pools.
	mu    sync.RWMutex
	pools map[string]*balance.Pool
}

// Get returns the pool of service, creating it the first time.
func (t *Table) Get(service string) *balance.Pool {
	t.mu.RLock()
	p := t.pools[service]
	t.mu.RUnlock()
	if p != nil {
		return p
	}
	t.mu.Lock()
	if p = t.pools[service]; p != nil {
		t.mu.Unlock()
		return p
	}
	if t.pools == nil {
		t.pools = make(map[string]*balance.Pool)
	}
	p = balance.NewPool(service, t.Realm)
	p.OnEject = t.OnEject
	t.pools[service] = p
	t.mu.Unlock()
	if t.OnNew != nil {
		t.OnNew(service)
	}
	return p
}

// GetBytes is Get for a name held as bytes: finding an existing pool
// allocates nothing.
func (t *Table) GetBytes(service []byte) *balance.Pool {
	t.mu.RLock()
	p := t.pools[string(service)]
	t.mu.RUnlock()
	if p != nil {
		return p
	}
	return t.Get(string(service))
}

// Lookup returns the pool of service, or nil.
func (t *Table) Lookup(service string) *balance.Pool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.pools[service]
}

// All returns every pool, sorted by service.
func (t *Table) All() []*balance.Pool {
	t.mu.RLock()
	out := make([]*balance.Pool, 0, len(t.pools))
	for _, p := range t.pools {
		out = append(out, p)
	}
	t.mu.RUnlock()
	slices.SortFunc(out, func(a, b *balance.Pool) int { return strings.Compare(a.Service, b.Service) })
	return out
}

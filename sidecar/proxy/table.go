// Package proxy is the sidecar's built-in proxy: the table of pools, the
// HTTP frontend (fasthttp) and the L4 TCP listeners. Choosing instances is
// package balance's work.
package proxy

import (
	"cmp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/balance"
)

// Table maps service names to their pools. The first time a service is
// asked for, its pool is created and OnNew is called, so that the sidecar
// starts watching it. Pools that no call has asked for since the last two
// Sweeps are dropped, unless pinned: a sidecar called with many names
// (typos in Host headers, names no policy allows) follows only those still
// in use.
type Table struct {
	// Realm of every pool.
	Realm string
	// OnNew is called once per new pool, outside the table's lock. The
	// function it returns, if not nil, is called when the pool is dropped.
	OnNew func(pool *balance.Pool) (stop func())
	// OnEject is called when outlier detection ejects an endpoint; may be
	// nil.
	OnEject func(service, id string)
	// Keep, when not nil, names pools that are kept however long they go
	// unused: a Sweep keeps them, and MaxPools never drops them (the
	// sidecar keeps the services whose watch is failing: their last known
	// instances are all there is to route to).
	Keep func(service string) bool
	// MaxPools bounds the pools Route creates, besides pinned ones (0: no
	// bound). Every name a call asks for is followed on Atlas until a
	// Sweep finds it unused, so without a bound anything that can reach
	// the frontend (a web page fetching random NAME.localhost URLs) could
	// make the sidecar open event streams without end. At the bound, a
	// new name takes the place of a pool that Atlas says is empty or
	// denies, or that no call asked for since the last Sweep, Keep's
	// aside; when there is none, Route refuses it.
	MaxPools int

	// mu guards pools.
	mu    sync.RWMutex
	pools map[string]*entry
}

type entry struct {
	pool   *balance.Pool
	used   atomic.Bool // asked for since the last Sweep
	pinned bool        // never dropped
	stop   func()      // from OnNew
}

// markUsed notes a use. The flag is read first: on the request path a
// plain load costs less than the locked exchange of a store, and it is set
// already nearly always.
func (e *entry) markUsed() {
	if !e.used.Load() {
		e.used.Store(true)
	}
}

// Get returns the pool of service, creating it the first time, whatever
// MaxPools says.
func (t *Table) Get(service string) *balance.Pool {
	p, _ := t.get(service, false, false)
	return p
}

// Route returns the pool of service for a call, creating it the first
// time within MaxPools.
func (t *Table) Route(service string) (*balance.Pool, error) {
	return t.get(service, false, true)
}

// Pin returns the pool of service, creating it the first time, and keeps
// it: a configured upstream is followed whether it is called or not.
func (t *Table) Pin(service string) *balance.Pool {
	p, _ := t.get(service, true, false)
	return p
}

func (t *Table) get(service string, pin, bounded bool) (*balance.Pool, error) {
	t.mu.RLock()
	e := t.pools[service]
	t.mu.RUnlock()
	if e != nil && !pin {
		e.markUsed()
		return e.pool, nil
	}
	t.mu.Lock()
	if e = t.pools[service]; e != nil {
		e.pinned = e.pinned || pin
		e.used.Store(true)
		t.mu.Unlock()
		return e.pool, nil
	}
	if t.pools == nil {
		t.pools = make(map[string]*entry)
	}
	var evicted *entry
	if bounded && t.MaxPools > 0 {
		var ok bool
		if evicted, ok = t.makeRoomLocked(); !ok {
			n := len(t.pools)
			t.mu.Unlock()
			return nil, sb.Errorf(sb.EUnavailable, "the sidecar follows %d services, the most it will, and every one was called since the last sweep: %s cannot be added", n, service)
		}
	}
	e = &entry{pool: balance.NewPool(service, t.Realm), pinned: pin}
	e.pool.OnEject = t.OnEject
	e.used.Store(true)
	t.pools[service] = e
	t.mu.Unlock()
	if evicted != nil && evicted.stop != nil {
		evicted.stop()
	}
	if t.OnNew != nil {
		if stop := t.OnNew(e.pool); stop != nil {
			t.mu.Lock()
			if t.pools[service] == e {
				e.stop = stop
				stop = nil
			}
			t.mu.Unlock()
			if stop != nil { // dropped meanwhile
				stop()
			}
		}
	}
	return e.pool, nil
}

// makeRoomLocked makes room for one more unpinned pool under MaxPools:
// when the table is full it drops a pool Atlas says is empty (a typo, a
// name made up), or else one no call asked for since the last Sweep, and
// returns it for its stop function to be called. ok is false when there
// is no room and nothing to drop.
func (t *Table) makeRoomLocked() (dropped *entry, ok bool) {
	unpinned := 0
	var empty, unused string
	for name, e := range t.pools {
		if e.pinned {
			continue
		}
		unpinned++
		switch {
		case t.Keep != nil && t.Keep(name):
		case empty == "" && (e.pool.IsEmpty() || e.pool.Denied() != nil):
			empty = name
		case unused == "" && !e.used.Load():
			unused = name
		}
	}
	if unpinned < t.MaxPools {
		return nil, true
	}
	name := cmp.Or(empty, unused)
	if name == "" {
		return nil, false
	}
	dropped = t.pools[name]
	delete(t.pools, name)
	return dropped, true
}

// Touch notes a use of service's pool, if there is one: a call routed
// without the table (by HAProxy, in haproxy mode).
func (t *Table) Touch(service string) {
	t.mu.RLock()
	e := t.pools[service]
	t.mu.RUnlock()
	if e != nil {
		e.markUsed()
	}
}

// RouteBytes is Route for a name held as bytes: finding an existing pool
// allocates nothing.
func (t *Table) RouteBytes(service []byte) (*balance.Pool, error) {
	t.mu.RLock()
	e := t.pools[string(service)]
	t.mu.RUnlock()
	if e != nil {
		e.markUsed()
		return e.pool, nil
	}
	return t.Route(string(service))
}

// Sweep drops the pools that are not pinned, were not asked for since the
// previous Sweep and that Keep (when not nil) does not ask to keep; it
// calls their stop functions and returns their names.
func (t *Table) Sweep() []string {
	var (
		names []string
		stops []func()
	)
	t.mu.Lock()
	for name, e := range t.pools {
		if e.pinned || e.used.Swap(false) || t.Keep != nil && t.Keep(name) {
			continue
		}
		delete(t.pools, name)
		names = append(names, name)
		if e.stop != nil {
			stops = append(stops, e.stop)
		}
	}
	t.mu.Unlock()
	for _, stop := range stops {
		stop()
	}
	slices.Sort(names)
	return names
}

// Lookup returns the pool of service, or nil. It does not count as a use.
func (t *Table) Lookup(service string) *balance.Pool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if e := t.pools[service]; e != nil {
		return e.pool
	}
	return nil
}

// All returns every pool, sorted by service.
func (t *Table) All() []*balance.Pool {
	t.mu.RLock()
	out := make([]*balance.Pool, 0, len(t.pools))
	for _, e := range t.pools {
		out = append(out, e.pool)
	}
	t.mu.RUnlock()
	slices.SortFunc(out, func(a, b *balance.Pool) int { return strings.Compare(a.Service, b.Service) })
	return out
}

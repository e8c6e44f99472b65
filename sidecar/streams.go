package sidecar

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/balance"
	"github.com/switchboard-go/switchboard/client"
)

// streams gathers the services a sidecar follows onto shared event streams
// (GET /v1/watch?service=a&service=b...), up to maxSharedStream each, so
// that Atlas holds a few streams per sidecar rather than one per service
// and sidecar.
//
// Those known at start (the configured upstreams, and the services of the
// last known routes) share streams from the first. A service that a call
// asks for later is followed on a stream of its own, so that its first
// answer comes at once; every regroupEvery, the services on streams of
// their own join the shared ones, which start again with them: one
// snapshot for each, at most once a regroupEvery and only when the set
// changed. A service that no call asks for any more (the sweep) is left
// out at that point too, once half of its stream's services are.
//
// Atlas refuses a shared stream whole when it may not show this host one
// of its services (a policy, or a token it does not take). Its services
// then go on streams of their own, each of which gets its own answer: the
// refused ones get 403 on their calls, the others route, and the next
// regroup takes back those Atlas shows. A refusal for another cause (a
// gateway in front of Atlas refusing the longer URL, say) leaves every
// service on a stream of its own for good. Nothing is regrouped while a
// stream is failing for want of Atlas: its services keep their last known
// instances (static stability).
type streams struct {
	s *Sidecar

	mu      sync.Mutex
	started bool
	noShare bool // a refusal other than a policy's: each on its own
	alone   map[*balance.Pool]*ownStream
	groups  map[*group]struct{}
	member  map[*balance.Pool]*group
	// moving holds the pools a regroup has taken off their streams and
	// not yet put on new ones; true once the table dropped one meanwhile.
	moving map[*balance.Pool]bool
}

// ownStream is a service's stream of its own (followIn); stop is nil
// until the sidecar starts. heard: Atlas has answered on it.
type ownStream struct {
	stop  context.CancelCauseFunc
	done  <-chan struct{}
	heard atomic.Bool
}

// group is a shared stream of the services it was started with (size), of
// which pools holds those still followed through it.
type group struct {
	mu    sync.Mutex
	pools map[string]*balance.Pool
	size  int
	stop  context.CancelFunc
	done  chan struct{}
}

// maxSharedStream bounds the services of one shared stream: Atlas wakes a
// stream of up to 64 services for changes to them alone, and one of more
// for every change in the realm.
const maxSharedStream = 64

// errMoved ends a stream whose services go on another.
var errMoved = errors.New("sidecar: the service moves to another stream")

func newStreams(s *Sidecar) *streams {
	return &streams{s: s, alone: map[*balance.Pool]*ownStream{}, groups: map[*group]struct{}{},
		member: map[*balance.Pool]*group{}, moving: map[*balance.Pool]bool{}}
}

// add follows pool: on a stream of its own once the sidecar has started,
// on a shared one from the start when it is known before.
func (m *streams) add(pool *balance.Pool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	o := &ownStream{}
	if m.started {
		o = m.s.ownStream(pool)
	}
	m.alone[pool] = o
}

// drop stops following pool, which the table dropped: its instances are
// closed and its metrics forgotten. It does not wait for a stream to end.
func (m *streams) drop(pool *balance.Pool) {
	m.mu.Lock()
	if o, ok := m.alone[pool]; ok {
		delete(m.alone, pool)
		m.mu.Unlock()
		if o.stop != nil {
			o.stop(errDropped) // followIn's cleanup
		} else {
			m.s.dropped(pool)
		}
		return
	}
	if _, ok := m.moving[pool]; ok {
		m.moving[pool] = true // regroup cleans up
		m.mu.Unlock()
		return
	}
	g := m.member[pool]
	if g == nil {
		m.mu.Unlock()
		return
	}
	delete(m.member, pool)
	// Once out of g.pools no event of g's reaches it: it is cleaned up
	// after any being applied. A stream left with none ends.
	g.mu.Lock()
	if g.pools[pool.Service] == pool {
		delete(g.pools, pool.Service)
	}
	empty := len(g.pools) == 0
	g.mu.Unlock()
	if empty {
		delete(m.groups, g)
		g.stop()
	}
	m.mu.Unlock()
	m.s.dropped(pool)
}

// start puts the pools added so far on shared streams and starts
// regrouping every regroupEvery.
func (m *streams) start() {
	m.mu.Lock()
	m.started = true
	pools := make([]*balance.Pool, 0, len(m.alone))
	for p := range m.alone {
		pools = append(pools, p)
	}
	clear(m.alone)
	m.placeLocked(pools)
	m.mu.Unlock()
	m.s.wg.Add(1)
	go func() {
		defer m.s.wg.Done()
		t := time.NewTicker(m.s.regroupEvery)
		defer t.Stop()
		for {
			select {
			case <-m.s.ctx.Done():
				return
			case <-t.C:
				m.regroup()
			}
		}
	}()
}

// placeLocked follows pools on shared streams of up to maxSharedStream, in
// the order of their names; one left over goes on a stream of its own, as
// do all of them once sharing has been refused for good. So does a pool
// the table has dropped but not yet stopped (a call may have asked for
// its service anew meanwhile: a stream holds one pool of a service), until
// it is.
func (m *streams) placeLocked(pools []*balance.Pool) {
	slices.SortFunc(pools, func(a, b *balance.Pool) int { return strings.Compare(a.Service, b.Service) })
	pools = slices.DeleteFunc(pools, func(p *balance.Pool) bool {
		if m.s.table.Lookup(p.Service) == p {
			return false
		}
		m.alone[p] = m.s.ownStream(p)
		return true
	})
	for chunk := range slices.Chunk(pools, maxSharedStream) {
		if len(chunk) == 1 || m.noShare {
			for _, p := range chunk {
				m.alone[p] = m.s.ownStream(p)
			}
			continue
		}
		m.startGroupLocked(chunk)
	}
}

// startGroupLocked follows pools on one shared stream.
func (m *streams) startGroupLocked(pools []*balance.Pool) {
	g := &group{pools: make(map[string]*balance.Pool, len(pools)), size: len(pools), done: make(chan struct{})}
	for _, p := range pools {
		g.pools[p.Service] = p
		m.member[p] = g
	}
	m.groups[g] = struct{}{}
	ctx, stop := context.WithCancel(m.s.ctx)
	g.stop = stop
	services := names(pools)
	m.s.wg.Add(1)
	go func() {
		defer m.s.wg.Done()
		defer close(g.done)
		code := m.s.followShared(ctx, g, services)
		if code == "" {
			return // stopped
		}
		m.refused(g, services, code)
	}()
}

// refused splits g, whose stream Atlas (or a gateway) refused with code,
// into streams of their own.
func (m *streams) refused(g *group, services []string, code string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.groups[g]; !ok {
		return // a regroup took it meanwhile, and follows its services anew
	}
	delete(m.groups, g)
	again := code == sb.EPermissionDenied || code == sb.EUnauthenticated
	if !again {
		m.noShare = true
	}
	m.s.log.Info("sidecar: Atlas refused a shared event stream; following each of its services on a stream of its own, whose answer says which may be called",
		"services", services, "code", code, "shared_again", again)
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, p := range g.pools {
		delete(m.member, p)
		m.alone[p] = m.s.ownStream(p)
	}
}

// regroup puts the services on streams of their own that Atlas shows this
// host (it has answered on their stream, and not with a refusal) on the
// shared streams, which start again with them; and it leaves out of the
// shared streams the services the table dropped, once half of a stream's
// are. Nothing moves while a shared stream fails for want of Atlas.
func (m *streams) regroup() {
	m.mu.Lock()
	if m.noShare || m.s.ctx.Err() != nil {
		m.mu.Unlock()
		return
	}
	var joining []*balance.Pool
	for p, o := range m.alone {
		if o.stop != nil && o.heard.Load() && p.Denied() == nil && !m.s.isUnreachable(p.Service) {
			joining = append(joining, p)
		}
	}
	stale := false
	var shared []*balance.Pool
	for g := range m.groups {
		g.mu.Lock()
		for _, p := range g.pools {
			if m.s.isUnreachable(p.Service) {
				g.mu.Unlock()
				m.mu.Unlock()
				return
			}
			shared = append(shared, p)
		}
		stale = stale || 2*len(g.pools) <= g.size
		g.mu.Unlock()
	}
	if len(joining) == 0 && !stale || len(joining)+len(shared) < 2 {
		m.mu.Unlock()
		return
	}
	// Every stream of these ends before the new ones start: an answer of
	// an old stream applied after one of a new one would put older
	// instances back.
	var ends []<-chan struct{}
	for _, p := range joining {
		o := m.alone[p]
		delete(m.alone, p)
		m.moving[p] = false
		o.stop(errMoved)
		ends = append(ends, o.done)
	}
	for g := range m.groups {
		delete(m.groups, g)
		g.stop()
		ends = append(ends, g.done)
	}
	for _, p := range shared {
		delete(m.member, p)
		m.moving[p] = false
	}
	m.mu.Unlock()
	for _, done := range ends {
		<-done
	}
	m.mu.Lock()
	var pools, gone []*balance.Pool
	for p, dropped := range m.moving {
		if dropped {
			gone = append(gone, p)
		} else {
			pools = append(pools, p)
		}
	}
	clear(m.moving)
	if m.s.ctx.Err() == nil {
		m.placeLocked(pools)
	}
	nShared := len(m.groups)
	m.mu.Unlock()
	for _, p := range gone {
		m.s.dropped(p)
	}
	if len(joining) > 0 {
		m.s.log.Info("sidecar: services followed on streams of their own now share event streams", "services", names(joining), "shared_streams", nShared)
	}
}

// ownStream follows pool on a stream of its own (followIn).
func (s *Sidecar) ownStream(pool *balance.Pool) *ownStream {
	ctx, stop := context.WithCancelCause(s.ctx)
	o := &ownStream{stop: stop}
	o.done = s.goFollow(ctx, pool, &o.heard)
	return o
}

// followShared follows g's services on one event stream until ctx ends
// (it returns "") or the stream is refused; it returns the refusal's
// error code.
func (s *Sidecar) followShared(ctx context.Context, g *group, services []string) (refused string) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var warned failureLog
	s.atlas.Follow(ctx, s.cfg.Realm, services, func(ev client.Event) {
		g.mu.Lock()
		defer g.mu.Unlock()
		if p := g.pools[ev.Service.Service]; p != nil {
			warned.ok()
			s.apply(p, ev)
		}
	}, func(err error, retryIn time.Duration) {
		s.token.note(err)
		if code := sb.ErrorCode(err); slices.Contains(refusals, code) {
			refused = code
			cancel()
			return
		}
		g.mu.Lock()
		for name := range g.pools {
			s.unreachable.Store(name, true)
			s.m.watchErrors.WithLabelValues(name).Inc()
		}
		g.mu.Unlock()
		if warned.failed(err) {
			s.log.Warn("sidecar: watching Atlas failed; keeping the last known instances", "services", services, "err", err, "retry_in", retryIn.String())
		}
	})
	g.mu.Lock()
	for name := range g.pools {
		s.unreachable.Delete(name)
	}
	g.mu.Unlock()
	return refused
}

// names returns the pools' services.
func names(pools []*balance.Pool) []string {
	out := make([]string, len(pools))
	for i, p := range pools {
		out[i] = p.Service
	}
	return out
}

// refusals are the error codes with which Atlas, or a gateway in front of
// it, refuses an event stream of several services whole: each service
// then needs a stream of its own to learn its own answer. Other errors
// (Atlas down) are waited out on the last known instances.
var refusals = []string{sb.EPermissionDenied, sb.EUnauthenticated, sb.EInvalid, sb.ETooLarge, sb.ENotFound}

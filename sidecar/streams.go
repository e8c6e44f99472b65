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
// their own join the smallest shared stream, which starts again with them
// (one snapshot of each of its services). A service that no call asks for
// any more (the sweep) leaves its shared stream at once, and the stream
// starts again without those left once half of its services have.
//
// Atlas refuses a shared stream whole when it may not show this host one
// of its services (a policy, or a token it does not take). Its services
// then go on streams of their own, each of which gets its own answer: the
// refused ones get 403 on their calls, the others route, and the next
// regroup takes back those Atlas shows. A refusal for another cause (a
// gateway in front of Atlas refusing the longer URL, say) puts every
// service on a stream of its own, and sharing is tried again after
// noShareFor regroups. Nothing moves while a shared stream fails for want
// of Atlas: its services keep their last known instances (static
// stability).
type streams struct {
	s *Sidecar

	mu      sync.Mutex
	started bool
	// noShare counts down the regroups before sharing is tried again
	// after a refusal other than a policy's.
	noShare int
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

// group is a shared stream of the services it was started with (size).
// pools holds those still followed through it: it is changed holding
// applying and then streams.mu, and read holding either. applying is held
// while an event of the stream is applied, so that a pool taken out of
// pools gets no event afterwards; streams.mu is never held waiting for it.
type group struct {
	applying sync.Mutex
	pools    map[string]*balance.Pool
	size     int
	stop     context.CancelFunc
	done     chan struct{}
}

// maxSharedStream bounds the services of one shared stream: Atlas wakes a
// stream of up to 64 services for changes to them alone, and one of more
// for every change in the realm.
const maxSharedStream = 64

// noShareFor is how many regroups pass, after a refusal other than a
// policy's, before services share streams again.
const noShareFor = 30

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
// closed and its metrics forgotten. It waits for nothing: the table calls
// it on the request path too.
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
	delete(m.member, pool) // from now on no regroup moves it
	m.mu.Unlock()
	if g == nil {
		return
	}
	// Out of g.pools once no event of g's is being applied, then cleaned
	// up: no event reaches it afterwards. A stream left with none ends.
	m.s.wg.Add(1)
	go func() {
		defer m.s.wg.Done()
		g.applying.Lock()
		m.mu.Lock()
		if g.pools[pool.Service] == pool {
			delete(g.pools, pool.Service)
		}
		if _, ok := m.groups[g]; ok && len(g.pools) == 0 {
			delete(m.groups, g)
			g.stop()
		}
		m.mu.Unlock()
		g.applying.Unlock()
		m.s.dropped(pool)
	}()
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

// placeLocked follows pools on as few shared streams as maxSharedStream
// allows, of sizes within one of each other, in the order of their names
// (65 services make streams of 33 and 32: a stream of one would be
// regrouped again and again). One pool alone goes on a stream of its own,
// as do all of them while sharing is refused, and a pool the table has
// dropped but not yet stopped (a call may have asked for its service anew
// meanwhile: a stream holds one pool of a service), until it is.
func (m *streams) placeLocked(pools []*balance.Pool) {
	slices.SortFunc(pools, func(a, b *balance.Pool) int { return strings.Compare(a.Service, b.Service) })
	pools = slices.DeleteFunc(pools, func(p *balance.Pool) bool {
		if m.noShare == 0 && m.s.table.Lookup(p.Service) == p {
			return false
		}
		m.alone[p] = m.s.ownStream(p)
		return true
	})
	if len(pools) == 1 {
		m.alone[pools[0]] = m.s.ownStream(pools[0])
		return
	}
	streams := (len(pools) + maxSharedStream - 1) / maxSharedStream
	for i := range streams {
		m.startGroupLocked(pools[i*len(pools)/streams : (i+1)*len(pools)/streams])
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
// into streams of their own; a refusal other than a policy's stops sharing
// for noShareFor regroups (the next splits the other shared streams).
func (m *streams) refused(g *group, services []string, code string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.groups[g]; !ok {
		return // a regroup took it meanwhile, and follows its services anew
	}
	delete(m.groups, g)
	again := 1 // the next regroup takes back those Atlas shows
	if code != sb.EPermissionDenied && code != sb.EUnauthenticated {
		m.noShare, again = noShareFor, noShareFor
	}
	m.s.log.Info("sidecar: Atlas refused a shared event stream; following each of its services on a stream of its own, whose answer says which may be called",
		"services", services, "code", code, "shared_again_in_regroups", again)
	for _, p := range g.pools {
		if m.member[p] == g {
			delete(m.member, p)
			m.alone[p] = m.s.ownStream(p)
		}
	}
}

// regroup moves the services on streams of their own that Atlas shows this
// host (it has answered on their stream, and not with a refusal) to the
// smallest shared stream, and restarts the shared streams half of whose
// services the table dropped without them. While sharing is refused, it
// puts the services of the shared streams on streams of their own. Nothing
// moves while a shared stream fails for want of Atlas.
func (m *streams) regroup() {
	m.mu.Lock()
	if m.s.ctx.Err() != nil {
		m.mu.Unlock()
		return
	}
	if m.noShare > 0 {
		m.noShare--
	}
	var joining []*balance.Pool
	if m.noShare == 0 {
		for p, o := range m.alone {
			if o.stop != nil && o.heard.Load() && p.Denied() == nil && !m.s.isUnreachable(p.Service) && m.s.table.Lookup(p.Service) == p {
				joining = append(joining, p)
			}
		}
	}
	var (
		restart  []*group
		smallest *group
		smallN   int
		// live holds each group's pools still followed through it: those
		// drop has taken out are in g.pools until no event is applied.
		live = make(map[*group][]*balance.Pool, len(m.groups))
	)
	for g := range m.groups {
		var pools []*balance.Pool
		for _, p := range g.pools {
			if m.member[p] != g {
				continue
			}
			if m.s.isUnreachable(p.Service) {
				m.mu.Unlock()
				return
			}
			pools = append(pools, p)
		}
		live[g] = pools
		switch {
		case m.noShare > 0 || 2*len(pools) <= g.size:
			restart = append(restart, g)
		case smallest == nil || len(pools) < smallN:
			smallest, smallN = g, len(pools)
		}
	}
	if len(joining) > 0 && smallest != nil {
		restart = append(restart, smallest)
	}
	n := len(joining)
	for _, g := range restart {
		n += len(live[g])
	}
	// (While sharing is refused, joining is empty.)
	if len(restart) == 0 && len(joining) < 2 || n < 2 && m.noShare == 0 {
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
	for _, g := range restart {
		for _, p := range live[g] {
			delete(m.member, p)
			m.moving[p] = false
		}
		delete(m.groups, g)
		g.stop()
		ends = append(ends, g.done)
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

// count returns how many streams the sidecar holds to Atlas: shared, and
// of a service's own.
func (m *streams) count() (shared, own int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, o := range m.alone {
		if o.stop != nil {
			own++
		}
	}
	return len(m.groups), own
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
	// each calls f with the name of every service still followed here.
	each := func(f func(name string)) {
		g.applying.Lock()
		defer g.applying.Unlock()
		for name := range g.pools {
			f(name)
		}
	}
	reachable := func(name string) { s.unreachable.Delete(name) }
	defer each(reachable)
	// Every call below runs in this goroutine, one at a time.
	s.atlas.Follow(ctx, s.cfg.Realm, services, func(ev client.Event) {
		g.applying.Lock()
		defer g.applying.Unlock()
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
		each(func(name string) {
			s.unreachable.Store(name, true)
			s.m.watchErrors.WithLabelValues(name).Inc()
		})
		if warned.failed(err) {
			s.log.Warn("sidecar: watching Atlas failed; keeping the last known instances", "services", services, "err", err, "retry_in", retryIn.String())
		}
	}, client.OnOpen(func() {
		// Atlas answers: a stream resumed with nothing new brings no
		// event, yet these are reachable again.
		each(reachable)
	}))
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

// Package balance chooses instances: a pool per service with
// power-of-two-choices balancing on in-flight requests, passing instances
// before warning ones, outlier ejection, and a Linkerd-style retry budget.
// The sidecar's proxy and the smart client share it; it does no I/O.
package balance

import (
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	sb "github.com/switchboard-go/switchboard"
)

// Outlier ejection, as the SPEC says: 5 consecutive failures eject an
// instance for 30 s times the number of its ejections, never more than half
// of a service's instances. Each 30 s an instance stays in rotation after
// an ejection takes one off that number.
const (
	EjectAfter   = 5
	EjectBase    = 30 * time.Second
	MaxEjections = 10 // caps the ejection time at 300 s
)

// Endpoint is one instance as the proxy sees it: what Atlas says of it,
// and what the proxy has learnt by using it.
type Endpoint struct {
	ID   string
	Addr string // host:port

	info         atomic.Pointer[Info]
	inflight     atomic.Int64
	failures     atomic.Int32 // consecutive
	ejections    atomic.Int32
	ejectedUntil atomic.Int64 // unix nanoseconds; 0 = not ejected
	requests     atomic.Uint64

	// attached is the engine's per-endpoint state (its connection pool),
	// kept across updates of the same endpoint.
	attached atomic.Pointer[any]
}

// Info is what Atlas says of an endpoint; replaced whole on each update.
type Info struct {
	Status  sb.Status
	Enabled bool
	Tags    []string
}

// Info returns what Atlas last said of the endpoint.
func (e *Endpoint) Info() *Info { return e.info.Load() }

// Instance returns the endpoint as an instance (for saving routes).
func (e *Endpoint) Instance() *sb.Instance {
	host, port, _ := net.SplitHostPort(e.Addr)
	p, _ := strconv.Atoi(port)
	info := e.Info()
	return &sb.Instance{ID: e.ID, Address: host, Port: p, Status: info.Status, Enabled: info.Enabled, Tags: info.Tags}
}

func newEndpoint(in *sb.Instance) *Endpoint {
	e := &Endpoint{ID: in.ID, Addr: joinHostPort(in.Address, in.Port)}
	e.info.Store(&Info{Status: in.Status, Enabled: in.Enabled, Tags: in.Tags})
	return e
}

// Attached returns what the engine attached to the endpoint (its
// connection pool), or nil.
func (e *Endpoint) Attached() any {
	if p := e.attached.Load(); p != nil {
		return *p
	}
	return nil
}

// Attach attaches v unless something is attached already, and returns what
// is attached now.
func (e *Endpoint) Attach(v any) any {
	if e.attached.CompareAndSwap(nil, &v) {
		return v
	}
	return *e.attached.Load()
}

// Inflight is how many requests are at the endpoint now.
func (e *Endpoint) Inflight() int64 { return e.inflight.Load() }

// Ejected reports whether outlier detection has taken it out, and until.
func (e *Endpoint) Ejected(now time.Time) (bool, time.Time) {
	u := e.ejectedUntil.Load()
	if u == 0 || now.UnixNano() >= u {
		return false, time.Time{}
	}
	return true, time.Unix(0, u)
}

// Requests is how many requests it has been given.
func (e *Endpoint) Requests() uint64 { return e.requests.Load() }

// Pool is the routable set of one service: copy-on-write, so that picking
// takes no lock.
type Pool struct {
	Service string
	Realm   string

	eps   atomic.Pointer[[]*Endpoint]
	index atomic.Uint64 // the Atlas index applied
	// ready is closed by the first Update: until then the pool has not
	// heard from Atlas (or from the state file) at all.
	ready     chan struct{}
	readyOnce sync.Once
	// mu serialises updates and ejections (readers never take it).
	mu sync.Mutex
	// denied, when set, is why calls to the service are refused (a policy
	// forbids it): every call gets this error instead of an instance.
	denied atomic.Pointer[error]
	// OnEject is called when an endpoint is ejected (metrics); may be nil.
	// Set it before the pool is used.
	OnEject func(service, id string)
}

// NewPool returns an empty pool.
func NewPool(service, realm string) *Pool {
	p := &Pool{Service: service, Realm: realm, ready: make(chan struct{})}
	empty := []*Endpoint{}
	p.eps.Store(&empty)
	return p
}

// Deny makes every call to the service fail with err (nil lifts it). It
// counts as an answer: Ready is closed.
func (p *Pool) Deny(err error) {
	if err == nil {
		p.denied.Store(nil)
		return
	}
	p.denied.Store(&err)
	p.readyOnce.Do(func() { close(p.ready) })
}

// Denied returns why calls to the service are refused, or nil.
func (p *Pool) Denied() error {
	if e := p.denied.Load(); e != nil {
		return *e
	}
	return nil
}

// Ready is closed once the pool has been given instances (perhaps none).
func (p *Pool) Ready() <-chan struct{} { return p.ready }

// Index is the Atlas index of the instances the pool holds.
func (p *Pool) Index() uint64 { return p.index.Load() }

// Endpoints returns the current endpoints (do not modify).
func (p *Pool) Endpoints() []*Endpoint { return *p.eps.Load() }

// Unroutable says why Pick found nothing to route to, for the answer that
// says so: "has no routable instance: ...".
func (p *Pool) Unroutable() string {
	eps := p.Endpoints()
	if len(eps) == 0 {
		return "Atlas lists none (is the name right, and is the service announced?)"
	}
	var critical, disabled int
	for _, e := range eps {
		switch info := e.Info(); {
		case !info.Enabled:
			disabled++
		case info.Status == sb.Critical:
			critical++
		}
	}
	return fmt.Sprintf("of %d, %d critical (checks failing, or not passing yet) and %d disabled", len(eps), critical, disabled)
}

// IsEmpty reports whether the pool has heard of its service (from Atlas
// or the state file) and has no endpoint: a service that has no instance,
// or that does not exist.
func (p *Pool) IsEmpty() bool {
	select {
	case <-p.ready:
		return len(*p.eps.Load()) == 0
	default:
		return false
	}
}

// Update replaces the pool's instances with those of an Atlas answer,
// keeping what the proxy learnt of instances that stay (in-flight count,
// failures, ejection, connections). It returns the endpoints removed, for
// the engine to close.
func (p *Pool) Update(instances []*sb.Instance, index uint64) (removed []*Endpoint) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.updateLocked(instances, index, true)
}

// Seed gives the pool instances saved earlier (the sidecar's state file)
// unless it has heard from Atlas already: a watch started with the pool
// may have answered first, and saved routes must not replace a newer
// answer. It reports whether the instances were taken.
func (p *Pool) Seed(instances []*sb.Instance, index uint64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.ready:
		return false
	default:
	}
	p.updateLocked(instances, index, false)
	return true
}

// updateLocked replaces the instances; an answer from Atlas (lift) also
// lifts a denial, as a snapshot Atlas let through says the call is
// allowed again.
func (p *Pool) updateLocked(instances []*sb.Instance, index uint64, lift bool) (removed []*Endpoint) {
	old := map[string]*Endpoint{}
	for _, e := range *p.eps.Load() {
		old[e.ID] = e
	}
	next := make([]*Endpoint, 0, len(instances))
	for _, in := range instances {
		e, ok := old[in.ID]
		if ok && e.Addr == joinHostPort(in.Address, in.Port) {
			// The same endpoint: keep what the proxy learnt of it, but an
			// instance whose check saw it down and up again is a new
			// start: its ejection is over.
			delete(old, in.ID)
			if e.Info().Status == sb.Critical && in.Status != sb.Critical {
				e.ejectedUntil.Store(0)
				e.ejections.Store(0)
				e.failures.Store(0)
			}
			e.info.Store(&Info{Status: in.Status, Enabled: in.Enabled, Tags: in.Tags})
			next = append(next, e)
			continue
		}
		next = append(next, newEndpoint(in))
	}
	for _, e := range old {
		removed = append(removed, e)
	}
	p.eps.Store(&next)
	p.index.Store(index)
	if lift {
		p.denied.Store(nil)
	}
	p.readyOnce.Do(func() { close(p.ready) })
	return removed
}

func joinHostPort(host string, port int) string {
	return net.JoinHostPort(host, strconv.Itoa(port))
}

// The endpoints new requests may go to: enabled, not critical, not
// already tried for this request; passing ones if any (warning ones only
// when no passing one is left); and not ejected, unless every one of those
// is (ejection is a guess: a request that might work beats a certain 503).
// Pick counts and indexes them in place rather than collecting them: it
// runs on every request and allocates nothing.
type candidates struct {
	eps      []*Endpoint
	exclude  []*Endpoint
	now      time.Time
	status   sb.Status // the tier: passing, or warning when no passing one is left
	liveOnly bool      // skip ejected endpoints
}

func (c *candidates) ok(e *Endpoint) bool {
	info := e.info.Load()
	if !info.Enabled || info.Status != c.status || slices.Contains(c.exclude, e) {
		return false
	}
	if c.liveOnly {
		ej, _ := e.Ejected(c.now)
		return !ej
	}
	return true
}

func (c *candidates) count() int {
	n := 0
	for _, e := range c.eps {
		if c.ok(e) {
			n++
		}
	}
	return n
}

// nth returns the candidate at index k (0-based) among the candidates.
func (c *candidates) nth(k int) *Endpoint {
	for _, e := range c.eps {
		if c.ok(e) {
			if k == 0 {
				return e
			}
			k--
		}
	}
	return nil
}

// choose sets c to the first tier that has a candidate, its live ones when
// it has any, and returns how many candidates that is (0: none at all).
func (c *candidates) choose() int {
	for _, c.status = range [...]sb.Status{sb.Passing, sb.Warning} {
		for _, c.liveOnly = range [...]bool{true, false} {
			if n := c.count(); n > 0 {
				return n
			}
		}
	}
	return 0
}

// Choosable returns a test of whether Pick, excluding nothing, would
// choose among an endpoint of eps at now: an engine that balances by
// itself (HAProxy) gives new requests to those alone.
func Choosable(eps []*Endpoint, now time.Time) func(*Endpoint) bool {
	c := &candidates{eps: eps, now: now}
	if c.choose() == 0 {
		return func(*Endpoint) bool { return false }
	}
	return c.ok
}

// Pick chooses an endpoint by the power of two choices on in-flight
// requests, skipping exclude (endpoints already tried for this request).
// It returns nil when no endpoint is routable.
func (p *Pool) Pick(exclude []*Endpoint) *Endpoint {
	for {
		// An update or an ejection between the count of the candidates
		// and their indexing can leave fewer than counted: count again.
		if e, ok := p.pick(exclude); ok {
			return e
		}
	}
}

// pick is one try of Pick; ok is false when the candidates changed under
// it.
func (p *Pool) pick(exclude []*Endpoint) (e *Endpoint, ok bool) {
	c := candidates{eps: *p.eps.Load(), exclude: exclude, now: time.Now()}
	// In the common case (a passing one not ejected) one count.
	n := c.choose()
	switch n {
	case 0:
		return nil, true
	case 1:
		e = c.nth(0)
		return e, e != nil
	}
	i := rand.IntN(n)
	j := rand.IntN(n - 1)
	if j >= i {
		j++
	}
	a, b := c.nth(i), c.nth(j)
	if a == nil || b == nil {
		return nil, false
	}
	if b.inflight.Load() < a.inflight.Load() {
		return b, true
	}
	return a, true
}

// Outcome is how a request to an endpoint ended, as outlier ejection
// counts it.
type Outcome uint8

const (
	// Answered: an answer under 500. It ends a run of failures.
	Answered Outcome = iota
	// Failed: a connect error, a broken connection, a 5xx, or no answer
	// within the timeout the caller left to the default.
	Failed
	// Abandoned: a short timeout the caller chose (TimedOut), or its
	// cancellation, ended the request first. That says nothing of the
	// endpoint (a caller asking for 1ms would otherwise eject healthy
	// ones), so it counts neither way.
	Abandoned
)

// TimedOut is the outcome of a try that ran out of time after it had
// waited on its endpoint: a timeout its caller chose says nothing of the
// endpoint when the try had less than sb.HungAfter; the default timeout,
// or a chosen one that left the endpoint sb.HungAfter or more with no
// answer (hung, for every purpose), is a failure.
func TimedOut(callerChose bool, waited time.Duration) Outcome {
	if callerChose && waited < sb.HungAfter {
		return Abandoned
	}
	return Failed
}

// StatusOutcome is the outcome of an answer with HTTP status code.
func StatusOutcome(code int) Outcome {
	if code >= 500 {
		return Failed
	}
	return Answered
}

// Acquire counts a request going to e; call the returned func with its
// outcome when the request is done.
func (p *Pool) Acquire(e *Endpoint) func(Outcome) {
	e.inflight.Add(1)
	e.requests.Add(1)
	return func(o Outcome) {
		e.inflight.Add(-1)
		p.Report(e, o)
	}
}

// Report records a request's outcome: EjectAfter failures in a row eject
// the endpoint, unless half of the pool's endpoints are ejected already.
func (p *Pool) Report(e *Endpoint, o Outcome) {
	switch o {
	case Answered:
		e.failures.Store(0)
		return
	case Abandoned:
		return
	}
	if e.failures.Add(1) < EjectAfter {
		return
	}
	// One decision at a time: endpoints failing together must not each
	// count the others as not ejected yet.
	p.mu.Lock()
	ejected := p.ejectLocked(e, time.Now())
	p.mu.Unlock()
	if ejected && p.OnEject != nil {
		p.OnEject(p.Service, e.ID)
	}
}

// ejectLocked ejects e unless it is ejected already or half of the pool's
// endpoints are; it reports whether it did. p.mu must be held.
func (p *Pool) ejectLocked(e *Endpoint, now time.Time) bool {
	if ej, _ := e.Ejected(now); ej {
		return false
	}
	eps := *p.eps.Load()
	ejected := 0
	for _, x := range eps {
		if ej, _ := x.Ejected(now); ej {
			ejected++
		}
	}
	if (ejected+1)*2 > len(eps) {
		return false
	}
	// The count decays as Envoy's multiplier does: every EjectBase the
	// endpoint has been back in rotation forgives one ejection, so one that
	// failed ten times yesterday is out for 30 s today, not 300 s.
	n := e.ejections.Load()
	if u := e.ejectedUntil.Load(); u != 0 {
		n -= int32(min(now.Sub(time.Unix(0, u))/EjectBase, MaxEjections))
	}
	n = min(max(n, 0)+1, MaxEjections)
	e.ejections.Store(n)
	e.ejectedUntil.Store(now.Add(time.Duration(n) * EjectBase).UnixNano())
	e.failures.Store(0)
	return true
}

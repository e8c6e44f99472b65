package sidecar

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/balance"
	"github.com/switchboard-go/switchboard/client"
	"github.com/switchboard-go/switchboard/health"
	"github.com/switchboard-go/switchboard/internal/sampled"
	"github.com/switchboard-go/switchboard/sidecar/haproxy"
	"github.com/switchboard-go/switchboard/sidecar/proxy"
)

// Defaults fills every field left empty.
func (c *Config) Defaults() error {
	if len(c.Atlas) == 0 {
		c.Atlas = StringList{client.DefaultAtlasURL}
	}
	if c.Realm == "" {
		c.Realm = sb.DefaultRealm
	}
	if c.Host == "" {
		h, err := sb.Hostname()
		if err != nil {
			return fmt.Errorf("host: not set and os.Hostname failed: %w", err)
		}
		c.Host = h
	}
	if c.Advertise == "" {
		c.Advertise = firstAddress()
	}
	if c.Listen == "" {
		c.Listen = "127.0.0.1:4000"
	}
	if c.Admin == "" {
		c.Admin = "127.0.0.1:4001"
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = Duration(10 * time.Second)
	}
	if c.Proxy == "" {
		c.Proxy = "builtin"
	}
	return nil
}

// firstAddress is the address other hosts reach this one at, by default:
// the first global unicast IPv4 address of the host's interfaces, else the
// first global unicast IPv6 one (an IPv6-only host), else 127.0.0.1. A
// link-local address is never chosen: it names no one host off the link.
func firstAddress() string {
	addrs, _ := net.InterfaceAddrs()
	return pickAddress(addrs)
}

func pickAddress(addrs []net.Addr) string {
	var v6 string
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || !ipn.IP.IsGlobalUnicast() {
			continue
		}
		if ipn.IP.To4() != nil {
			return ipn.IP.String()
		}
		if v6 == "" {
			v6 = ipn.IP.String()
		}
	}
	return cmp.Or(v6, "127.0.0.1")
}

// Sidecar is a running sidecar.
type Sidecar struct {
	cfg   Config
	log   *slog.Logger
	atlas *client.Atlas
	table *proxy.Table
	m     *metrics
	state *stateFile

	// Addresses bound, known once Start returns.
	ListenAddr, AdminAddr string
	// TCPAddrs maps each L4 upstream to its bound address.
	TCPAddrs map[string]string

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// streams follows the services on Atlas's event streams, shared by
	// several where it can; regroupEvery is how often those on streams of
	// their own join the shared ones.
	streams      *streams
	regroupEvery time.Duration
	// upstream names the configured upstreams (pinned). Set by New.
	upstream map[string]bool
	// unreachable holds the services whose watch of Atlas is failing
	// (keys only): the sweep keeps them.
	unreachable sync.Map

	// ejectEnds holds, in haproxy mode, per service, the timer that hands
	// it to HAProxy when an ejection ends (armEjectEnd).
	ejectMu   sync.Mutex
	ejectEnds map[string]*time.Timer

	front *proxy.HTTP
	hap   atomic.Pointer[haproxy.Driver] // haproxy mode only
	// hapMus holds a mutex per service (keys never removed: one per
	// service asked for) that makes each hand-over to HAProxy (a service's
	// endpoints read and given, or its backend removed) one step: two
	// watch goroutines of one service, the dropped pool's and a new
	// one's, could otherwise hand over an older list last. One per service,
	// so that a service whose instance names take long to resolve holds
	// up no other.
	hapMus sync.Map
	// servedFailing: asking HAProxy what it served failed last time
	// (sweep goroutine only).
	servedFailing bool
	admin         *http.Server
	// ended says which serve loop stopped first, and why (nil: none).
	ended atomic.Pointer[string]
	// token: whether Atlas takes this sidecar's token.
	token tokenState
	// localBrowsers: LocalBrowsersOnly was called.
	localBrowsers bool
	// deniedLog spaces out the lines on services a policy does not allow.
	deniedLog sampled.Log
	// self: the addresses the sidecar listens on, set by Start before
	// any instance is known.
	self *selfAddrs
	// health is the admin port's checks; they fail once Shutdown begins.
	health     *health.Checker
	l4         []*proxy.TCP
	announcers []*announcer
	// announceCancel stops the announcers apart, before the drain.
	announceCancel context.CancelFunc
	announceWG     sync.WaitGroup
	// sweepEvery is how often services no call asked for are dropped
	// (after one to two of it unused).
	sweepEvery time.Duration
}

// ListenError is Start failing to listen on the address of a config key
// (listen or admin), so that a command can name its own flag instead.
type ListenError struct {
	Key string
	Err error
}

func (e *ListenError) Error() string { return e.Key + ": " + e.Err.Error() }
func (e *ListenError) Unwrap() error { return e.Err }

// New checks cfg (after Defaults) and prepares a sidecar; Start runs it.
func New(cfg Config, log *slog.Logger) (*Sidecar, error) {
	guessed := cfg.Advertise == ""
	if err := cfg.Defaults(); err != nil {
		return nil, err
	}
	if cfg.Proxy == "haproxy" {
		if cfg.HAProxy.Binary == "" {
			cfg.HAProxy.Binary = "haproxy"
		}
		if cfg.HAProxy.Dir == "" {
			if cfg.StateDir == "" {
				return nil, errors.New("haproxy.dir: required in haproxy mode (or state_dir, for STATE_DIR/haproxy)")
			}
			cfg.HAProxy.Dir = filepath.Join(cfg.StateDir, "haproxy")
		}
		if _, err := haproxy.CheckVersion(cfg.HAProxy.Binary); err != nil {
			return nil, err
		}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if guessed && len(cfg.Services) > 0 && net.ParseIP(cfg.Advertise).IsLoopback() {
		log.Warn("sidecar: this host has no global address: its services are announced at a loopback one, which only this host can reach; set advertise", "advertise", cfg.Advertise)
	}
	token := ""
	if cfg.TokenFile != "" {
		b, err := os.ReadFile(cfg.TokenFile)
		if err != nil {
			if cfg.tokenFileAt != "" {
				return nil, fmt.Errorf("%s: token_file: %w", cfg.tokenFileAt, err)
			}
			return nil, fmt.Errorf("token_file: %w", err)
		}
		if fi, err := os.Stat(cfg.TokenFile); err == nil && fi.Mode().Perm()&0o077 != 0 {
			log.Warn("sidecar: token_file can be read by other users; chmod 600 it", "token_file", cfg.TokenFile, "mode", fi.Mode().Perm().String())
		}
		token = strings.TrimSpace(string(b))
	}
	s := &Sidecar{
		cfg:          cfg,
		log:          log,
		atlas:        &client.Atlas{URLs: cfg.Atlas, Token: token},
		TCPAddrs:     map[string]string{},
		sweepEvery:   5 * time.Minute,
		regroupEvery: time.Minute,
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.m = newMetrics(s)
	s.table = &proxy.Table{Realm: cfg.Realm, OnNew: s.watch, Keep: s.isUnreachable, OnEject: func(service, id string) {
		s.m.ejections.WithLabelValues(service).Inc()
		s.log.Warn("sidecar: instance ejected after consecutive failures", "service", service, "id", id)
		s.ejected(service)
	}}
	s.table.MaxPools = MaxServices
	s.streams = newStreams(s)
	s.upstream = make(map[string]bool, len(cfg.Upstreams))
	for _, u := range cfg.Upstreams {
		s.upstream[u.Name] = true
	}
	if cfg.StateDir != "" {
		s.state = &stateFile{path: stateFilePath(cfg.StateDir), log: log}
	} else {
		log.Warn("sidecar: no state_dir: the last known routes are not kept, so a sidecar restarted while Atlas is down routes nothing until Atlas is back")
	}
	for _, sc := range cfg.Services {
		a, err := newAnnouncer(sc, cfg.Host, cfg.Advertise, cfg.Realm, s.atlas, log)
		if err != nil {
			return nil, err
		}
		a.token = &s.token
		s.announcers = append(s.announcers, a)
	}
	return s, nil
}

// LocalBrowsersOnly makes the frontend refuse browsers' requests from
// pages not of this machine (proxy.HTTP.LocalBrowsersOnly), as switchboard
// dev's sidecar does. Call it before Start.
func (s *Sidecar) LocalBrowsersOnly() { s.localBrowsers = true }

// SetToken sets the bearer token used with Atlas (instead of token_file).
// Call it before Start.
func (s *Sidecar) SetToken(token string) { s.atlas.Token = token }

// Start binds every listener, restores the last known routes, and starts
// announcing, watching and routing. It returns once everything listens.
// When it fails it leaves nothing running, and s cannot be started again.
func (s *Sidecar) Start() error {
	var lns []net.Listener
	// fail undoes what Start did so far: listeners, and the watches that
	// the restore and the upstreams started.
	fail := func(err error) error {
		for _, ln := range lns {
			ln.Close()
		}
		s.cancel()
		s.wg.Wait()
		return err
	}
	// In haproxy mode HAProxy owns the frontend and the L4 listeners; the
	// built-in proxy listens on a loopback port of its own, for the
	// services HAProxy does not route yet.
	frontAddr := s.cfg.Listen
	if s.cfg.Proxy == "haproxy" {
		frontAddr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", frontAddr)
	if err != nil {
		return fail(&ListenError{Key: "listen", Err: err})
	}
	lns = append(lns, ln)
	aln, err := net.Listen("tcp", s.cfg.Admin)
	if err != nil {
		return fail(&ListenError{Key: "admin", Err: err})
	}
	lns = append(lns, aln)
	type l4 struct {
		t  *proxy.TCP
		ln net.Listener
	}
	var tcps []l4
	tlns := map[string]net.Listener{}
	for _, u := range s.cfg.Upstreams {
		if u.Listen == "" || s.cfg.Proxy == "haproxy" {
			continue
		}
		tln, err := net.Listen("tcp", u.Listen)
		if err != nil {
			return fail(fmt.Errorf("upstreams %s: listen: %w", u.Name, err))
		}
		lns = append(lns, tln)
		tlns[u.Name] = tln
		s.TCPAddrs[u.Name] = tln.Addr().String()
	}
	s.ListenAddr, s.AdminAddr = ln.Addr().String(), aln.Addr().String()
	// What the sidecar (or its HAProxy) listens on is known before any
	// instance is: none pointing back at it is ever routed to.
	self := []string{s.ListenAddr, s.AdminAddr}
	if s.cfg.Proxy == "haproxy" {
		self = append(self, s.cfg.Listen)
	}
	for _, u := range s.cfg.Upstreams {
		if u.Listen != "" {
			self = append(self, u.Listen, s.TCPAddrs[u.Name])
		}
	}
	s.self = newSelfAddrs(self...)
	if s.state != nil {
		s.state.self = s.self
		if err := s.state.restore(s.table); err != nil {
			s.log.Warn("sidecar: last known routes not restored", "err", err)
		}
	}
	for _, u := range s.cfg.Upstreams {
		pool := s.table.Pin(u.Name) // watched from the start, and kept
		if tln := tlns[u.Name]; tln != nil {
			tcps = append(tcps, l4{&proxy.TCP{Pool: pool, Logger: s.log, Observe: s.m.observeTCP}, tln})
		}
	}
	// The upstreams and the restored services share event streams from
	// the start; services calls ask for join them later.
	s.streams.start()
	if s.cfg.Proxy == "haproxy" {
		tcp := map[string]string{}
		for _, u := range s.cfg.Upstreams {
			if u.Listen != "" {
				tcp[u.Name] = u.Listen
				s.TCPAddrs[u.Name] = u.Listen
			}
		}
		hap := &haproxy.Driver{Binary: s.cfg.HAProxy.Binary, Dir: s.cfg.HAProxy.Dir, Listen: s.cfg.Listen,
			Fallback: s.ListenAddr, Realm: s.cfg.Realm, TCP: tcp, Logger: s.log}
		if err := hap.Start(); err != nil {
			return fail(err)
		}
		s.hap.Store(hap)
		s.ListenAddr = s.cfg.Listen
		s.wg.Go(func() { s.watchOutliers(hap) })
		// All at once: a service whose instances' names do not resolve
		// (DNS down as well as Atlas) holds up its own hand-over for up
		// to 2 s, not every other one's.
		var wg sync.WaitGroup
		for _, p := range s.table.All() {
			wg.Go(func() { s.pushHAProxy(p.Service) })
		}
		wg.Wait()
	}

	s.front = &proxy.HTTP{Table: s.table, Logger: s.log, Observe: s.m.observeHTTP, LocalBrowsersOnly: s.localBrowsers}
	for _, t := range tcps {
		s.l4 = append(s.l4, t.t)
	}
	s.admin = &http.Server{Handler: s.adminHandler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.sweep(s.sweepEvery)
	}()
	s.goServe("frontend", func() error { return s.front.Serve(ln) })
	s.goServe("admin", func() error { return s.admin.Serve(aln) })
	for _, t := range tcps {
		s.goServe("l4 listener "+t.ln.Addr().String(), func() error { return t.t.Serve(t.ln) })
	}
	actx, acancel := context.WithCancel(s.ctx)
	s.announceCancel = acancel
	groups := map[time.Duration][]*announcer{}
	for _, a := range s.announcers {
		groups[a.interval] = append(groups[a.interval], a)
	}
	for interval, as := range groups {
		s.announceWG.Add(1)
		go func() {
			defer s.announceWG.Done()
			announceGroup(actx, interval, as, s.atlas, s.log)
		}()
	}
	if s.state != nil {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.state.run(s.ctx, s.table)
		}()
	}
	return nil
}

func (s *Sidecar) goServe(what string, serve func() error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := serve(); err != nil && !errors.Is(err, http.ErrServerClosed) && s.ctx.Err() == nil {
			s.log.Error("sidecar: "+what+" stopped", "err", err)
			ended := fmt.Sprintf("%s stopped: %v", what, err)
			s.ended.CompareAndSwap(nil, &ended)
		}
	}()
}

// Run starts the sidecar and serves until ctx ends, then shuts down in
// order: drain this host's instances (disabled, confirmed by Atlas's
// watchers, at most drain_timeout), deregister them, stop routing.
func (s *Sidecar) Run(ctx context.Context) error {
	if err := s.Start(); err != nil {
		return err
	}
	atlas := make([]string, len(s.cfg.Atlas))
	for i, u := range s.cfg.Atlas {
		atlas[i] = client.RedactURL(u)
	}
	s.log.Info("sidecar: running", "listen", s.ListenAddr, "admin", s.AdminAddr, "realm", s.cfg.Realm, "atlas", strings.Join(atlas, ","))
	<-ctx.Done()
	return s.Shutdown()
}

// Shutdown drains and deregisters this host's instances, then stops every
// listener and goroutine. It keeps routing while it drains, so that calls
// from this host go on meanwhile.
func (s *Sidecar) Shutdown() error {
	// /readyz and /healthcheck say so from now: whatever watches this
	// sidecar learns it is going before its frontend closes.
	if s.health != nil {
		s.health.SetDraining(true)
	}
	if s.announceCancel != nil {
		s.announceCancel()
		s.announceWG.Wait()
	}
	var wg sync.WaitGroup
	for _, a := range s.announcers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.drain(context.Background(), time.Duration(s.cfg.DrainTimeout))
		}()
	}
	wg.Wait()
	s.cancel()
	s.stopEjectEnds()
	if s.front != nil {
		// Calls in flight get drain_timeout more, as the kit's requests do.
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(s.cfg.DrainTimeout))
		_ = s.front.ShutdownContext(ctx)
		cancel()
	}
	if s.admin != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = s.admin.Shutdown(sctx)
		cancel()
	}
	for _, t := range s.l4 {
		t.Close()
	}
	if hap := s.hap.Load(); hap != nil {
		hap.Close()
	}
	s.wg.Wait()
	if s.state != nil {
		s.state.save(s.table)
	}
	return nil
}

// localServices names this host's services, for messages.
func (s *Sidecar) localServices() string {
	var names []string
	for _, a := range s.announcers {
		if !slices.Contains(names, a.reg.Service) {
			names = append(names, a.reg.Service)
		}
	}
	switch len(names) {
	case 0:
		return "this host"
	case 1:
		return "service " + names[0]
	}
	return "services " + strings.Join(names, ", ")
}

// pushHAProxy hands a service's instances to HAProxy, in haproxy mode.
func (s *Sidecar) pushHAProxy(service string) {
	hap := s.hap.Load()
	if hap == nil {
		return
	}
	mu := s.hapMu(service)
	mu.Lock()
	defer mu.Unlock()
	p := s.table.Lookup(service)
	if p == nil {
		return
	}
	if p.Denied() != nil {
		// A policy forbids the call: HAProxy stops routing it now (its
		// slots to maintenance), and the sidecar's own frontend, which
		// answers 403, takes the service back at the next reload.
		hap.Update(service, false, nil)
		hap.Remove(service)
		if _, ok := s.TCPAddrs[service]; ok {
			hap.Update(service, true, nil)
		}
		return
	}
	hap.Update(service, false, p.Endpoints())
	if _, ok := s.TCPAddrs[service]; ok {
		hap.Update(service, true, p.Endpoints())
	}
}

// hapMu is the mutex of service's hand-overs to HAProxy (hapMus).
func (s *Sidecar) hapMu(service string) *sync.Mutex {
	mu, _ := s.hapMus.LoadOrStore(service, new(sync.Mutex))
	return mu.(*sync.Mutex)
}

// HAProxy returns the HAProxy driver in haproxy mode, else nil.
func (s *Sidecar) HAProxy() *haproxy.Driver { return s.hap.Load() }

// watch is the table's OnNew: every service is followed on Atlas's event
// stream (streams). A configured upstream is pinned: never dropped.
func (s *Sidecar) watch(pool *balance.Pool) (stop func()) {
	s.streams.add(pool)
	if s.upstream[pool.Service] {
		return nil
	}
	return func() { s.streams.drop(pool) }
}

// apply puts an event of Atlas's into the service's pool.
func (s *Sidecar) apply(pool *balance.Pool, ev client.Event) {
	s.token.note(nil)
	s.unreachable.Delete(pool.Service)
	for _, e := range pool.Update(s.self.leaveOut(ev.Service.Instances, s.log), ev.Service.Index) {
		proxy.CloseEndpoint(e)
	}
	s.m.applied(pool.Service, ev.Service.Index)
	s.pushHAProxy(pool.Service)
	s.saveState()
}

// goFollow runs followIn in a goroutine of the sidecar's; the channel is
// closed when it has returned.
func (s *Sidecar) goFollow(ctx context.Context, pool *balance.Pool, heard *atomic.Bool) <-chan struct{} {
	done := make(chan struct{})
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(done)
		s.followIn(ctx, pool, heard)
	}()
	return done
}

// followIn follows one service's instances from Atlas's event stream into
// its pool, until ctx ends; it reconnects with backoff, resuming from the
// last event. heard is set once Atlas has answered (instances, or a
// refusal). With errDropped as ctx's cause, the pool is closed as a
// dropped one.
func (s *Sidecar) followIn(ctx context.Context, pool *balance.Pool, heard *atomic.Bool) {
	service := pool.Service
	defer func() {
		if context.Cause(ctx) == errDropped {
			s.dropped(pool)
		}
	}()
	var warned failureLog
	defer s.unreachable.Delete(service)
	s.atlas.Follow(ctx, s.cfg.Realm, []string{service}, func(ev client.Event) {
		warned.ok()
		s.apply(pool, ev)
		heard.Store(true)
	}, func(err error, retryIn time.Duration) {
		s.token.note(err)
		switch code := sb.ErrorCode(err); code {
		case sb.EPermissionDenied, sb.EUnauthenticated:
			heard.Store(true)
			// Least authority: Atlas lets this host's token watch only
			// what its services may call. Calls get 403 naming both.
			// Atlas answered: nothing is kept for it, and it is swept
			// when unused, like any other name. A 401 says the token
			// was deleted (or is not valid): the host may call nothing
			// until it has one Atlas takes. A running Atlas that lost
			// its tokens does not start, so it is a revocation, not a
			// fault to ride out on the last known instances.
			why := "no policy allows it"
			if code == sb.EUnauthenticated {
				why = "Atlas does not take this sidecar's token (deleted, or not valid)"
			}
			pool.Deny(sb.Errorf(sb.EPermissionDenied, "%s may not call service %s in realm %s: %s (%s)",
				s.localServices(), service, s.cfg.Realm, why, sb.ErrorMessage(err)))
			s.unreachable.Delete(service)
			s.pushHAProxy(service)
			s.saveState()
		default:
			s.unreachable.Store(service, true)
		}
		s.m.watchErrors.WithLabelValues(service).Inc()
		// A stream that fails keeps the last known instances: routing
		// goes on (static stability). The same failure is logged once.
		if warned.failed(err) {
			switch sb.ErrorCode(err) {
			case sb.EPermissionDenied:
				// Any process on the host may name services: one line
				// per name would let it fill the log.
				if ok, skipped := s.deniedLog.Allow(time.Now()); ok {
					s.log.Warn("sidecar: Atlas refuses this host's token a watch of the service; calls to it get 403 (a policy must allow it)", "service", service, "err", err, "retry_in", retryIn.String(), "other_services_not_logged", skipped)
				}
			case sb.EUnauthenticated:
				s.log.Error("sidecar: Atlas does not take this sidecar's token (deleted, or not valid); calls to the service get 403 until the sidecar is restarted with a token it takes (token_file is read at start)", "service", service, "err", err, "retry_in", retryIn.String())
			default:
				s.log.Warn("sidecar: watching Atlas failed; keeping the last known instances", "service", service, "err", err, "retry_in", retryIn.String())
			}
		}
	}, client.OnOpen(func() {
		// Atlas answers: a stream resumed with nothing new brings no
		// event, yet the service is reachable again (and may be swept).
		s.unreachable.Delete(service)
	}))
}

// dropped closes the pool of a service the table dropped, once no event
// reaches it any more: its instances as removed ones are (idle
// connections at once, those in use when their request ends), and its
// series leave /metrics and its backend HAProxy, unless a call has asked
// for the service again since (the new pool's series are the same, and so
// is its HAProxy backend).
func (s *Sidecar) dropped(pool *balance.Pool) {
	service := pool.Service
	for _, e := range pool.Endpoints() {
		proxy.CloseEndpoint(e)
	}
	if s.table.Lookup(service) == nil {
		s.m.forget(service)
	}
	if hap := s.hap.Load(); hap != nil {
		mu := s.hapMu(service)
		mu.Lock()
		if s.table.Lookup(service) == nil {
			hap.Remove(service)
		}
		mu.Unlock()
	}
}

// saveState has the last known routes saved (state_dir), if kept.
func (s *Sidecar) saveState() {
	if s.state != nil {
		s.state.dirty()
	}
}

// MaxServices bounds the services a sidecar follows because calls asked
// for them, configured upstreams aside: past it, a new name replaces a
// service with no instance or one not called in the last sweep interval,
// or gets 503 (proxy.Table.MaxPools). In haproxy mode, HAProxy drops the
// backend of a service the sidecar stops following at its next reload.
const MaxServices = 1000

// isUnreachable reports whether service's watch is failing for want of
// Atlas (proxy.Table.Keep): its last known instances are kept.
func (s *Sidecar) isUnreachable(service string) bool {
	_, failing := s.unreachable.Load(service)
	return failing
}

// errDropped ends the watch of a service the table dropped.
var errDropped = errors.New("sidecar: no call asked for the service")

// sweep drops, every interval, the services no call has asked for in the
// last one or two intervals: it stops following them and forgets their
// metrics. Configured upstreams are kept, and so are services whose watch
// is failing: their last known instances are all there is to route to
// while Atlas cannot be reached (static stability), also for a service
// called once an hour.
func (s *Sidecar) sweep(interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	// In haproxy mode the calls HAProxy routes never reach the table:
	// HAProxy is asked which services it served, often enough that the
	// bound (MaxServices) counts them as used too.
	every := min(interval, 10*time.Second)
	var touch <-chan time.Time
	if s.hap.Load() != nil {
		tt := time.NewTicker(every)
		defer tt.Stop()
		touch = tt.C
	}
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-touch:
			s.touchServed(every)
			continue
		case <-t.C:
		}
		if !s.touchServed(every) {
			continue // not knowing what HAProxy served, drop nothing
		}
		for _, name := range s.table.Sweep() {
			s.log.Info("sidecar: stopped following a service no call asked for", "service", name, "idle", interval.String())
		}
		// The sweep cleared every mark: those HAProxy serves are marked
		// again at once, or the bound could take one of them for unused
		// until the next touch.
		s.touchServed(every)
	}
}

// touchServed marks, in haproxy mode, the services HAProxy served in the
// last interval (and a second, HAProxy counting in seconds) as used. It
// reports false when HAProxy could not say.
func (s *Sidecar) touchServed(interval time.Duration) bool {
	hap := s.hap.Load()
	if hap == nil {
		return true
	}
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	names, err := hap.Called(ctx, interval+time.Second)
	if err != nil {
		// Logged once until it answers again: HAProxy restarting is
		// asked every 10 s.
		if !s.servedFailing {
			s.log.Warn("sidecar: asking HAProxy which services it served failed; no service is dropped until it answers", "err", err)
		}
		s.servedFailing = true
		return false
	}
	s.servedFailing = false
	for _, name := range names {
		s.table.Touch(name)
	}
	return true
}

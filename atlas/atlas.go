// Package atlas is the Switchboard registry and config server: instances
// with leases, services with status, layered config with provenance,
// blocking queries that wake only when their own answer changes, a
// Server-Sent Events stream, tokens and call policies.
//
// Atlas keeps all of its state in memory, built from a Store and kept
// current from the Store's change stream; every read is served from memory
// and every write goes through the Store first.
package atlas

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/health"
	"github.com/switchboard-go/switchboard/internal/sampled"
)

// Config configures a Server. Every field but Store has a useful zero value.
type Config struct {
	// Store holds the state. Required.
	Store Store
	// DataDir is where the admin token is written on first start
	// (DataDir/admin.token, mode 0600). Empty means no bootstrap token.
	DataDir string
	// Insecure turns authentication off: every call may do everything.
	// A browser's request from a page Atlas did not serve is then refused
	// (refuseBrowsers).
	Insecure bool
	// LoopbackHosts, for an Atlas without auth that listens on loopback
	// (switchboard dev), answers only requests whose Host is an IP
	// address or a localhost name: a page whose name an attacker points
	// at 127.0.0.1 (DNS rebinding) is refused.
	LoopbackHosts bool
	// PortMin and PortMax bound the ports POST /v1/services/{name}/port
	// gives out. Zero means 5000-5999.
	PortMin, PortMax int
	// Logger receives the server's log. Nil discards.
	Logger *slog.Logger
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
	// OutputInterval is how often a change of check output alone is
	// published. Zero means one minute.
	OutputInterval time.Duration
}

// Server is a running Atlas.
type Server struct {
	cfg   Config
	store Store
	st    *state
	log   *slog.Logger
	// writeLog spaces out the lines of logWriteFailure.
	writeLog sampled.Log
	metrics  *metrics
	handler  http.Handler
	cache    renderCache
	streams  streams
	health   *health.Checker
	started  time.Time

	ctx    context.Context
	cancel context.CancelFunc
	// waits ends blocking queries and event streams (StopWaiting).
	waits    context.Context
	endWaits context.CancelFunc
	wg       sync.WaitGroup
	once     sync.Once

	// staleSince is when the store stopped answering (unix nanoseconds;
	// 0 while it answers): reads are then served from memory, marked
	// stale.
	staleSince atomic.Int64
	// staleWhy is the store's last error while stale (probe).
	staleWhy atomic.Pointer[string]
	// epoch ends blocking queries and event streams, at StopWaiting and
	// when the store stops answering; a new one begins when it answers
	// again (epochMu guards both).
	epochMu  sync.Mutex
	epoch    context.Context
	endEpoch context.CancelFunc

	// syncMu guards asking, the question to the store for its index
	// being asked, and queued, the one to ask next (storeIndex).
	syncMu         sync.Mutex
	asking, queued *indexFlight

	// lmu guards the fields of every leaseInfo (in the state's instance
	// records): lease bookkeeping that lives in memory, per replica, and
	// is never written to the store. Take it after st.mu, never before.
	lmu sync.Mutex
}

// New loads the store's state and starts following its changes. Close
// stops it.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("atlas: store required")
	}
	if cfg.PortMin == 0 && cfg.PortMax == 0 {
		cfg.PortMin, cfg.PortMax = 5000, 5999
	}
	if cfg.PortMin < 1 || cfg.PortMax > 65535 || cfg.PortMin > cfg.PortMax {
		return nil, fmt.Errorf("atlas: ports: must be a range within 1-65535, got %d-%d", cfg.PortMin, cfg.PortMax)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.OutputInterval == 0 {
		cfg.OutputInterval = time.Minute
	}
	s := &Server{
		cfg:     cfg,
		store:   cfg.Store,
		st:      newState(),
		log:     cfg.Logger,
		started: cfg.Now(),
	}
	s.st.onDamaged = func(key, rule string) {
		s.log.Warn("atlas: a stored entry is not a valid record; it is left out of every answer until written again", "key", key, "err", rule)
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.waits, s.endWaits = context.WithCancel(s.ctx)
	s.epoch, s.endEpoch = context.WithCancel(s.waits)
	if err := s.reload(s.ctx); err != nil {
		return nil, err
	}
	s.metrics = newMetrics(s)
	s.health = s.newHealth()
	s.handler = s.routes()
	s.wg.Add(2)
	go s.follow()
	go s.probe()
	if !cfg.Insecure && cfg.DataDir != "" {
		if err := s.bootstrap(s.ctx); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// StopWaiting answers every blocking query now and ends every event
// stream, so that an http.Server's Shutdown need not wait minutes for them.
// Call it before Shutdown; the API keeps working otherwise.
func (s *Server) StopWaiting() { s.endWaits() }

// Close stops following the store. It does not close the store.
func (s *Server) Close() error {
	s.once.Do(func() {
		s.cancel()
		s.wg.Wait()
	})
	return nil
}

// Handler returns the HTTP API.
func (s *Server) Handler() http.Handler { return s.handler }

// HTTPServer returns an http.Server for the API with timeouts that keep a
// slow client from holding a connection: headers in 10 s, the body in 30 s,
// the answer in 30 s except for blocking queries and the event stream,
// which set their own deadlines. Serve it on Listener(ln) for answers in
// one write each.
func (s *Server) HTTPServer() *http.Server {
	return &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ConnContext:       connContext,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
}

// reload replaces the state with a fresh snapshot.
func (s *Server) reload(ctx context.Context) error {
	index, kvs, err := s.store.Snapshot(ctx)
	if err != nil {
		return fmt.Errorf("atlas: load: %w", err)
	}
	s.st.load(index, kvs)
	return nil
}

// follow applies the store's changes until Close.
func (s *Server) follow() {
	defer s.wg.Done()
	backoff := 100 * time.Millisecond
	for s.ctx.Err() == nil {
		s.st.mu.RLock()
		after := s.st.applied
		s.st.mu.RUnlock()
		ch, err := s.store.Watch(s.ctx, after)
		if errors.Is(err, ErrCompacted) {
			err = s.reload(s.ctx)
		}
		if err != nil {
			if s.ctx.Err() == nil {
				s.log.Warn("atlas: watching the store failed; retrying", "err", err, "in", backoff)
			}
			select {
			case <-s.ctx.Done():
			case <-time.After(backoff + rand.N(backoff/2)):
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		if ch == nil {
			continue
		}
		backoff = 100 * time.Millisecond
		// Apply what the store has sent so far together (a batch it
		// committed in one transaction, say), then wait for more.
		batch := make([]Change, 0, 64)
		for c := range ch {
			batch = append(batch[:0], c)
		more:
			for len(batch) < cap(batch) {
				select {
				case c, ok := <-ch:
					if !ok {
						break more
					}
					batch = append(batch, c)
				default:
					break more
				}
			}
			s.st.apply(batch...)
		}
	}
}

// StaleHeader marks answers served from memory while the store does not
// answer: its value is when the store stopped answering (RFC 3339).
const StaleHeader = "Switchboard-Stale"

// probe pings the store every second; while it fails, reads carry
// StaleHeader (they are deliberate stale reads, which keep sidecars
// routing), /v1/health fails and, over a replicated store, what waits for
// changes ends (waitCtx).
func (s *Server) probe() {
	defer s.wg.Done()
	p, ok := s.store.(Pinger)
	if !ok {
		return
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(s.ctx, 2*time.Second)
		err := p.Ping(ctx)
		cancel()
		if err != nil {
			why := err.Error()
			s.staleWhy.Store(&why)
		}
		switch {
		case err != nil && s.staleSince.Load() == 0:
			s.staleSince.Store(time.Now().UnixNano())
			if s.replicated() {
				s.epochMu.Lock()
				s.endEpoch()
				s.epochMu.Unlock()
				s.log.Error("atlas: the store does not answer, or fails its check (err says which); serving reads from memory, marked stale, and ending event streams and blocking queries, for their clients to ask another replica", "err", err)
				break
			}
			s.log.Error("atlas: the store does not answer, or fails its check (err says which); serving reads from memory, marked stale", "err", err)
		case err == nil && s.staleSince.Load() != 0:
			if s.replicated() {
				s.epochMu.Lock()
				s.epoch, s.endEpoch = context.WithCancel(s.waits)
				s.epochMu.Unlock()
			}
			s.staleSince.Store(0)
			s.log.Info("atlas: the store answers again")
		}
	}
}

// replicated reports whether other servers write to the store too (etcd).
func (s *Server) replicated() bool {
	_, ok := s.store.(Syncer)
	return ok
}

// waitCtx returns the context that ends blocking queries and event
// streams: at StopWaiting, and, with a replicated store, when the store
// stops answering, as this server can then no longer tell what changes (a
// client with several replicas asks another; one with this one alone
// keeps what it has). The embedded store's memory is the truth, whether
// its disk takes writes or not: there, they go on.
func (s *Server) waitCtx() context.Context {
	s.epochMu.Lock()
	defer s.epochMu.Unlock()
	return s.epoch
}

// refuseWhileStale refuses what would wait for changes while a replicated
// store does not answer.
func (s *Server) refuseWhileStale() error {
	if since := s.Stale(); !since.IsZero() && s.replicated() {
		return sb.Errorf(sb.EUnavailable, "this Atlas has not reached its store since %s, so it cannot tell what changes: ask another replica, or retry", since.UTC().Format(time.RFC3339))
	}
	return nil
}

// Stale returns when the store stopped answering, or the zero time.
func (s *Server) Stale() time.Time {
	if n := s.staleSince.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// catchUp waits, catchUpWait at most, until memory holds every write the
// store had when asked (see Syncer), so that "not found" is not said of
// what another replica wrote an instant ago: an instance registered, a
// token created. With a store that has no other writers, memory is caught
// up always; while the store does not answer, it fails at once.
func (s *Server) catchUp(ctx context.Context) error {
	sy, ok := s.store.(Syncer)
	if !ok {
		return nil
	}
	if !s.Stale().IsZero() {
		return sb.Errorf(sb.EUnavailable, "the store does not answer, so Atlas cannot tell whether it exists; retry")
	}
	ctx, cancel := context.WithTimeout(ctx, catchUpWait)
	defer cancel()
	f := s.storeIndex(sy)
	select {
	case <-f.done:
	case <-ctx.Done():
		return sb.Errorf(sb.EUnavailable, "the store did not answer in time, so Atlas cannot tell whether it exists; retry")
	}
	if f.err != nil {
		return sb.Errorf(sb.EUnavailable, "the store does not answer, so Atlas cannot tell whether it exists; retry")
	}
	if s.waitApplied(ctx, f.index) != nil {
		return sb.Errorf(sb.EUnavailable, "this Atlas is behind its store, so it cannot tell whether it exists; retry")
	}
	return nil
}

// indexFlight is one question to the store for its current index, which
// every catchUp that joins it shares.
type indexFlight struct {
	done  chan struct{}
	index uint64
	err   error
}

// storeIndex returns a question for the store's current index that is
// asked after this call began: the one waiting to be asked, when one is
// being asked now (its answer may predate what the caller looks for), or
// a new one. So at most two are out at once, however many callers.
func (s *Server) storeIndex(sy Syncer) *indexFlight {
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	switch {
	case s.asking == nil:
		s.asking = &indexFlight{done: make(chan struct{})}
		go s.askIndex(sy, s.asking)
		return s.asking
	case s.queued == nil:
		s.queued = &indexFlight{done: make(chan struct{})}
	}
	return s.queued
}

// askIndex asks the store for f, then for the question queued meanwhile,
// if any, and so on.
func (s *Server) askIndex(sy Syncer, f *indexFlight) {
	for f != nil {
		ctx, cancel := context.WithTimeout(s.ctx, catchUpWait)
		f.index, f.err = sy.CurrentIndex(ctx)
		cancel()
		close(f.done)
		s.syncMu.Lock()
		f = s.queued
		s.asking, s.queued = f, nil
		s.syncMu.Unlock()
	}
}

// found runs exists, and when it reports false, catches up with the store
// (catchUp) and runs it again: what another replica wrote an instant ago
// is then found.
func (s *Server) found(ctx context.Context, exists func() bool) (bool, error) {
	if exists() {
		return true, nil
	}
	if !s.replicated() {
		return false, nil
	}
	if err := s.catchUp(ctx); err != nil {
		return false, err
	}
	return exists(), nil
}

// waitApplied waits until the change at index is in memory, so that a
// client reads its own writes.
func (s *Server) waitApplied(ctx context.Context, index uint64) error {
	for {
		ch := s.st.appliedChan()
		s.st.mu.RLock()
		done := s.st.applied >= index
		s.st.mu.RUnlock()
		if done {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return sb.Errorf(sb.EUnavailable, "the write was stored but is not yet visible here; retry the read")
		case <-s.ctx.Done():
			return sb.Errorf(sb.EUnavailable, "atlas is shutting down")
		}
	}
}

// logWriteFailure logs a write the store refused (etcd without space or
// quorum, a disk that fails), at most once every sampled.Every.
func (s *Server) logWriteFailure(err error) {
	if ok, skipped := s.writeLog.Allow(time.Now()); ok {
		s.log.Error("atlas: the store refused a write; answered 503", "err", err, "not_logged_since", skipped)
	}
}

// txn writes ops and waits until the write is visible in memory.
func (s *Server) txn(ctx context.Context, ops ...Op) (uint64, error) {
	index, err := s.store.Txn(ctx, ops)
	if err != nil {
		if errors.Is(err, ErrConflict) {
			return 0, err
		}
		if errors.Is(err, ErrUnavailable) {
			// Not the store's own words in the answer: they may name
			// files on the server. In the log, where the answer says.
			s.logWriteFailure(err)
			return 0, sb.Errorf(sb.EUnavailable, "the store is unavailable (etcd without quorum, or a local store that cannot write; Atlas's log says which): the write may not have been made; retry")
		}
		if errors.Is(err, ErrClosed) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return 0, sb.Errorf(sb.EUnavailable, "the store did not take the write: %v", err)
		}
		return 0, fmt.Errorf("atlas: write: %w", err)
	}
	s.metrics.writes.Inc()
	return index, s.waitApplied(ctx, index)
}

// bootstrap creates the admin token on first start and writes it to
// DataDir/admin.token.
func (s *Server) bootstrap(ctx context.Context) error {
	path := filepath.Join(s.cfg.DataDir, "admin.token")
	pending := path + ".new" // written before the store holds the token
	_, statErr := os.Stat(path)
	s.st.mu.RLock()
	if t, ok := s.st.tokens[pendingID(pending)]; ok && t.Role == sb.RoleAdmin && statErr != nil {
		s.st.mu.RUnlock()
		// The last start stopped between the store's write and the
		// rename: finish it.
		if err := os.Rename(pending, path); err != nil {
			return fmt.Errorf("atlas: bootstrap token: %w", err)
		}
		s.log.Info("atlas: created the admin token", "path", path)
		return nil
	}
	for _, t := range s.st.tokens {
		if t.Role == sb.RoleAdmin {
			s.st.mu.RUnlock()
			if statErr == nil {
				s.log.Info("atlas: admin token file exists", "path", path)
			} else {
				// Atlas replicas over etcd share one store: the first wrote
				// its file; the others have none, as they should. Deleting
				// the store, advice for one Atlas, would wipe them all.
				s.log.Warn("atlas: the store holds an admin token, but this file is missing: use the one written at the first start (with etcd, in the data directory of the replica that started first)", "path", path)
			}
			return nil
		}
	}
	booted := s.st.booted
	s.st.mu.RUnlock()
	// A store that was started on and has no admin token left had them
	// all deleted. One never started on, where a file names an admin
	// token, is a store whose data is gone: starting would serve an empty
	// registry (every service, token, policy and config layer lost) as if
	// new, and every sidecar's token would be refused from then on.
	if booted {
		s.log.Warn("atlas: the store holds no admin token any more (every one was deleted), so no call may create tokens or policies; start Atlas once with --insecure to create one (switchboard token create --role admin)")
		return nil
	}
	if statErr == nil {
		return fmt.Errorf("atlas: %s names an admin token that the store does not hold: the store's data is gone (an empty or replaced atlas.db, a botched restore, a new etcd cluster). Restore the data; to start afresh on purpose, delete %s too", path, path)
	}
	tok, rec, err := newToken(sb.TokenRequest{Name: "bootstrap admin", Role: sb.RoleAdmin}, s.cfg.Now())
	if err != nil {
		return err
	}
	// The secret reaches the disk before the store holds the token: the
	// other way round, a crash (or a failed write) between the two left
	// an admin token whose secret nobody has.
	if err := os.MkdirAll(s.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("atlas: bootstrap token: %w", err)
	}
	if err := writeSynced(pending, []byte(tok+"\n")); err != nil {
		return fmt.Errorf("atlas: bootstrap token: %w", err)
	}
	val, _ := jsonMarshal(rec)
	_, err = s.txn(ctx,
		Op{Key: keyBoot, Value: []byte(`"` + rec.ID + `"`), IfIndex: IfIndex(0)},
		Op{Key: pfxToken + rec.ID, Value: val, IfIndex: IfIndex(0)})
	if errors.Is(err, ErrConflict) {
		os.Remove(pending)
		s.log.Info("atlas: another replica created the admin token: admin.token is in the data directory of the replica that started first")
		return nil
	}
	if err != nil {
		// Kept: a write that failed to answer (etcd's deadline, say)
		// may have been made, and the next start then finishes it.
		return fmt.Errorf("atlas: bootstrap token: %w", err)
	}
	if err := os.Rename(pending, path); err != nil {
		return fmt.Errorf("atlas: bootstrap token: %w", err)
	}
	s.log.Info("atlas: created the admin token", "path", path)
	return nil
}

// pendingID returns the id of the token in the file at path, or "".
func pendingID(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	rest, _ := strings.CutPrefix(strings.TrimSpace(string(b)), tokenPrefix)
	id, _, ok := strings.Cut(rest, ".")
	if !ok {
		return ""
	}
	return id
}

// writeSynced writes data to a new file at path (0600), synced, and syncs
// its directory.
func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err = f.Write(data); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// handleHealth serves GET /v1/health: Atlas's own healthcheck JSON.
func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) error {
	s.health.ServeHTTP(w, r)
	return nil
}

// Pinger is implemented by stores that can tell cheaply whether they
// answer.
type Pinger interface {
	Ping(ctx context.Context) error
}

func (s *Server) newHealth() *health.Checker {
	h := &health.Checker{Timeout: 5 * time.Second, FailedStatus: http.StatusServiceUnavailable}
	_ = h.Add("store", func(ctx context.Context) (string, error) {
		if since := s.Stale(); !since.IsZero() {
			why := "not answering"
			if w := s.staleWhy.Load(); w != nil {
				why = *w
			}
			return "", fmt.Errorf("store: failing since %s (%s); reads are stale", since.UTC().Format(time.RFC3339), why)
		}
		if p, ok := s.store.(Pinger); ok {
			if err := p.Ping(ctx); err != nil {
				return "", fmt.Errorf("store: %w", err)
			}
		}
		s.st.mu.RLock()
		defer s.st.mu.RUnlock()
		return fmt.Sprintf("store ok, index %d, %d instances", s.st.applied, len(s.st.instances)), nil
	})
	return h
}

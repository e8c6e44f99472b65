// Package etcdstore is Atlas's store on an etcd cluster, for several Atlas
// replicas that serve one truth: the index is etcd's revision, conditions
// are etcd transactions, leases are etcd leases (owned by the cluster: an
// instance registered through a replica that dies still expires on time,
// and a heartbeat may go to any replica), and every replica follows the
// changes through an etcd watch.
package etcdstore

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/switchboard-go/switchboard/atlas"
)

// Config configures a Store. Endpoints is required.
type Config struct {
	// Endpoints are the etcd members' client URLs.
	Endpoints []string
	// Prefix is put before every key. Empty means "/switchboard/".
	Prefix string
	// Timeout bounds each etcd call. Zero means 5 s.
	Timeout time.Duration
	// Logger; nil discards.
	Logger *slog.Logger
	// TLS, when set, is used for every connection to etcd (the endpoints
	// are then https:// URLs): the CA to trust and, for etcd's
	// --client-cert-auth, the client certificate.
	TLS *tls.Config
}

// Store implements atlas.Store on etcd.
type Store struct {
	cfg    Config
	cli    *clientv3.Client
	prefix string
	once   sync.Once
	renew  *renewer
	pool   *leasePool

	// bgMu guards adding to bg once bgCtx has ended (Close).
	bgMu   sync.Mutex
	bg     sync.WaitGroup // background revokes
	bgCtx  context.Context
	bgStop context.CancelFunc

	// mu guards leases and watched.
	mu sync.Mutex
	// leases is the etcd lease of each leased key, learnt from snapshots,
	// watches and this replica's own writes.
	leases map[string]leaseEntry
	// watched is the highest revision applied from a watch: what a write
	// or a read at or below it says is already known, or older.
	watched int64
	// live is the newest watch still open; silent is set from when one
	// went silent until a watch is heard from again (checkWatch).
	live   *watchLife
	silent bool
	// progress: how etcd answers requests for progress (checkWatch).
	progress progressState
	// highest is the highest revision etcd has shown this store (a
	// snapshot's, a watch's); went, once etcd's revision went below it
	// (checkRevision).
	highest int64
	went    error

	// deaf, set by tests, makes watches drop what etcd sends, as a stream
	// cut off without a word does; noProgress drops progress
	// notifications alone, as etcd's gRPC proxy does.
	deaf, noProgress atomic.Bool
}

// leaseEntry is what a replica knows of a key's lease.
type leaseEntry struct {
	id  clientv3.LeaseID
	rev int64 // of the write that gave the key this lease
	// expires is when the lease runs out as far as this replica knows
	// (Unix nanoseconds; 0: not known).
	expires int64
}

// noteLeaseLocked records that the write at rev gave key the lease id (0:
// none, or deleted), unless something newer is known already: a replica's
// own write answered late, or a read, must not undo what the watch applied
// after it (the cache would then renew a lease the key no longer has).
// fromWatch is set for changes applied in revision order from a watch.
func (s *Store) noteLeaseLocked(key string, id clientv3.LeaseID, rev int64, ttl time.Duration, fromWatch bool) {
	if !fromWatch && rev <= s.watched {
		return
	}
	if cur, ok := s.leases[key]; ok && rev < cur.rev {
		return
	}
	if id == 0 {
		delete(s.leases, key)
		return
	}
	e := leaseEntry{id: id, rev: rev}
	if ttl > 0 {
		e.expires = time.Now().Add(ttl).UnixNano()
	}
	s.leases[key] = e
}

var _ atlas.Store = (*Store)(nil)

// Open connects to etcd and checks that it answers.
func Open(cfg Config) (*Store, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcdstore: no endpoints")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "/switchboard/"
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	dial := func(endpoints ...string) (*clientv3.Client, error) {
		return clientv3.New(clientv3.Config{
			Endpoints:            endpoints,
			DialTimeout:          cfg.Timeout,
			DialKeepAliveTime:    5 * time.Second,
			DialKeepAliveTimeout: 5 * time.Second,
			Logger:               zap.NewNop(), // errors come back to the caller
			TLS:                  cfg.TLS,
		})
	}
	cli, err := dial(cfg.Endpoints...)
	if err != nil {
		return nil, fmt.Errorf("etcdstore: %w", err)
	}
	s := &Store{cfg: cfg, cli: cli, prefix: cfg.Prefix, leases: map[string]leaseEntry{},
		renew: newRenewer(cli, func(ep string) (*clientv3.Client, error) { return dial(ep) })}
	s.pool = newLeasePool(s.grant)
	s.bgCtx, s.bgStop = context.WithCancel(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
	defer cancel()
	if _, err := cli.Get(ctx, s.prefix, clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil {
		s.bgStop()
		s.pool.close()
		cli.Close()
		return nil, unavailable("connect to "+strings.Join(cfg.Endpoints, ","), err)
	}
	return s, nil
}

// grant grants a lease of secs seconds.
func (s *Store) grant(ctx context.Context, secs int64) (clientv3.LeaseID, error) {
	l, err := s.cli.Grant(ctx, secs)
	if err != nil {
		return 0, err
	}
	return l.ID, nil
}

// Close closes the etcd client. It is safe to call more than once.
func (s *Store) Close() error {
	var err error
	s.once.Do(func() {
		s.bgMu.Lock()
		s.bgStop()
		s.bgMu.Unlock()
		s.bg.Wait()
		s.pool.close()
		s.renew.close()
		err = s.cli.Close()
	})
	return err
}

// unavailable wraps an etcd error so that Atlas answers 503.
func unavailable(what string, err error) error {
	return fmt.Errorf("%w: etcd: %s: %v", atlas.ErrUnavailable, what, err)
}

func (s *Store) ctx(parent context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(parent, s.cfg.Timeout)
}

// A value in etcd is the TTL in nanoseconds (8 bytes), then the payload.
func encode(ttl time.Duration, v []byte) string {
	b := make([]byte, 8+len(v))
	binary.BigEndian.PutUint64(b, uint64(ttl))
	copy(b[8:], v)
	return string(b)
}

func decode(b []byte) (time.Duration, []byte) {
	if len(b) < 8 {
		return 0, b
	}
	return time.Duration(binary.BigEndian.Uint64(b)), append([]byte(nil), b[8:]...)
}

// Snapshot implements atlas.Store.
func (s *Store) Snapshot(ctx context.Context) (uint64, []atlas.KV, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.prefix, clientv3.WithPrefix())
	if err != nil {
		return 0, nil, unavailable("snapshot", err)
	}
	kvs := make([]atlas.KV, 0, len(resp.Kvs))
	s.mu.Lock()
	fresh := resp.Header.Revision > s.watched
	leased := map[string]bool{}
	for _, kv := range resp.Kvs {
		ttl, v := decode(kv.Value)
		key := strings.TrimPrefix(string(kv.Key), s.prefix)
		kvs = append(kvs, atlas.KV{Key: key, Value: v, Index: uint64(kv.ModRevision), TTL: ttl})
		if kv.Lease != 0 && fresh {
			// When it runs out is not known: the first renewal says.
			s.noteLeaseLocked(key, clientv3.LeaseID(kv.Lease), kv.ModRevision, 0, true)
			leased[key] = true
		}
	}
	s.highest = max(s.highest, resp.Header.Revision)
	if fresh {
		// A key gone (or no longer leased) while no watch ran, a
		// reload after compaction say, leaves no lease behind.
		for key, e := range s.leases {
			if !leased[key] && e.rev <= resp.Header.Revision {
				delete(s.leases, key)
			}
		}
	}
	s.mu.Unlock()
	return uint64(resp.Header.Revision), kvs, nil
}

// Txn implements atlas.Store: one etcd transaction; a leased put grants a
// lease of its own.
func (s *Store) Txn(ctx context.Context, ops []atlas.Op) (uint64, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	var (
		cmps    []clientv3.Cmp
		thens   []clientv3.Op
		granted []clientv3.LeaseID
		renew   []clientv3.LeaseID // taken from the pool
		leaseOf = map[string]clientv3.LeaseID{}
	)
	// The leases the keys have now: each lease holds one key, so once the
	// write replaces or deletes it, nothing holds the old lease.
	replaced := map[clientv3.LeaseID]bool{}
	s.mu.Lock()
	for _, op := range ops {
		if e, ok := s.leases[op.Key]; ok {
			replaced[e.id] = true
		}
	}
	s.mu.Unlock()
	// The leases granted for a write that did not happen, in the
	// background: with etcd unreachable each revocation would wait out
	// its deadline, and the write's answer with it.
	revoke := func() {
		ids := map[clientv3.LeaseID]bool{}
		for _, id := range granted {
			ids[id] = true
		}
		s.revokeLater(ids)
	}
	for _, op := range ops {
		k := s.prefix + op.Key
		if op.IfIndex != nil {
			if *op.IfIndex == 0 {
				cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
			} else {
				cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", int64(*op.IfIndex)))
			}
		}
		switch {
		case op.Delete:
			thens = append(thens, clientv3.OpDelete(k))
		case op.TTL > 0:
			secs := int64((op.TTL + time.Second - 1) / time.Second)
			id, pooled := s.pool.take(secs)
			if pooled {
				renew = append(renew, id)
			} else {
				var err error
				if id, err = s.grant(ctx, secs); err != nil {
					revoke()
					return 0, unavailable("grant a lease", err)
				}
			}
			granted = append(granted, id)
			leaseOf[op.Key] = id
			thens = append(thens, clientv3.OpPut(k, encode(op.TTL, op.Value), clientv3.WithLease(id)))
		default:
			thens = append(thens, clientv3.OpPut(k, encode(0, op.Value)))
		}
	}
	// Leases from the pool are renewed, so that they run their whole TTL
	// from now, while the transaction is on its way.
	var renewed chan error
	if len(renew) > 0 {
		renewed = make(chan error, 1)
		go func() {
			var first error
			for _, id := range renew {
				ttl, err := s.renew.renew(ctx, id)
				if err != nil && ctx.Err() == nil {
					// A broken stream fails every renewal waiting on it;
					// the next renewal opens a new one.
					ttl, err = s.renew.renew(ctx, id)
				}
				if err == nil && ttl <= 0 {
					err = rpctypes.ErrLeaseNotFound
				}
				if first == nil {
					first = err
				}
			}
			renewed <- first
		}()
	}
	resp, err := s.cli.Txn(ctx).If(cmps...).Then(thens...).Commit()
	var rerr error
	if renewed != nil {
		rerr = <-renewed
	}
	if err != nil {
		// Not known not to have happened: a deadline that came after etcd
		// took it, say. Revoking its leases would delete what it wrote;
		// they run out by themselves if it did not (each holds one key).
		return 0, unavailable("write", err)
	}
	if !resp.Succeeded {
		revoke()
		return 0, atlas.ErrConflict
	}
	for _, id := range granted {
		delete(replaced, id)
	}
	s.revokeLater(replaced)
	rev := resp.Header.Revision
	s.mu.Lock()
	for _, op := range ops {
		var ttl time.Duration
		if !op.Delete {
			ttl = op.TTL
		}
		s.noteLeaseLocked(op.Key, leaseOf[op.Key], rev, ttl, false)
	}
	s.mu.Unlock()
	if rerr != nil {
		// Written, but the lease may end before its TTL (its renewal
		// failed twice): say the write failed, so that the client
		// registers again, with a new lease.
		return 0, unavailable("renew a lease", rerr)
	}
	// A transaction that changed nothing (deletes of missing keys) makes no
	// event: ask for a progress notification, so that watchers learn the
	// revision the caller will wait for.
	changed := false
	for _, r := range resp.Responses {
		if d := r.GetResponseDeleteRange(); d == nil || d.Deleted > 0 {
			changed = true
		}
	}
	if !changed {
		// With the watches' own metadata: the client sends a progress
		// request on the watch stream whose metadata match its context's,
		// and a stream of other metadata (a new one) has no watch to tell.
		_ = s.cli.RequestProgress(clientv3.WithRequireLeader(ctx))
	}
	return uint64(resp.Header.Revision), nil
}

// revokeLater revokes, in the background, leases that no key holds any
// more (a key written with a new lease, or deleted): left alone, each
// would stay in etcd for its whole TTL, an hour or a day for every status
// change of a long-leased instance, and etcd would revoke it then anyway.
func (s *Store) revokeLater(ids map[clientv3.LeaseID]bool) {
	if len(ids) == 0 {
		return
	}
	s.bgMu.Lock()
	defer s.bgMu.Unlock()
	if s.bgCtx.Err() != nil {
		return
	}
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		for id := range ids {
			ctx, cancel := s.ctx(s.bgCtx)
			_, _ = s.cli.Revoke(ctx, id)
			cancel()
		}
	}()
}

// KeepAlive implements atlas.Store: one lease renewal, which etcd's leader
// handles without a raft write.
//
// A lease that may have run out is renewed apart, on a stream of its own:
// etcd answers a renewal of an expired lease only once it has revoked it
// (at most about 1,000 a second), and answers each stream's renewals in
// order, so on the shared stream it would hold up every heartbeat behind
// it.
func (s *Store) KeepAlive(ctx context.Context, key string) (time.Time, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	for attempt := 0; ; attempt++ {
		until, tried, err := s.keepAlive(ctx, key)
		if !errors.Is(err, atlas.ErrNotFound) || tried == 0 || attempt > 0 {
			return until, err
		}
		// The lease this replica knew may have been replaced (and
		// revoked) by a write through another replica that has not
		// reached this one yet: renew the key's lease as etcd has it.
		e, err := s.leaseOfKey(ctx, key)
		switch {
		case err == nil && e.id == tried, errors.Is(err, atlas.ErrNotFound):
			return time.Time{}, atlas.ErrNotFound
		case err != nil:
			// etcd did not say: not "register again" (404) but 503.
			return time.Time{}, err
		}
	}
}

// keepAlive renews the lease of key once; tried is the lease it renewed
// (0: key had none).
func (s *Store) keepAlive(ctx context.Context, key string) (until time.Time, tried clientv3.LeaseID, err error) {
	e, err := s.leaseOfKey(ctx, key)
	if err != nil {
		return time.Time{}, 0, err
	}
	var ttl int64
	if e.expires == 0 || time.Now().Add(suspectBefore).UnixNano() >= e.expires {
		var resp *clientv3.LeaseKeepAliveResponse
		if resp, err = s.cli.KeepAliveOnce(ctx, e.id); err == nil {
			ttl = resp.TTL
		}
	} else {
		ttl, err = s.renew.renew(ctx, e.id)
	}
	if err == nil && ttl <= 0 {
		err = rpctypes.ErrLeaseNotFound
	}
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		s.mu.Lock()
		if cur, ok := s.leases[key]; ok && cur.id == e.id {
			delete(s.leases, key)
		}
		s.mu.Unlock()
		return time.Time{}, e.id, atlas.ErrNotFound
	}
	if err != nil {
		return time.Time{}, e.id, unavailable("renew a lease", err)
	}
	until = time.Now().Add(time.Duration(ttl) * time.Second)
	s.mu.Lock()
	if cur, ok := s.leases[key]; ok && cur.id == e.id {
		cur.expires = until.UnixNano()
		s.leases[key] = cur
	}
	s.mu.Unlock()
	return until, e.id, nil
}

// leaseOfKey returns the lease of key: the one this replica knows of, or
// else the one etcd has it with.
func (s *Store) leaseOfKey(ctx context.Context, key string) (leaseEntry, error) {
	s.mu.Lock()
	e, ok := s.leases[key]
	s.mu.Unlock()
	if ok {
		return e, nil
	}
	resp, err := s.cli.Get(ctx, s.prefix+key)
	if err != nil {
		return leaseEntry{}, unavailable("read a lease", err)
	}
	if len(resp.Kvs) == 0 || resp.Kvs[0].Lease == 0 {
		return leaseEntry{}, atlas.ErrNotFound
	}
	kv := resp.Kvs[0]
	e = leaseEntry{id: clientv3.LeaseID(kv.Lease), rev: kv.ModRevision}
	s.mu.Lock()
	if resp.Header.Revision > s.watched {
		s.noteLeaseLocked(key, e.id, e.rev, 0, true)
	}
	s.mu.Unlock()
	return e, nil
}

var _ atlas.LeaseReader = (*Store)(nil)

// LeaseEnd implements atlas.LeaseReader: the lease is renewed through
// every replica, so only etcd knows when it ends. etcd counts the time
// left in whole seconds, so the end is up to a second early.
func (s *Store) LeaseEnd(ctx context.Context, key string) (renewed, expires time.Time, err error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	e, err := s.leaseOfKey(ctx, key)
	if err != nil {
		return time.Time{}, time.Time{}, err
	}
	resp, err := s.cli.TimeToLive(ctx, e.id)
	if errors.Is(err, rpctypes.ErrLeaseNotFound) || err == nil && resp.TTL < 0 {
		return time.Time{}, time.Time{}, atlas.ErrNotFound
	}
	if err != nil {
		return time.Time{}, time.Time{}, unavailable("read a lease", err)
	}
	expires = time.Now().Add(time.Duration(resp.TTL) * time.Second)
	return expires.Add(-time.Duration(resp.GrantedTTL) * time.Second), expires, nil
}

// suspectBefore: a lease due to run out within this long, or whose end is
// not known, is renewed apart (KeepAlive).
const suspectBefore = time.Second

// Watch implements atlas.Store with an etcd watch from after+1. Progress
// notifications become changes with no entries, so that the index moves
// on even when nothing of ours changed.
func (s *Store) Watch(ctx context.Context, after uint64) (<-chan atlas.Change, error) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	// Created and progress notifications show that the stream works
	// (checkWatch).
	start := int64(after) + 1
	wch := s.cli.Watch(wctx, s.prefix, clientv3.WithPrefix(), clientv3.WithRev(start),
		clientv3.WithProgressNotify(), clientv3.WithCreatedNotify())
	life := &watchLife{start: start, heard: time.Now(), cancel: cancel}
	s.mu.Lock()
	s.live = life
	s.mu.Unlock()
	out := make(chan atlas.Change, 1024)
	// The first answer tells whether the history is still there.
	go func() {
		defer func() {
			s.mu.Lock()
			if s.live == life {
				s.live = nil
			}
			s.mu.Unlock()
		}()
		defer cancel()
		defer close(out)
		for resp := range wch {
			if s.deaf.Load() || s.noProgress.Load() && resp.IsProgressNotify() {
				continue
			}
			s.mu.Lock()
			s.heardLocked(life)
			s.highest = max(s.highest, resp.Header.Revision)
			s.mu.Unlock()
			if resp.CompactRevision != 0 {
				s.cfg.Logger.Warn("etcdstore: the history Atlas needs was compacted; reloading", "compacted", resp.CompactRevision)
				return
			}
			if err := resp.Err(); err != nil {
				s.cfg.Logger.Warn("etcdstore: watch ended", "err", err)
				return
			}
			var changes []atlas.Change
			for _, ev := range resp.Events {
				rev := uint64(ev.Kv.ModRevision)
				if len(changes) == 0 || changes[len(changes)-1].Index != rev {
					changes = append(changes, atlas.Change{Index: rev})
				}
				c := &changes[len(changes)-1]
				key := strings.TrimPrefix(string(ev.Kv.Key), s.prefix)
				if ev.Type == clientv3.EventTypeDelete {
					c.KVs = append(c.KVs, atlas.ChangedKV{KV: atlas.KV{Key: key, Index: rev}, Deleted: true})
					s.mu.Lock()
					s.noteLeaseLocked(key, 0, ev.Kv.ModRevision, 0, true)
					s.watched = max(s.watched, ev.Kv.ModRevision)
					s.mu.Unlock()
					continue
				}
				ttl, v := decode(ev.Kv.Value)
				c.KVs = append(c.KVs, atlas.ChangedKV{KV: atlas.KV{Key: key, Value: v, Index: rev, TTL: ttl}})
				s.mu.Lock()
				s.noteLeaseLocked(key, clientv3.LeaseID(ev.Kv.Lease), ev.Kv.ModRevision, ttl, true)
				s.watched = max(s.watched, ev.Kv.ModRevision)
				s.mu.Unlock()
			}
			if len(changes) == 0 && resp.IsProgressNotify() {
				changes = append(changes, atlas.Change{Index: uint64(resp.Header.Revision)})
				s.mu.Lock()
				s.progress.notifiedLocked()
				s.mu.Unlock()
			}
			for _, c := range changes {
				select {
				case out <- c:
					// Atlas applying slowly is not a silent stream.
					s.mu.Lock()
					s.heardLocked(life)
					s.mu.Unlock()
				case <-wctx.Done():
					// The caller's context, or a watch ended (silent,
					// or refused below), whose channel no one reads.
					return
				}
			}
		}
	}()
	// A compacted start shows at once as a closed watch; ask etcd directly
	// so that the caller can tell it from a broken connection.
	gctx, gcancel := s.ctx(ctx)
	defer gcancel()
	if _, err := s.cli.Get(gctx, s.prefix, clientv3.WithRev(start), clientv3.WithCountOnly()); err != nil {
		if errors.Is(err, rpctypes.ErrCompacted) {
			cancel()
			return nil, atlas.ErrCompacted
		}
		if !errors.Is(err, rpctypes.ErrFutureRev) {
			cancel()
			return nil, unavailable("watch", err)
		}
	}
	return out, nil
}

// CurrentIndex implements atlas.Syncer: etcd's revision now (a
// linearizable read of nothing). Writes outside the prefix move it too,
// and the watch sees none of them, so it asks for a progress notification
// as well: the watch then learns the revision without a write of its own
// (etcd sends its periodic ones every 10 minutes).
func (s *Store) CurrentIndex(ctx context.Context) (uint64, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.prefix+"ping", clientv3.WithCountOnly())
	if err != nil {
		return 0, unavailable("read the revision", err)
	}
	// With the watches' metadata, as in Txn.
	_ = s.cli.RequestProgress(clientv3.WithRequireLeader(ctx))
	return uint64(resp.Header.Revision), nil
}

// Ping reports whether etcd answers (a linearizable read of nothing) and
// whether the newest watch still hears from it (checkWatch).
func (s *Store) Ping(ctx context.Context) error {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	s.mu.Lock()
	before := s.highest
	s.mu.Unlock()
	resp, err := s.cli.Get(ctx, s.prefix+"ping", clientv3.WithCountOnly())
	if err != nil {
		return unavailable("ping", err)
	}
	if err := s.checkRevision(before, resp.Header.Revision); err != nil {
		return err
	}
	if err := s.checkWatch(ctx, resp.Header.Revision); err != nil {
		return unavailable("watch", err)
	}
	return nil
}

// checkRevision fails, from the first time etcd's revision rev is below
// before (the highest it had shown this store before it was asked), until
// the store is opened again. etcd restored from a backup without
// --bump-revision numbers its changes again from the backup's revision:
// this store's view then holds changes etcd has lost, and its watch, which
// waits for revisions above what it applied, would miss the changes etcd
// numbers again below them. So Atlas marks its reads stale and sends its
// watchers elsewhere, rather than serve that view as fresh; serving what
// etcd holds now would take the index back, which blocking queries and
// resumed event streams cannot follow.
func (s *Store) checkRevision(before, rev int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.went == nil && rev < before {
		s.went = fmt.Errorf("%w: etcd's revision went back from %d to %d: etcd was restored from a backup without `etcdutl snapshot restore --bump-revision` (see the README), and lost changes this Atlas holds. Restore it again with --bump-revision, or restart Atlas to serve what etcd holds now",
			atlas.ErrUnavailable, before, rev)
	}
	return s.went
}

// Package boltstore is Atlas's embedded store: one bbolt file, writes
// grouped into few fsyncs, leases kept in memory so that a heartbeat never
// writes to disk, and a short history of changes in memory for watchers.
package boltstore

import (
	"container/heap"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/switchboard-go/switchboard/atlas"
)

var (
	bucketKV   = []byte("kv")
	bucketMeta = []byte("meta")
	keyIndex   = []byte("index")
)

// Config configures a Store. The zero value of every field but Path is
// useful.
type Config struct {
	// Path is the bbolt file. Required.
	Path string
	// History is how many changes, at least, are kept in memory for
	// watchers that resume from an older index (Atlas re-watches from its
	// last applied index when it falls behind), and how many changes a
	// watcher may leave unread before it is dropped (1024 at least).
	// Zero means 1024.
	// Each change holds its values, so the history is most of the store's
	// memory that does not grow with the instances; a watcher further
	// behind than the history reloads a snapshot instead (ErrCompacted).
	History int
	// SweepInterval is how often expired leases are looked for. Zero means
	// 100ms.
	SweepInterval time.Duration
	// Logger receives the few things worth logging. Nil discards.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Store implements atlas.Store on bbolt.
type Store struct {
	cfg    Config
	opened time.Time // cfg.Now() at Open: the origin of lease times
	db     *bolt.DB
	writes chan *writeReq
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed sync.Once

	// mu guards everything below.
	mu       sync.Mutex
	index    uint64                // last committed index
	leases   map[string]*lease     // leased keys
	due      leaseHeap             // every lease, soonest first (some stale)
	history  []atlas.Change        // ring of recent changes, oldest first
	floor    uint64                // Watch(after) works for after >= floor
	watchers map[*watcher]struct{} // live Watch calls
}

type lease struct {
	key   string
	index uint64 // the key's Index when the lease was set
	ttl   time.Duration
	// Nanoseconds since the store opened (Store.mono), which keep a lease
	// at 48 bytes (time.Time: 80) and, like time.Time's own comparisons,
	// follow the monotonic clock: a step of the wall clock expires nothing.
	expires int64 // moved by KeepAlive
	due     int64 // when the sweeper looks at it next (its place in the heap)
}

// leaseHeap orders leases by due, so that a sweep looks only at leases
// that may have run out, not at all of them. KeepAlive moves expires
// without touching the heap; the sweeper pushes a renewed lease back.
type leaseHeap []*lease

func (h leaseHeap) Len() int           { return len(h) }
func (h leaseHeap) Less(i, j int) bool { return h[i].due < h[j].due }
func (h leaseHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *leaseHeap) Push(x any)        { *h = append(*h, x.(*lease)) }
func (h *leaseHeap) Pop() any {
	old := *h
	l := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return l
}

// mono turns t into a lease time: nanoseconds since the store opened, by
// the monotonic clock when t has its reading (time.Now's times do).
func (s *Store) mono(t time.Time) int64 { return int64(t.Sub(s.opened)) }

// setLeaseLocked starts (or restarts) the lease of a key.
func (s *Store) setLeaseLocked(key string, index uint64, ttl time.Duration, now time.Time) {
	exp := s.mono(now.Add(ttl))
	l := &lease{key: key, index: index, ttl: ttl, expires: exp, due: exp}
	s.leases[key] = l
	heap.Push(&s.due, l)
}

type watcher struct {
	ch chan atlas.Change
}

type writeReq struct {
	ops   []atlas.Op
	reply chan writeResult
	// expire marks deletes made by the lease sweeper.
	expire bool
}

type writeResult struct {
	index uint64
	err   error
}

var _ atlas.Store = (*Store)(nil)

// Open opens or creates the store file and starts its writer and lease
// sweeper. Every leased key gets a full TTL from now.
func Open(cfg Config) (*Store, error) {
	if cfg.Path == "" {
		return nil, fmt.Errorf("boltstore: path required")
	}
	if cfg.History <= 0 {
		cfg.History = 1024
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = 100 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	db, err := bolt.Open(cfg.Path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("boltstore: open %s: %w", cfg.Path, err)
	}
	s := &Store{
		cfg:      cfg,
		opened:   cfg.Now(),
		db:       db,
		writes:   make(chan *writeReq, 1024),
		leases:   make(map[string]*lease),
		watchers: make(map[*watcher]struct{}),
	}
	now := cfg.Now()
	err = db.Update(func(tx *bolt.Tx) error {
		kv, err := tx.CreateBucketIfNotExists(bucketKV)
		if err != nil {
			return err
		}
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if v := meta.Get(keyIndex); len(v) == 8 {
			s.index = binary.BigEndian.Uint64(v)
		}
		return kv.ForEach(func(k, v []byte) error {
			e, err := decode(k, v)
			if err != nil {
				return err
			}
			if e.TTL > 0 {
				s.setLeaseLocked(e.Key, e.Index, e.TTL, now)
			}
			return nil
		})
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("boltstore: load %s: %w", cfg.Path, err)
	}
	s.floor = s.index
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(2)
	go s.writer()
	go s.sweeper()
	return s, nil
}

// Close stops the writer and sweeper, ends every watch and closes the file.
func (s *Store) Close() error {
	var err error
	s.closed.Do(func() {
		s.cancel()
		s.wg.Wait()
		s.mu.Lock()
		for w := range s.watchers {
			close(w.ch)
			delete(s.watchers, w)
		}
		s.mu.Unlock()
		err = s.db.Close()
	})
	return err
}

// Snapshot implements atlas.Store.
func (s *Store) Snapshot(ctx context.Context) (uint64, []atlas.KV, error) {
	if err := ctx.Err(); err != nil {
		return 0, nil, err
	}
	var (
		index uint64
		kvs   []atlas.KV
	)
	err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keyIndex); len(v) == 8 {
			index = binary.BigEndian.Uint64(v)
		}
		return tx.Bucket(bucketKV).ForEach(func(k, v []byte) error {
			e, err := decode(k, v)
			if err != nil {
				return err
			}
			kvs = append(kvs, e)
			return nil
		})
	})
	if err != nil {
		return 0, nil, fmt.Errorf("boltstore: snapshot: %w", err)
	}
	return index, kvs, nil
}

// Txn implements atlas.Store. Concurrent calls are grouped into one bbolt
// transaction and one fsync.
func (s *Store) Txn(ctx context.Context, ops []atlas.Op) (uint64, error) {
	req := &writeReq{ops: ops, reply: make(chan writeResult, 1)}
	return s.submit(ctx, req)
}

func (s *Store) submit(ctx context.Context, req *writeReq) (uint64, error) {
	select {
	case s.writes <- req:
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-s.ctx.Done():
		return 0, atlas.ErrClosed
	}
	// Once queued the write will be applied or refused; wait for the answer
	// even if ctx ends, so that the caller never mistakes a committed write
	// for a failed one.
	select {
	case r := <-req.reply:
		return r.index, r.err
	case <-s.ctx.Done():
		return 0, atlas.ErrClosed
	}
}

// KeepAlive implements atlas.Store: it touches memory only.
func (s *Store) KeepAlive(ctx context.Context, key string) (time.Time, error) {
	if err := ctx.Err(); err != nil {
		return time.Time{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.leases[key]
	if !ok {
		return time.Time{}, atlas.ErrNotFound
	}
	exp := s.cfg.Now().Add(l.ttl)
	l.expires = s.mono(exp)
	return exp, nil
}

// Watch implements atlas.Store.
func (s *Store) Watch(ctx context.Context, after uint64) (<-chan atlas.Change, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctx.Err() != nil {
		return nil, atlas.ErrClosed
	}
	if after < s.floor || after > s.index {
		return nil, atlas.ErrCompacted
	}
	// A watcher History changes behind (1024 at least) is dropped; it
	// can then resume from the history if fewer than History more came
	// meanwhile.
	w := &watcher{ch: make(chan atlas.Change, max(s.cfg.History, 1024))}
	// Replay what the watcher missed from history, then go live; both under
	// mu so nothing is lost or doubled in between.
	for _, c := range s.history {
		if c.Index > after {
			if !s.sendLocked(w, c) {
				break
			}
		}
	}
	s.watchers[w] = struct{}{}
	go func() {
		select {
		case <-ctx.Done():
		case <-s.ctx.Done():
		}
		s.mu.Lock()
		if _, ok := s.watchers[w]; ok {
			delete(s.watchers, w)
			close(w.ch)
		}
		s.mu.Unlock()
	}()
	return w.ch, nil
}

// sendLocked delivers c to w, or drops a watcher that has fallen behind.
func (s *Store) sendLocked(w *watcher, c atlas.Change) bool {
	select {
	case w.ch <- c:
		return true
	default:
		if _, ok := s.watchers[w]; ok {
			delete(s.watchers, w)
			close(w.ch)
		}
		return false
	}
}

// writer applies queued writes, many per bbolt transaction.
func (s *Store) writer() {
	defer s.wg.Done()
	for {
		var batch []*writeReq
		select {
		case <-s.ctx.Done():
			return
		case req := <-s.writes:
			batch = append(batch, req)
		}
	fill:
		for len(batch) < 512 {
			select {
			case req := <-s.writes:
				batch = append(batch, req)
			default:
				break fill
			}
		}
		s.commit(batch)
	}
}

// commit applies a batch in one bbolt transaction. A request whose
// condition fails gets ErrConflict and changes nothing; the others commit.
func (s *Store) commit(batch []*writeReq) {
	s.mu.Lock()
	next := s.index
	s.mu.Unlock()
	results := make([]writeResult, len(batch))
	changes := make([]atlas.Change, 0, len(batch))
	now := s.cfg.Now()
	err := s.db.Update(func(tx *bolt.Tx) error {
		changes = changes[:0]
		index := next
		b := tx.Bucket(bucketKV)
		for i, req := range batch {
			if err := s.check(b, req, now); err != nil {
				results[i] = writeResult{err: err}
				continue
			}
			index++
			change := atlas.Change{Index: index}
			for _, op := range req.ops {
				kv := atlas.ChangedKV{KV: atlas.KV{Key: op.Key, Index: index}}
				if op.Delete {
					if b.Get([]byte(op.Key)) == nil {
						continue
					}
					if err := b.Delete([]byte(op.Key)); err != nil {
						return err
					}
					kv.Deleted, kv.Expired = true, req.expire
				} else {
					kv.Value, kv.TTL = op.Value, op.TTL
					if err := b.Put([]byte(op.Key), encode(kv.KV)); err != nil {
						return err
					}
				}
				change.KVs = append(change.KVs, kv)
			}
			results[i] = writeResult{index: index}
			changes = append(changes, change)
		}
		var ib [8]byte
		binary.BigEndian.PutUint64(ib[:], index)
		return tx.Bucket(bucketMeta).Put(keyIndex, ib[:])
	})
	if err != nil {
		s.cfg.Logger.Error("boltstore: commit failed", "err", err)
		for _, req := range batch {
			req.reply <- writeResult{err: fmt.Errorf("boltstore: commit: %w", err)}
		}
		return
	}
	now = s.cfg.Now()
	s.mu.Lock()
	for _, c := range changes {
		s.index = c.Index
		for _, kv := range c.KVs {
			if kv.Deleted || kv.TTL == 0 {
				delete(s.leases, kv.Key)
			} else {
				s.setLeaseLocked(kv.Key, kv.Index, kv.TTL, now)
			}
		}
		s.history = append(s.history, c)
		for w := range s.watchers {
			s.sendLocked(w, c)
		}
	}
	// Trim in halves, so that keeping the history costs O(1) a write.
	if len(s.history) > 2*s.cfg.History {
		over := len(s.history) - s.cfg.History
		s.floor = s.history[over-1].Index
		s.history = append(s.history[:0:0], s.history[over:]...)
	}
	s.mu.Unlock()
	for i, req := range batch {
		req.reply <- results[i]
	}
}

// check returns ErrConflict unless every condition of req holds. A lease
// sweeper's delete also needs the lease to be still expired: a KeepAlive
// may have come in since the sweep.
func (s *Store) check(b *bolt.Bucket, req *writeReq, now time.Time) error {
	for _, op := range req.ops {
		if op.IfIndex == nil {
			continue
		}
		var cur uint64
		if v := b.Get([]byte(op.Key)); v != nil {
			if len(v) < 16 {
				return fmt.Errorf("boltstore: corrupt entry %q", op.Key)
			}
			cur = binary.BigEndian.Uint64(v)
		}
		if cur != *op.IfIndex {
			return atlas.ErrConflict
		}
		if req.expire {
			s.mu.Lock()
			l, ok := s.leases[op.Key]
			renewed := ok && s.mono(now) <= l.expires
			s.mu.Unlock()
			if renewed {
				return atlas.ErrConflict
			}
		}
	}
	return nil
}

// sweeper deletes keys whose leases ran out. The delete is conditional on
// the key's index, so a key written again in the meantime survives.
func (s *Store) sweeper() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		now := s.cfg.Now()
		var ops []atlas.Op
		s.mu.Lock()
		monoNow := s.mono(now)
		for len(s.due) > 0 && s.due[0].due <= monoNow {
			l := heap.Pop(&s.due).(*lease)
			if s.leases[l.key] != l {
				continue // replaced or deleted since
			}
			if l.expires > monoNow {
				l.due = l.expires // renewed: look again then
				heap.Push(&s.due, l)
				continue
			}
			ops = append(ops, atlas.Op{Key: l.key, Delete: true, IfIndex: atlas.IfIndex(l.index)})
			// Looked at again if the delete does not happen (renewed in
			// the meantime, or a failed write).
			l.due = s.mono(now.Add(max(l.ttl/4, s.cfg.SweepInterval)))
			heap.Push(&s.due, l)
		}
		s.mu.Unlock()
		for _, op := range ops {
			req := &writeReq{ops: []atlas.Op{op}, reply: make(chan writeResult, 1), expire: true}
			// A conflict means the key was written again: nothing to do.
			if _, err := s.submit(s.ctx, req); err != nil && err != atlas.ErrConflict && s.ctx.Err() == nil {
				s.cfg.Logger.Error("boltstore: expire failed", "key", op.Key, "err", err)
			}
		}
	}
}

// An entry on disk is index (8 bytes), ttl in nanoseconds (8 bytes), value.
func encode(kv atlas.KV) []byte {
	b := make([]byte, 16+len(kv.Value))
	binary.BigEndian.PutUint64(b, kv.Index)
	binary.BigEndian.PutUint64(b[8:], uint64(kv.TTL))
	copy(b[16:], kv.Value)
	return b
}

func decode(k, v []byte) (atlas.KV, error) {
	if len(v) < 16 {
		return atlas.KV{}, fmt.Errorf("corrupt entry %q", k)
	}
	return atlas.KV{
		Key:   string(k),
		Index: binary.BigEndian.Uint64(v),
		TTL:   time.Duration(binary.BigEndian.Uint64(v[8:])),
		Value: append([]byte(nil), v[16:]...),
	}, nil
}

// Ping reports whether the file can be read.
func (s *Store) Ping(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.View(func(tx *bolt.Tx) error { return nil })
}

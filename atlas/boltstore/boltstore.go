// Package boltstore is Atlas's embedded store: a write-ahead log that makes
// each batch of writes durable with one fdatasync (writes that may be
// synced later share one every SyncDelay), one bbolt file that gets
// them in periodic checkpoints, leases kept in memory so that a heartbeat
// never writes to disk, and a short history of changes in memory for
// watchers.
package boltstore

import (
	"bytes"
	"cmp"
	"container/heap"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/switchboard-go/switchboard/atlas"
)

var (
	bucketKV   = []byte("kv")
	bucketMeta = []byte("meta")
	keyIndex   = []byte("index")
	// keyClosed holds the index at a clean Close, and is deleted at Open:
	// without it, the last run stopped in a crash.
	keyClosed = []byte("closed")
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
	// CheckpointInterval is how often, at most, the writes in the
	// write-ahead log are copied into the bbolt file, which lets the log
	// be deleted; zero means 100ms. A checkpoint also happens when the
	// log's segment reaches 16 MiB. Writes are durable as soon as they are
	// acknowledged (those made to be synced later, SyncDelay after),
	// whatever this is: it sets how much the log may hold
	// (and Open replays) and how many writes share a bbolt commit.
	CheckpointInterval time.Duration
	// SyncDelay is how long, at most, a write whose ops all set
	// atlas.Op.SyncLater stays in the log unsynced after it is
	// acknowledged; zero means 10ms. Such writes share one fdatasync, and
	// a write that must be synced syncs them too.
	SyncDelay time.Duration
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

	dir   string   // of the write-ahead log
	seg   *segment // the log segment being appended to (writer only)
	ckpts chan checkpoint
	// touched tells the checkpointer that a Snapshot read the file
	// (unmapFile); unmapFailed is set once unmapping failed (checkpointer
	// only).
	touched     chan struct{}
	unmapFailed bool
	// writerDone is closed when the writer has stopped.
	writerDone chan struct{}
	// unsynced counts the changes acknowledged since the log's last
	// deferred fdatasync or frame synced at once (writer only): never more
	// than maxUnsynced. After a cutOff, which syncs too, it may count
	// changes that are synced already: one more fdatasync than needed.
	unsynced int
	// syncFailedAt is the index when a deferred fdatasync failed (writer
	// only; 0: none failing), and nextSeq the number of the segment to
	// make once the checkpoint of the one it failed in is done (seg is nil
	// meanwhile). checkpointed is the index of the last checkpoint that
	// removed its segments.
	syncFailedAt uint64
	nextSeq      uint64
	checkpointed atomic.Uint64
	// checkpoints counts the checkpoints that forgot pending writes
	// (changed under mu): see beginRead.
	checkpoints atomic.Uint64

	// mu guards everything below.
	mu      sync.Mutex
	index   uint64                // last committed index
	pending map[string]*pendingKV // in the log, not yet in bbolt, by key
	failed  error                 // the last append's error, nil once one works
	// syncFailed is the error of a deferred fdatasync, set until a
	// checkpoint has copied the writes it may have lost into the file.
	syncFailed error
	leases     map[string]*lease     // leased keys
	due        leaseHeap             // every lease, soonest first (some stale)
	history    []atlas.Change        // ring of recent changes, oldest first
	floor      uint64                // Watch(after) works for after >= floor
	watchers   map[*watcher]struct{} // live Watch calls
	swept      int64                 // when the last sweep began (Store.mono)

	// expireFailing is set while deleting expired keys fails (logged once).
	expireFailing atomic.Bool
	// graced is when the sweeper last gave every lease one TTL (Unix
	// nanoseconds of cfg.Now), or 0.
	graced atomic.Int64
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
	at      int   // its place in Store.due; -1 when not in it
	// expiring is set while the sweeper's delete of the key is on its
	// way: KeepAlive then answers ErrNotFound rather than renew a lease
	// whose delete is decided.
	expiring bool
}

// leaseHeap orders leases by due, so that a sweep looks only at leases
// that may have run out, not at all of them. KeepAlive moves expires
// without touching the heap; the sweeper pushes a renewed lease back.
type leaseHeap []*lease

func (h leaseHeap) Len() int           { return len(h) }
func (h leaseHeap) Less(i, j int) bool { return h[i].due < h[j].due }
func (h leaseHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].at, h[j].at = i, j
}
func (h *leaseHeap) Push(x any) {
	l := x.(*lease)
	l.at = len(*h)
	*h = append(*h, l)
}
func (h *leaseHeap) Pop() any {
	old := *h
	l := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	l.at = -1
	return l
}

// mono turns t into a lease time: nanoseconds since the store opened, by
// the monotonic clock when t has its reading (time.Now's times do).
func (s *Store) mono(t time.Time) int64 { return int64(t.Sub(s.opened)) }

// setLeaseLocked starts (or restarts) the lease of a key. A key written
// again keeps its lease, and its one place in the heap: a lease for each
// write, each kept until its own due time (a day, for a long TTL), made
// the heap grow with the writes rather than the keys.
func (s *Store) setLeaseLocked(key string, index uint64, ttl time.Duration, now time.Time) {
	exp := s.mono(now.Add(ttl))
	l, ok := s.leases[key]
	if !ok {
		l = &lease{key: key, at: -1}
		s.leases[key] = l
	}
	l.index, l.ttl, l.expires, l.due, l.expiring = index, ttl, exp, exp, false
	if l.at >= 0 {
		heap.Fix(&s.due, l.at)
	} else {
		heap.Push(&s.due, l)
	}
}

// dropLeaseLocked ends the lease of a key, if it has one.
func (s *Store) dropLeaseLocked(key string) {
	if l, ok := s.leases[key]; ok {
		delete(s.leases, key)
		if l.at >= 0 {
			heap.Remove(&s.due, l.at)
		}
	}
}

// pendingKV is the latest write of a key that bbolt does not have yet.
type pendingKV struct {
	kv      atlas.KV
	deleted bool
}

// checkpoint asks the checkpointer to copy into bbolt every pending write
// up to index, then delete the log segments named.
type checkpoint struct {
	index uint64
	segs  []string
}

type watcher struct {
	ch chan atlas.Change
	// dropped is closed with ch when the store drops the watcher, which
	// ends the goroutine waiting for the watch's context.
	dropped chan struct{}
}

// dropLocked ends w's watch, unless it has ended already.
func (s *Store) dropLocked(w *watcher) {
	if _, ok := s.watchers[w]; ok {
		delete(s.watchers, w)
		close(w.ch)
		close(w.dropped)
	}
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

// Open opens or creates the store file and its write-ahead log, replays
// into the file the writes the log holds (a crash leaves some), and starts
// the writer, the checkpointer and the lease sweeper. Every leased key gets
// a full TTL from now.
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
	if cfg.CheckpointInterval <= 0 {
		cfg.CheckpointInterval = 100 * time.Millisecond
	}
	if cfg.SyncDelay <= 0 {
		cfg.SyncDelay = 10 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	var db *bolt.DB
	err := guarded(func() (err error) {
		db, err = bolt.Open(cfg.Path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
		return err
	})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("boltstore: open %s: another process has it open (another Atlas, or switchboard dev, on the same data directory?)", cfg.Path)
	}
	if err != nil {
		return nil, fmt.Errorf("boltstore: open %s: %w", cfg.Path, err)
	}
	s := &Store{
		cfg:        cfg,
		opened:     cfg.Now(),
		db:         db,
		dir:        walDir(cfg.Path),
		writes:     make(chan *writeReq, 1024),
		ckpts:      make(chan checkpoint, 1),
		touched:    make(chan struct{}, 1),
		writerDone: make(chan struct{}),
		leases:     make(map[string]*lease),
		pending:    make(map[string]*pendingKV),
		watchers:   make(map[*watcher]struct{}),
	}
	if err := guarded(s.load); err != nil {
		if s.seg != nil {
			s.seg.f.Close() // made before a damaged lease was found
		}
		db.Close()
		return nil, fmt.Errorf("boltstore: load %s: %w", cfg.Path, err)
	}
	s.floor = s.index
	s.swept = s.mono(cfg.Now())
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(3)
	go s.writer()
	go s.checkpointer()
	go s.sweeper()
	return s, nil
}

// guarded runs f, and turns a panic (bbolt's, on a damaged page) or a
// memory fault (SIGBUS, reading a mapped file cut short) into an error
// that says what to do, where the process would crash with a stack dump.
func guarded(f func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("the file is damaged (%v): restore the data directory from a backup", v)
		}
	}()
	return f()
}

// load replays the log into the file, deletes it, starts a new one and
// reads the leases.
func (s *Store) load() error {
	var crashed, unmarked bool
	err := s.db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(bucketKV); err != nil {
			return err
		}
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if v := meta.Get(keyIndex); len(v) == 8 {
			s.index = binary.BigEndian.Uint64(v)
			closed := meta.Get(keyClosed)
			crashed, unmarked = !bytes.Equal(closed, v), closed == nil
		}
		return meta.Delete(keyClosed)
	})
	if err != nil {
		return err
	}
	if _, err := os.Stat(s.dir); errors.Is(err, os.ErrNotExist) {
		if err := os.Mkdir(s.dir, 0o700); err != nil {
			return err
		}
		if err := syncDir(filepath.Dir(s.dir)); err != nil {
			return err
		}
	}
	changes, dropped, err := readLog(s.dir, s.index)
	if err != nil {
		return fmt.Errorf("write-ahead log: %w", err)
	}
	if dropped > 0 {
		s.cfg.Logger.Warn("boltstore: the write-ahead log ended in an incomplete write, which was never acknowledged, or in instance writes acknowledged before they were synced, which their sidecars make again; dropped them", "bytes", dropped)
	}
	if len(changes) > 0 {
		err := s.db.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketKV)
			for _, c := range changes {
				for _, kv := range c.KVs {
					if err := putKV(b, kv.KV, kv.Deleted); err != nil {
						return err
					}
				}
			}
			return putIndex(tx, changes[len(changes)-1].Index)
		})
		if err != nil {
			return err
		}
		s.index = changes[len(changes)-1].Index
		s.cfg.Logger.Info("boltstore: replayed the write-ahead log", "changes", len(changes), "index", s.index)
	}
	if crashed {
		// A crash of the machine may have taken back writes acknowledged
		// unsynced, maxUnsynced at most, whose indexes clients have seen:
		// a blocking query at one of them must not wait for the same
		// index to come again. The log's writes are in the file now.
		s.index += maxUnsynced
		if err := s.db.Update(func(tx *bolt.Tx) error { return putIndex(tx, s.index) }); err != nil {
			return err
		}
		why := "the store was not closed cleanly"
		if unmarked {
			why = "the store has no mark of a clean stop (a crash, or a version before the mark)"
		}
		s.cfg.Logger.Info("boltstore: "+why+"; the index moves on past the writes a crash may have taken back", "index", s.index)
	}
	if s.index == 0 {
		// A new store is at index 1 and its first write is 2, as in etcd:
		// Atlas answers index 1 for what holds nothing yet, and that
		// answer must be older than any write. (Not before the replay: a
		// store made before this rule may have its first write, index 1,
		// in the log only.)
		s.index = 1
		if err := s.db.Update(func(tx *bolt.Tx) error { return putIndex(tx, s.index) }); err != nil {
			return err
		}
	}
	paths, seqs, err := segments(s.dir)
	if err != nil {
		return err
	}
	// Ping's probe files, of a process that stopped while it probed.
	probes, _ := filepath.Glob(filepath.Join(s.dir, probeFiles))
	for _, p := range probes {
		os.Remove(p)
	}
	var seq uint64 = 1
	if len(seqs) > 0 {
		seq = seqs[len(seqs)-1] + 1
	}
	if err := removeSegments(s.dir, paths); err != nil {
		return err
	}
	if s.seg, err = createSegment(s.dir, seq, s.cfg.Now()); err != nil {
		return err
	}
	now := s.cfg.Now()
	return s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketKV).ForEach(func(k, v []byte) error {
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
}

func removeSegments(dir string, paths []string) error {
	for _, p := range paths {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	if len(paths) == 0 {
		return nil
	}
	return syncDir(dir)
}

// putKV writes (or deletes) one entry in bbolt.
func putKV(b *bolt.Bucket, kv atlas.KV, deleted bool) error {
	if deleted {
		return b.Delete([]byte(kv.Key))
	}
	return b.Put([]byte(kv.Key), encode(kv))
}

func putIndex(tx *bolt.Tx, index uint64) error { return putMetaIndex(tx, keyIndex, index) }

// putMetaIndex writes an index under key in the meta bucket.
func putMetaIndex(tx *bolt.Tx, key []byte, index uint64) error {
	var ib [8]byte
	binary.BigEndian.PutUint64(ib[:], index)
	return tx.Bucket(bucketMeta).Put(key, ib[:])
}

// Close stops the writer, checkpointer and sweeper, ends every watch,
// copies what the log holds into the file and closes it.
func (s *Store) Close() error {
	var err error
	s.closed.Do(func() {
		s.cancel()
		s.wg.Wait()
		s.mu.Lock()
		for w := range s.watchers {
			s.dropLocked(w)
		}
		s.mu.Unlock()
		if s.seg != nil {
			s.seg.f.Close()
		}
		// Every acknowledged write is in the log already: a failure here
		// only leaves more for the next Open to replay.
		if _, err = s.checkpoint(s.index); err == nil {
			paths, _, lerr := segments(s.dir)
			if err = lerr; err == nil {
				err = removeSegments(s.dir, paths)
			}
		}
		if err == nil {
			// Nothing was lost: the next Open need not move the index on.
			err = s.db.Update(func(tx *bolt.Tx) error { return putMetaIndex(tx, keyClosed, s.index) })
		}
		if cerr := s.db.Close(); err == nil {
			err = cerr
		}
	})
	return err
}

// Snapshot implements atlas.Store: the file, with the writes that only
// the log has yet laid over it, in key order.
func (s *Store) Snapshot(ctx context.Context) (uint64, []atlas.KV, error) {
	if err := ctx.Err(); err != nil {
		return 0, nil, err
	}
	tx, err := s.beginRead()
	if err != nil {
		return 0, nil, fmt.Errorf("boltstore: snapshot: %w", err)
	}
	defer tx.Rollback()
	defer func() { // unmap what it read, later
		select {
		case s.touched <- struct{}{}:
		default:
		}
	}()
	index := s.index
	over := make(map[string]pendingKV, len(s.pending))
	for k, p := range s.pending {
		over[k] = *p
	}
	s.mu.Unlock()
	var kvs []atlas.KV
	err = tx.Bucket(bucketKV).ForEach(func(k, v []byte) error {
		if _, ok := over[string(k)]; ok {
			return nil
		}
		e, err := decode(k, v)
		if err != nil {
			return err
		}
		kvs = append(kvs, e)
		return nil
	})
	if err != nil {
		return 0, nil, fmt.Errorf("boltstore: snapshot: %w", err)
	}
	if len(over) == 0 {
		return index, kvs, nil
	}
	for _, p := range over {
		if !p.deleted {
			kvs = append(kvs, p.kv)
		}
	}
	slices.SortFunc(kvs, func(a, b atlas.KV) int { return cmp.Compare(a.Key, b.Key) })
	return index, kvs, nil
}

// Txn implements atlas.Store. Concurrent calls are grouped into one
// append to the write-ahead log and one fdatasync.
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
	// for a failed one. When the store closes meanwhile, the writer
	// finishes the batch it has before it stops: that batch's answers
	// count.
	select {
	case r := <-req.reply:
		return r.index, r.err
	case <-s.ctx.Done():
		<-s.writerDone
		select {
		case r := <-req.reply:
			return r.index, r.err
		default:
			return 0, atlas.ErrClosed
		}
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
	if !ok || l.expiring {
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
	w := &watcher{ch: make(chan atlas.Change, max(s.cfg.History, 1024)), dropped: make(chan struct{})}
	// Replay what the watcher missed from history, then go live; both under
	// mu so nothing is lost or doubled in between.
	for _, c := range s.history {
		if c.Index <= after {
			continue
		}
		select {
		case w.ch <- c:
		default:
			// The history after `after` is more than the watcher may
			// hold (it keeps up to twice History): it gets what fits and
			// is dropped, as if it had fallen behind, so that it watches
			// again from there. Going live now would skip the rest.
			close(w.ch)
			return w.ch, nil
		}
	}
	s.watchers[w] = struct{}{}
	go func() {
		select {
		case <-ctx.Done():
		case <-s.ctx.Done():
		case <-w.dropped:
			return
		}
		s.mu.Lock()
		s.dropLocked(w)
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
		s.dropLocked(w)
		return false
	}
}

// writer applies queued writes, many per log append, and starts a
// checkpoint when one is due.
func (s *Store) writer() {
	defer s.wg.Done()
	defer close(s.writerDone)
	tick := time.NewTicker(s.cfg.CheckpointInterval)
	defer tick.Stop()
	// syncDue fires SyncDelay after the first write acknowledged unsynced.
	syncDue := time.NewTimer(time.Hour)
	syncDue.Stop()
	defer syncDue.Stop()
	for {
		var batch []*writeReq
		select {
		case <-s.ctx.Done():
			return
		case <-tick.C:
			s.resumeAfterFailedSync()
			s.rotate(false)
			continue
		case <-syncDue.C:
			s.syncWaiting()
			continue
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
		before := s.unsynced
		s.commit(batch)
		if before == 0 && s.unsynced > 0 {
			syncDue.Reset(s.cfg.SyncDelay)
		}
		s.rotate(true)
	}
}

// maxUnsynced bounds how many changes may be acknowledged unsynced, and so
// how many a crash of the machine may take back: Open moves the index on
// by as many, so that no index acknowledged before such a crash is given
// again.
const maxUnsynced = 1024

// syncWaiting syncs the log's segment when writes were acknowledged since
// its last sync. A failure may have lost them on disk, and a later
// fdatasync that works does not say otherwise (Linux reports a writeback
// error once): the store then refuses every write, and writes nothing
// more into the segment. The next rotation hands it to the checkpointer
// unsynced, which copies the writes from memory into the file and removes
// it, and writes are taken again once that is done
// (resumeAfterFailedSync). Writer only.
func (s *Store) syncWaiting() {
	if s.unsynced == 0 || s.syncFailedAt != 0 {
		return
	}
	if err := s.seg.sync(); err != nil {
		s.mu.Lock()
		s.syncFailedAt = s.index
		s.syncFailed = fmt.Errorf("%w: boltstore: syncing the write-ahead log %s: %v", atlas.ErrUnavailable, s.seg.path, err)
		s.mu.Unlock()
		s.cfg.Logger.Error("boltstore: syncing the write-ahead log failed; writes are refused until a checkpoint has copied the writes that waited for it into the file", "err", s.syncFailed)
		return
	}
	s.unsynced = 0
}

// resumeAfterFailedSync ends the refusal that a failed deferred fdatasync
// started, once the checkpoint of its segment is done, with a new
// segment, and reports whether writes are taken. Writer only.
func (s *Store) resumeAfterFailedSync() bool {
	if s.syncFailedAt == 0 {
		return true
	}
	if s.seg != nil || s.checkpointed.Load() < s.syncFailedAt {
		return false
	}
	next, err := createSegment(s.dir, s.nextSeq, s.cfg.Now())
	if err != nil {
		s.cfg.Logger.Error("boltstore: new write-ahead log segment", "err", err)
		return false
	}
	s.seg = next
	s.mu.Lock()
	// The segment of an append's failure is gone too.
	s.syncFailedAt, s.syncFailed, s.failed, s.unsynced = 0, nil, nil, 0
	s.mu.Unlock()
	s.cfg.Logger.Info("boltstore: the writes that waited for the failed sync are in the bbolt file; writes are taken again")
	return true
}

// handOverFailed hands the segment a failed sync left to the checkpointer
// unsynced, torn or not, and makes no new one until the checkpoint is done
// (resumeAfterFailedSync): the segment stays the last, whose damaged end
// Open takes for writes never synced. It asks again while the checkpoint
// fails. Writer only.
func (s *Store) handOverFailed() {
	// Done once a checkpoint has copied the writes up to the failure and
	// the segment is handed over: a checkpoint queued before the failure
	// may have copied them (each copies every pending write), with the
	// segment still here, which must go all the same.
	if s.seg == nil && s.checkpointed.Load() >= s.syncFailedAt || len(s.ckpts) > 0 {
		return
	}
	s.mu.Lock()
	index := s.index
	s.mu.Unlock()
	var segs []string
	if g := s.seg; g != nil {
		g.f.Close()
		segs, s.nextSeq, s.seg = []string{g.path}, g.seq+1, nil
	}
	s.ckpts <- checkpoint{index: index, segs: segs}
}

// maxSegment is the size at which a segment is closed and checkpointed
// without waiting for CheckpointInterval.
const maxSegment = 16 << 20

// rotate closes the current segment and hands its writes to the
// checkpointer, when it holds any, is old (or, if onlyBig, large) enough,
// and the checkpointer is free. Writer only.
func (s *Store) rotate(onlyBig bool) {
	if s.syncFailedAt != 0 {
		s.handOverFailed()
		return
	}
	g := s.seg
	if g.size == 0 || g.torn {
		return
	}
	if g.size < maxSegment && (onlyBig || s.cfg.Now().Sub(g.opened) < s.cfg.CheckpointInterval) {
		return
	}
	if len(s.ckpts) > 0 {
		return // one is waiting already: keep appending to this segment
	}
	s.mu.Lock()
	index, failed := s.index, s.failed
	s.mu.Unlock()
	if failed != nil {
		return
	}
	// Only the last segment may end in writes that were never synced: Open
	// tells them from damage by that. (After a failed sync, the next
	// rotation hands this segment over as it is: see syncWaiting.)
	if s.syncWaiting(); s.unsynced > 0 {
		return
	}
	next, err := createSegment(s.dir, g.seq+1, s.cfg.Now())
	if err != nil {
		s.cfg.Logger.Error("boltstore: new write-ahead log segment", "err", err)
		return // keep appending to this one
	}
	g.f.Close()
	s.seg = next
	s.ckpts <- checkpoint{index: index, segs: []string{g.path}}
}

// commit makes a batch durable with one log append. A request whose
// condition fails gets ErrConflict and changes nothing; the others commit.
func (s *Store) commit(batch []*writeReq) {
	if !s.resumeAfterFailedSync() {
		refuse(batch, s.syncFailed)
		return
	}
	results := make([]writeResult, len(batch))
	changes := make([]atlas.Change, 0, len(batch))
	// Conditions are checked against the file, the pending writes and
	// those earlier in the batch (local: key -> index, 0 when deleted).
	tx, err := s.beginRead()
	if err != nil {
		refuse(batch, fmt.Errorf("boltstore: %w", err))
		return
	}
	b := tx.Bucket(bucketKV)
	local := make(map[string]uint64)
	exists := func(key string) (index uint64, err error) {
		if i, ok := local[key]; ok {
			return i, nil
		}
		if p, ok := s.pending[key]; ok {
			if p.deleted {
				return 0, nil
			}
			return p.kv.Index, nil
		}
		v := b.Get([]byte(key))
		if v == nil {
			return 0, nil
		}
		if len(v) < 16 {
			return 0, fmt.Errorf("boltstore: corrupt entry %q", key)
		}
		return binary.BigEndian.Uint64(v), nil
	}
	now := s.cfg.Now()
	index := s.index
	for i, req := range batch {
		if err := s.checkLocked(exists, req, now); err != nil {
			results[i] = writeResult{err: err}
			continue
		}
		index++
		change := atlas.Change{Index: index}
		for _, op := range req.ops {
			kv := atlas.ChangedKV{KV: atlas.KV{Key: op.Key, Index: index}}
			if op.Delete {
				if cur, err := exists(op.Key); err != nil || cur == 0 {
					continue
				}
				kv.Deleted, kv.Expired = true, req.expire
				local[op.Key] = 0
			} else {
				kv.Value, kv.TTL = op.Value, op.TTL
				local[op.Key] = index
			}
			change.KVs = append(change.KVs, kv)
		}
		results[i] = writeResult{index: index}
		changes = append(changes, change)
	}
	tx.Rollback()
	s.mu.Unlock()

	// The batch is synced before it is acknowledged, unless every op of it
	// may be synced later, the unsynced writes stay within maxUnsynced,
	// and the log works (failed is the writer's to set: no lock needed).
	later := s.unsynced+len(changes) <= maxUnsynced && s.failed == nil
	for i, req := range batch {
		if results[i].err == nil && !syncLater(req.ops) {
			later = false
			break
		}
	}
	if len(changes) > 0 && !later {
		// The frames waiting for a sync are synced first (see append).
		if s.syncWaiting(); s.syncFailedAt != 0 {
			refuse(batch, s.syncFailed)
			return
		}
	}
	if len(changes) > 0 {
		if err := s.seg.append(changes, later); err != nil {
			// The batch is refused, and the segment cut back to its last
			// acknowledged frame (now or, if that fails, before the next
			// append): a full disk refuses writes until space is freed.
			err = fmt.Errorf("%w: boltstore: write-ahead log %s: %v", atlas.ErrUnavailable, s.seg.path, err)
			if s.unsynced > 0 {
				// Frames acknowledged before their sync wait in the
				// segment, and a failed write or fdatasync of the file
				// may have lost them: Linux reports a writeback error
				// once, so a later sync that works would not say so.
				// As when their own sync fails (syncWaiting), the
				// checkpoint copies them from memory first.
				s.mu.Lock()
				s.syncFailedAt = s.index
				s.syncFailed = err
				s.mu.Unlock()
				s.cfg.Logger.Error("boltstore: writing the write-ahead log failed with writes waiting for their sync; writes are refused until a checkpoint has copied those into the file", "err", err)
				refuse(batch, err)
				return
			}
			s.mu.Lock()
			first := s.failed == nil
			s.failed = err
			s.mu.Unlock()
			if first {
				s.cfg.Logger.Error("boltstore: writing the write-ahead log failed; writes are refused until it works again (the error is not logged again until then)", "err", err)
			}
			refuse(batch, err)
			return
		}
	}
	switch {
	case len(changes) == 0:
	case later:
		s.unsynced += len(changes)
	default:
		s.unsynced = 0 // the sync covered them
	}
	now = s.cfg.Now()
	s.mu.Lock()
	if s.failed != nil && len(changes) > 0 {
		s.failed = nil
		s.cfg.Logger.Info("boltstore: writing the write-ahead log works again")
	}
	for _, c := range changes {
		s.index = c.Index
		for _, kv := range c.KVs {
			s.pending[kv.Key] = &pendingKV{kv: kv.KV, deleted: kv.Deleted}
			if kv.Deleted || kv.TTL == 0 {
				s.dropLeaseLocked(kv.Key)
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

// syncLater reports whether every op may be synced after the write is
// acknowledged.
func syncLater(ops []atlas.Op) bool {
	for _, op := range ops {
		if !op.SyncLater {
			return false
		}
	}
	return true
}

// refuse answers every request of a batch that was not written with err.
func refuse(batch []*writeReq, err error) {
	for _, req := range batch {
		req.reply <- writeResult{err: err}
	}
}

// checkLocked returns ErrConflict unless every condition of req holds. A
// lease sweeper's delete also needs the lease to be still expired: a
// KeepAlive may have come in since the sweep.
func (s *Store) checkLocked(exists func(string) (uint64, error), req *writeReq, now time.Time) error {
	for _, op := range req.ops {
		if op.IfIndex == nil {
			continue
		}
		cur, err := exists(op.Key)
		if err != nil {
			return err
		}
		if cur != *op.IfIndex {
			return atlas.ErrConflict
		}
		if req.expire {
			l, ok := s.leases[op.Key]
			if ok && s.mono(now) < l.expires { // as the sweeper has it
				return atlas.ErrConflict
			}
		}
	}
	return nil
}

// checkpointer copies the log's writes into the file and deletes the
// segments that held them.
func (s *Store) checkpointer() {
	defer s.wg.Done()
	var left []string // segments of checkpoints that failed
	// What Open read, then what each burst of checkpoints (and each
	// Snapshot) touched, is unmapped unmapAfter later.
	unmap, armed := time.NewTimer(unmapAfter), true
	defer unmap.Stop()
	arm := func() {
		if !armed {
			unmap.Reset(unmapAfter)
			armed = true
		}
	}
	for {
		var c checkpoint
		select {
		case <-s.ctx.Done():
			return
		case <-unmap.C:
			armed = false
			s.unmapFile()
			continue
		case <-s.touched:
			arm()
			continue
		case c = <-s.ckpts:
		}
		arm()
		left = append(left, c.segs...)
		index, err := s.checkpoint(c.index)
		if err != nil {
			// The writes stay in the log and in memory; the next
			// checkpoint (which copies every pending write up to its
			// index, these too), or the next Open, tries again.
			s.cfg.Logger.Error("boltstore: checkpoint failed", "err", err)
			continue
		}
		if err := removeSegments(s.dir, left); err != nil {
			s.cfg.Logger.Error("boltstore: removing checkpointed log segments", "err", err)
			continue // the next checkpoint tries again
		}
		left = nil
		s.checkpointed.Store(index)
	}
}

// unmapAfter is how long after a checkpoint or a Snapshot the file's pages
// are unmapped (unmapFile): once a second at most under a steady stream of
// checkpoints, each of which maps again only the pages it touches.
const unmapAfter = time.Second

// unmapFile takes the file's pages out of this process's page tables.
// Atlas reads the file only at Open and in Snapshot and writes it only in
// checkpoints (its state is in memory), yet every page these touch would
// stay mapped and counted in its RSS: 3.1 MB at 10,000 instances of ten
// services registered in turn. They stay in the kernel's page cache, as
// they would anyway, where the kernel reclaims them more readily than
// mapped ones; the next read of one maps it again. The read transaction
// keeps bbolt from moving its mapping meanwhile (it remaps only with none
// open); unmapPages stops at the mapping's end.
func (s *Store) unmapFile() {
	tx, err := s.db.Begin(false)
	if err != nil {
		return // closed, or failing: the next checkpoint says so
	}
	defer tx.Rollback()
	if err := unmapPages(s.db.Info().Data, tx.Size(), s.db.Path()); err != nil && !s.unmapFailed {
		s.unmapFailed = true
		s.cfg.Logger.Warn("boltstore: unmapping the file's pages failed; they stay in the RSS", "err", err)
	}
}

// checkpoint writes into the file every pending write, in one bbolt
// transaction, with the index they reach (at least index, the end of the
// segments handed over), forgets them and returns that index.
//
// Every pending write, not those up to index alone: pending holds a key's
// latest write only, so a key written in a handed-over segment and again
// after it has no write up to index left to copy, and its segment is
// about to go. Copying only up to index, the later write (acknowledged
// before its sync, say) was the key's only copy on disk, and a power loss
// that took it took the earlier, synced write too.
func (s *Store) checkpoint(index uint64) (uint64, error) {
	type entry struct {
		key string
		p   *pendingKV
	}
	s.mu.Lock()
	todo := make([]entry, 0, len(s.pending))
	for k, p := range s.pending {
		todo = append(todo, entry{k, p})
	}
	// Every write up to s.index is in the file or pending.
	index = max(index, s.index)
	s.mu.Unlock()
	// In key order, bbolt touches each page once.
	slices.SortFunc(todo, func(a, b entry) int { return cmp.Compare(a.key, b.key) })
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketKV)
		for _, e := range todo {
			if err := putKV(b, e.p.kv, e.p.deleted); err != nil {
				return err
			}
		}
		// Also when there was nothing to copy (the writes deleted
		// nothing): the log up to it is about to go, and Open replays
		// from the file's index on.
		return putIndex(tx, index)
	})
	if err != nil {
		return 0, fmt.Errorf("boltstore: checkpoint: %w", err)
	}
	s.mu.Lock()
	for _, e := range todo {
		if s.pending[e.key] == e.p { // not written again meanwhile
			delete(s.pending, e.key)
		}
	}
	s.checkpoints.Add(1)
	s.mu.Unlock()
	return index, nil
}

// beginRead begins a read transaction of the file that agrees with the
// pending writes, and returns holding mu (not on error).
//
// The transaction begins before mu is taken. Beginning one waits while a
// checkpoint grows the file's mapping, which waits in turn for every open
// read transaction, a long Snapshot's say; holding mu meanwhile would stall
// heartbeats (KeepAlive) for as long. A checkpoint that forgot pending
// writes between the two may have left the transaction behind them: then
// it begins again.
func (s *Store) beginRead() (*bolt.Tx, error) {
	for {
		n := s.checkpoints.Load()
		tx, err := s.db.Begin(false)
		if err != nil {
			return nil, err
		}
		s.mu.Lock()
		if s.checkpoints.Load() == n {
			return tx, nil
		}
		s.mu.Unlock()
		tx.Rollback()
	}
}

// sweeper deletes keys whose leases ran out, every SweepInterval.
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
		s.sweep()
	}
}

// stallAfter is how much later than due a sweep must come for the store
// to take the time since the last as time it did not run.
const stallAfter = time.Second

// sweep deletes the keys whose leases ran out. The delete is conditional
// on the key's index, so a key written again in the meantime survives.
//
// A sweep that comes much later than due means that the process did not
// run meanwhile (stopped, its VM frozen, its host overloaded), and so no
// heartbeat could arrive either: rather than expire every instance at
// once, and take every service out of every sidecar's rotation until
// they register again, each lease gets one TTL from now, as after a
// restart. (Eureka's self-preservation answers the same fault.)
func (s *Store) sweep() {
	now := s.cfg.Now()
	var ops []atlas.Op
	s.mu.Lock()
	monoNow := s.mono(now)
	away := time.Duration(monoNow-s.swept) - s.cfg.SweepInterval
	kept := 0
	if away > stallAfter {
		for _, l := range s.leases {
			if fresh := monoNow + int64(l.ttl); l.expires < fresh {
				l.expires = fresh
				kept++
			}
		}
	}
	var expiring []*lease
	for len(s.due) > 0 && s.due[0].due <= monoNow {
		l := heap.Pop(&s.due).(*lease)
		if s.leases[l.key] != l {
			continue // deleted since
		}
		if l.expires > monoNow {
			l.due = l.expires // renewed: look again then
			heap.Push(&s.due, l)
			continue
		}
		ops = append(ops, atlas.Op{Key: l.key, Delete: true, IfIndex: atlas.IfIndex(l.index)})
		l.expiring = true
		expiring = append(expiring, l)
		// Looked at again if the delete does not happen (the key written
		// again in the meantime, or a failed write).
		l.due = s.mono(now.Add(max(l.ttl/4, s.cfg.SweepInterval)))
		heap.Push(&s.due, l)
	}
	// The next sweep measures from this one's start: a stop of the
	// process during this one's deletes is time no heartbeat could come.
	// So is, to it, a wait of those deletes for a disk that stalls for a
	// second and more, in which heartbeats do come: the leases then get a
	// TTL they may not have needed, which delays the expiry of instances
	// that died meanwhile by one TTL. The other way round, a stop that
	// fell in the deletes' wait (a frozen VM) expired every lease that ran
	// out during it. (The deletes of one sweep go many to a sync.)
	s.swept = monoNow
	s.mu.Unlock()
	if kept > 0 {
		s.graced.Store(now.UnixNano())
		s.cfg.Logger.Warn("boltstore: the store did not run for a while (process stopped, host frozen or overloaded, or the last sweep's deletes waited that long for the disk), nor could heartbeats arrive: every lease gets one TTL from now, as after a restart",
			"away", away.Round(time.Millisecond).String(), "leases", kept)
	}
	// Each delete is a write of its own, so that one key written again
	// meanwhile (a conflict) leaves the others to go, and they are queued
	// together, so that the writer commits them many to a sync: one after
	// another, 10,000 keys that ran out together took 10,000 syncs, and
	// stayed listed (and routed to) meanwhile.
	errs := make([]error, len(ops))
	var wg sync.WaitGroup
	for i, op := range ops {
		req := &writeReq{ops: []atlas.Op{op}, reply: make(chan writeResult, 1), expire: true}
		wg.Go(func() { _, errs[i] = s.submit(s.ctx, req) })
	}
	wg.Wait()
	failed, first := 0, error(nil)
	s.mu.Lock()
	for i, err := range errs {
		// A conflict means the key was written again: nothing to do.
		if err != nil && err != atlas.ErrConflict && s.ctx.Err() == nil {
			failed++
			first = cmp.Or(first, err)
		}
		if err != nil && s.leases[expiring[i].key] == expiring[i] {
			// Not deleted: heartbeats renew it again until the next try.
			expiring[i].expiring = false
		}
	}
	s.mu.Unlock()
	// Said once while it lasts: while the log cannot be written every
	// write is refused, and each key is tried again every ttl/4.
	switch {
	case failed > 0 && !s.expireFailing.Swap(true):
		s.cfg.Logger.Error("boltstore: expiring leases failed; expired instances stay listed until writes work again (the error is not logged again until then)", "keys", failed, "err", first)
	case failed == 0 && len(ops) > 0 && s.expireFailing.Swap(false):
		s.cfg.Logger.Info("boltstore: expiring leases works again")
	}
}

// LeasesGraced implements atlas.LeaseGracer.
func (s *Store) LeasesGraced() time.Time {
	if n := s.graced.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
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

// Ping reports whether the file can be read and the log written.
func (s *Store) Ping(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	failed, syncFailed := s.failed, s.syncFailed
	s.mu.Unlock()
	if syncFailed != nil {
		return syncFailed // writes are refused until a checkpoint
	}
	// The last append failed, and no write has been tried since: whether
	// one would work now (once space is freed, say) is what a probe of the
	// log's directory tells.
	if failed != nil && probeDir(s.dir) != nil {
		return failed
	}
	return s.db.View(func(tx *bolt.Tx) error { return nil })
}

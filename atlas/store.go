package atlas

import (
	"context"
	"errors"
	"time"
)

// Store is where Atlas keeps its state: a key-value store with one index
// that only grows (also across restarts) and is at least 1 in a new store,
// so that every write's index is 2 or more, conditional transactions, leases
// the store owns and expires, and a stream of committed changes.
//
// Atlas keeps a cache of everything in memory, built from Snapshot and kept
// current from Watch, so that several Atlas replicas over one shared store
// (etcd) serve one truth: a write through any replica reaches all of them
// through Watch.
type Store interface {
	// Snapshot returns every entry and the index they are current at.
	Snapshot(ctx context.Context) (index uint64, kvs []KV, err error)
	// Txn applies ops atomically, all or none, and returns the index of the
	// write. When an op's condition does not hold it returns ErrConflict and
	// writes nothing.
	Txn(ctx context.Context, ops []Op) (index uint64, err error)
	// KeepAlive renews the lease of a leased key and returns when it will
	// expire now. It returns ErrNotFound when the key is gone or has no lease.
	// It must not write to disk in the embedded store.
	KeepAlive(ctx context.Context, key string) (expires time.Time, err error)
	// Watch delivers, in index order, every change committed after index.
	// The channel closes when ctx ends or the watcher falls too far behind;
	// the caller then watches again from the last index it applied. It
	// returns ErrCompacted when the history after index is gone, and the
	// caller starts again from a Snapshot.
	Watch(ctx context.Context, after uint64) (<-chan Change, error)
	// Close releases the store. It is safe to call more than once.
	Close() error
}

// LeaseReader is implemented by stores whose leases other processes renew
// too (etcd: a heartbeat may reach any replica). What a server has seen
// renewed itself is then not the lease's end, and reads ask the store.
type LeaseReader interface {
	// LeaseEnd returns when the lease of a leased key was last renewed
	// and when it ends, as the store counts them. It returns ErrNotFound
	// when the key is gone or has no lease.
	LeaseEnd(ctx context.Context, key string) (renewed, expires time.Time, err error)
}

// Syncer is implemented by stores that other servers write to as well
// (etcd): a write made through another replica reaches this one's memory
// a moment later, so before it answers that something does not exist, a
// server waits until its memory holds every write the store had.
type Syncer interface {
	// CurrentIndex returns the index of the store's last write.
	CurrentIndex(ctx context.Context) (uint64, error)
}

// LeaseGracer is implemented by stores that give every lease one TTL
// from when they find they did not run for a while (a stopped process, a
// frozen host), as after a restart: no heartbeat could arrive meanwhile.
type LeaseGracer interface {
	// LeasesGraced returns when that last happened; the zero time if never.
	LeasesGraced() time.Time
}

// KV is one stored entry.
type KV struct {
	Key   string
	Value []byte
	// Index is the index of the write that last put this key.
	Index uint64
	// TTL > 0 means the key is leased: it is deleted TTL after the last Put
	// or KeepAlive, and after a store restart, TTL after the restart.
	TTL time.Duration
}

// Op is one write of a Txn.
type Op struct {
	Key string
	// Value is written unless Delete is set.
	Value  []byte
	Delete bool
	// TTL > 0 leases the key (Put only).
	TTL time.Duration
	// IfIndex, when not nil, is a condition: the key's current Index must be
	// *IfIndex, where 0 means the key must not exist.
	IfIndex *uint64
	// SyncLater lets the store acknowledge the write once it is written,
	// before it is synced to disk, as PostgreSQL's asynchronous commit
	// does: a crash of the process loses none of it, a crash of the machine
	// may lose it (the embedded store syncs it within 10ms). Atlas sets it
	// on the instance writes that their caller makes again by itself, when
	// the request says so (?sync=later: a sidecar's): a registration of a
	// new id (the next heartbeat gets 404 and registers again), or one
	// that changes only the status or output, and a heartbeat's status or
	// output (the next heartbeat carries it). A Txn is synced before it is
	// acknowledged unless all of its ops set it; the etcd store syncs
	// everything.
	SyncLater bool
}

// Change is one committed write as seen by Watch.
type Change struct {
	Index uint64
	// KVs are the entries written; a deleted entry has Deleted set and no
	// Value.
	KVs []ChangedKV
}

// ChangedKV is one entry of a Change.
type ChangedKV struct {
	KV
	Deleted bool
	// Expired is set when the store knows that it deleted the key because
	// its lease ran out (the embedded store does; etcd cannot tell).
	Expired bool
}

// Store errors.
var (
	ErrConflict  = errors.New("store: condition failed")
	ErrNotFound  = errors.New("store: key not found")
	ErrCompacted = errors.New("store: history compacted")
	ErrClosed    = errors.New("store: closed")
	// ErrUnavailable wraps errors of a store that cannot be reached (an
	// etcd cluster without quorum): Atlas answers 503.
	ErrUnavailable = errors.New("store: unavailable")
)

// IfIndex is a helper for Op.IfIndex.
func IfIndex(i uint64) *uint64 { return &i }

package boltstore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchboard-go/switchboard/atlas"
)

// Every write of a leased key pushed a lease into the heap, and the old
// ones stayed until their own due time (a day for a day's TTL): the heap
// grew with the writes, not the keys.
func TestTheLeaseHeapHoldsEachLeaseOnce(t *testing.T) {
	s := openLater(t, filepath.Join(t.TempDir(), "atlas.db"), time.Hour, time.Hour)
	defer s.Close()
	for range 20000 {
		if _, err := s.Txn(context.Background(), []atlas.Op{{Key: "i/a", Value: []byte("x"), TTL: 24 * time.Hour, SyncLater: true}}); err != nil {
			t.Fatal(err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t.Logf("leases %d, heap entries %d", len(s.leases), len(s.due))
	if len(s.due) > 10*len(s.leases) {
		t.Fatalf("heap holds %d entries for %d lease(s)", len(s.due), len(s.leases))
	}
}

// A KeepAlive that came while the sweeper's delete of the key was being
// synced renewed the lease the delete then removed: the heartbeat was
// answered as renewed, and the instance was gone. It is not found now,
// so that the sidecar registers again at once.
func TestAHeartbeatDuringItsKeysExpiryIsNotFound(t *testing.T) {
	var slow atomic.Bool
	inSync := make(chan struct{}, 1)
	syncLog = func(f *os.File) error {
		if slow.Load() {
			select {
			case inSync <- struct{}{}:
			default:
			}
			time.Sleep(300 * time.Millisecond)
		}
		return fdatasync(f)
	}
	s := openSweeping(t)
	ctx := context.Background()
	if _, err := s.Txn(ctx, []atlas.Op{{Key: "i/a", Value: []byte("x"), TTL: 100 * time.Millisecond}}); err != nil {
		t.Fatal(err)
	}
	slow.Store(true)
	<-inSync // the sweeper's delete is being synced
	exp, err := s.KeepAlive(ctx, "i/a")
	t.Logf("KeepAlive during the delete: expires %v, err %v", exp, err)
	time.Sleep(400 * time.Millisecond)
	slow.Store(false)
	_, kvs, _ := s.Snapshot(ctx)
	if err == nil && len(kvs) == 0 {
		t.Fatalf("KeepAlive answered renewed until %v, and the key was deleted as expired right after", exp.Format(time.StampMilli))
	}
}

// A stop of the process while a sweep deleted an expired key was not seen
// as a stop (the next sweep measured from the end of that one, after the
// stop), so every lease that ran out meanwhile expired without the grace.
func TestAStopDuringASweepGetsTheGrace(t *testing.T) {
	s, advance, logged := openClocked(t, 50*time.Millisecond)
	ctx := context.Background()
	has := func(key string) bool {
		_, kvs, _ := s.Snapshot(ctx)
		for _, kv := range kvs {
			if kv.Key == key {
				return true
			}
		}
		return false
	}
	for _, k := range []struct {
		key string
		ttl time.Duration
	}{{"a", time.Second}, {"b", 2 * time.Second}} {
		if _, err := s.Txn(ctx, []atlas.Op{{Key: k.key, Value: []byte("x"), TTL: k.ttl}}); err != nil {
			t.Fatal(err)
		}
	}
	var armed atomic.Bool
	armed.Store(true)
	syncLog = func(f *os.File) error {
		if armed.CompareAndSwap(true, false) {
			advance(10 * time.Second) // the process stopped during this fdatasync
		}
		return fdatasync(f)
	}
	t.Cleanup(func() { syncLog = fdatasync })
	for range 3 { // 1.5 s: a expires, its delete is where the stop falls
		advance(500 * time.Millisecond)
		s.sweep()
	}
	if armed.Load() {
		t.Fatal("no delete was synced")
	}
	advance(100 * time.Millisecond)
	s.sweep()
	if !has("b") {
		t.Fatalf("b (2 s TTL, 0.5 s left when the process stopped for 10 s) expired at the first sweep after; grace logged: %v",
			strings.Contains(logged(), "did not run"))
	}
}

// Expiring keys are deleted one synced write after another: N keys that
// expire together take N fdatasyncs in a row.
func TestKeysThatRunOutTogetherGoManyToASync(t *testing.T) {
	var syncs atomic.Int64
	syncLog = func(f *os.File) error { syncs.Add(1); time.Sleep(2 * time.Millisecond); return fdatasync(f) } // a 2 ms disk
	s := openSweeping(t)
	ctx := context.Background()
	var ops []atlas.Op
	for i := range 500 {
		ops = append(ops, atlas.Op{Key: fmt.Sprintf("i/%d", i), Value: []byte("x"), TTL: 200 * time.Millisecond})
	}
	if _, err := s.Txn(ctx, ops); err != nil {
		t.Fatal(err)
	}
	syncs.Store(0)
	for {
		_, kvs, _ := s.Snapshot(ctx)
		if len(kvs) == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := syncs.Load(); n > 50 {
		t.Fatalf("500 keys that ran out together took %d fdatasyncs to delete; want them many to a sync", n)
	}
}

// openSweeping opens a store that sweeps every 10 ms, with syncLog put
// back and the store closed when the test ends.
func openSweeping(t *testing.T) *Store {
	t.Helper()
	t.Cleanup(func() { syncLog = fdatasync })
	s, err := Open(Config{Path: filepath.Join(t.TempDir(), "atlas.db"), SweepInterval: 10 * time.Millisecond, CheckpointInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

package boltstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchboard-go/switchboard/atlas"
)

// A checkpoint that must grow the file's mapping waits for every open
// read transaction, such as a long Snapshot's. Heartbeats (KeepAlive)
// must not wait with it: the writer begins its own read transaction
// without holding the store's lock.
func TestHeartbeatsGoOnWhileACheckpointWaitsForASnapshot(t *testing.T) {
	s := openT(t, filepath.Join(t.TempDir(), "atlas.db"), 5*time.Millisecond, nil)
	defer s.Close()
	ctx := context.Background()
	if _, err := s.Txn(ctx, []atlas.Op{{Key: "leased", Value: []byte("x"), TTL: time.Hour}}); err != nil {
		t.Fatal(err)
	}
	// A long Snapshot, as far as bbolt can tell.
	read, err := s.db.Begin(false)
	if err != nil {
		t.Fatal(err)
	}
	released := false
	release := func() {
		if !released {
			released = true
			read.Rollback()
		}
	}
	defer release()
	// Enough for the next checkpoint to grow the mapping, which then waits
	// for the read transaction above; and writes after that, whose
	// transaction waits behind the checkpoint.
	big := make([]byte, 64<<10)
	var (
		writes sync.WaitGroup
		wrote  atomic.Int32
	)
	for i := range 64 {
		writes.Add(1)
		go func() {
			defer writes.Done()
			if _, err := s.Txn(ctx, []atlas.Op{{Key: fmt.Sprintf("big-%02d", i), Value: big}}); err != nil {
				t.Error(err)
			}
			wrote.Add(1)
		}()
		time.Sleep(time.Millisecond)
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.KeepAlive(ctx, "leased")
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Error(err)
		}
		if wrote.Load() == 64 {
			t.Error("every write went through: no checkpoint waited for the read transaction, so the test showed nothing")
		}
	case <-time.After(5 * time.Second):
		release()
		writes.Wait()
		t.Fatal("KeepAlive waited for the checkpoint, which waited for the read transaction")
	}
	release()
	writes.Wait()
}

// A write that committed is never reported as failed, also when Close
// comes while it is on its way: after Close, a reopened store holds every
// write that was acknowledged and none that was refused.
func TestCloseNeverRefusesACommittedWrite(t *testing.T) {
	dir := t.TempDir()
	for round := range 20 {
		path := filepath.Join(dir, fmt.Sprintf("atlas-%02d.db", round))
		s := openT(t, path, 5*time.Millisecond, nil)
		var (
			mu      sync.Mutex
			acked   = map[string]bool{}
			refused = map[string]bool{}
			wg      sync.WaitGroup
		)
		for c := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					key := fmt.Sprintf("k-%d-%d", c, i)
					_, err := s.Txn(context.Background(), []atlas.Op{{Key: key, Value: []byte("v")}})
					mu.Lock()
					if err == nil {
						acked[key] = true
					} else {
						refused[key] = true
					}
					mu.Unlock()
					if err != nil {
						if !errors.Is(err, atlas.ErrClosed) {
							t.Errorf("%s: %v", key, err)
						}
						return
					}
				}
			}()
		}
		time.Sleep(time.Duration(round%5+1) * time.Millisecond)
		err := s.Close()
		wg.Wait()
		if err != nil {
			t.Fatal(err)
		}
		s = openT(t, path, time.Hour, nil)
		_, got := snapshotOf(t, s)
		s.Close()
		for k := range acked {
			if _, ok := got[k]; !ok {
				t.Fatalf("round %d: %s was acknowledged and is gone", round, k)
			}
		}
		for k := range refused {
			if _, ok := got[k]; ok {
				t.Fatalf("round %d: %s was refused (ErrClosed) and is there", round, k)
			}
		}
	}
}

// A store that did not run for longer than a lease (its process stopped,
// its VM frozen) expired, at the first sweep after, every lease whose
// heartbeat had not got in first: every instance, while no heartbeat could
// arrive. Each lease now gets one TTL from then, as after a restart; one
// not renewed after that still runs out, as does one in a store that ran.
func TestLeasesOutliveATimeTheStoreDidNotRun(t *testing.T) {
	s, advance, logged := openClocked(t, 50*time.Millisecond)
	ctx := context.Background()
	has := func(key string) bool {
		_, kvs, err := s.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range kvs {
			if kv.Key == key {
				return true
			}
		}
		return false
	}
	// Time goes by in steps of 500 ms, swept after each (the sweeper runs
	// by the real clock too; sweeping here makes each step's outcome sure).
	step := func(n int) {
		for range n {
			advance(500 * time.Millisecond)
			s.sweep()
		}
	}
	if _, err := s.Txn(ctx, []atlas.Op{{Key: "ran", Value: []byte("x"), TTL: 2 * time.Second}}); err != nil {
		t.Fatal(err)
	}
	step(5)
	if has("ran") {
		t.Fatal("a lease not renewed for 2.5 s of a 2 s TTL is still there")
	}

	if _, err := s.Txn(ctx, []atlas.Op{{Key: "stopped", Value: []byte("x"), TTL: 2 * time.Second}}); err != nil {
		t.Fatal(err)
	}
	step(2)
	advance(10 * time.Second) // the process stopped
	s.sweep()
	if !has("stopped") {
		t.Fatal("a lease ran out while the store did not run")
	}
	if said := logged(); !strings.Contains(said, "did not run for a while") || !strings.Contains(said, "leases=1") {
		t.Fatalf("log: %q; want the stall and the lease it kept", said)
	}
	step(3)
	if !has("stopped") {
		t.Fatal("the lease kept after the stall ran out before one TTL from the stall's end")
	}
	step(2)
	if has("stopped") {
		t.Fatal("the lease kept after the stall never ran out")
	}
}

// openClocked opens a store whose clock moves only by advance, sweeping
// every sweep by the real clock, and returns it with what it logged.
func openClocked(t *testing.T, sweep time.Duration) (s *Store, advance func(time.Duration), logged func() string) {
	t.Helper()
	var (
		mu   sync.Mutex
		now  = time.Now()
		logs bytes.Buffer
	)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s, err := Open(Config{Path: filepath.Join(t.TempDir(), "atlas.db"), SweepInterval: sweep, Now: clock,
		Logger: slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	advance = func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	logged = func() string { mu.Lock(); defer mu.Unlock(); return logs.String() }
	return s, advance, logged
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// Once the log cannot be written, every expired key failed to be deleted
// every ttl/4, each logged: hundreds of lines a second for a fleet, onto
// the disk that may be the one full. It is said once while it lasts.
func TestFailingExpiriesAreLoggedOnce(t *testing.T) {
	s, advance, logged := openClocked(t, 100*time.Millisecond) // each key tried every ttl/4: every step
	ctx := context.Background()
	for i := range 3 {
		if _, err := s.Txn(ctx, []atlas.Op{{Key: fmt.Sprintf("k%d", i), Value: []byte("x"), TTL: 2 * time.Second}}); err != nil {
			t.Fatal(err)
		}
	}
	syncLog = func(*os.File) error { return errors.New("no space left on device") }
	t.Cleanup(func() { syncLog = fdatasync })
	for range 20 { // 10 s by steps of 500 ms
		advance(500 * time.Millisecond)
		s.sweep()
	}
	said := logged()
	if n := strings.Count(said, "expiring leases failed"); n != 1 {
		_, kvs, _ := s.Snapshot(ctx)
		t.Fatalf("%d lines about failed expiries in 10 s of 3 expired keys, want 1 (%d keys left):\n%s", n, len(kvs), said)
	}
}

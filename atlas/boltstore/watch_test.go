package boltstore

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/switchboard-go/switchboard/atlas"
)

// A watcher that resumes from further back than it may hold unread (Atlas
// re-watches from its last applied index after it was dropped for falling
// behind, so more than 1024 changes are waiting by then) gets every change
// in order, never a gap: the watcher is dropped once it is full, and
// watches again from the last change it got.
func TestWatchFromFurtherBackThanItHoldsMissesNothing(t *testing.T) {
	s := openT(t, filepath.Join(t.TempDir(), "atlas.db"), time.Hour, nil)
	defer s.Close()
	ctx := context.Background()
	after, _ := snapshotOf(t, s)
	// More than a watcher holds (1024), fewer than the history keeps (2048).
	var wg sync.WaitGroup
	for w := range 15 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				if _, err := s.Txn(ctx, []atlas.Op{{Key: fmt.Sprintf("k-%d-%d", w, i), Value: []byte("v")}}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()

	applied := after
	ch, err := s.Watch(ctx, applied)
	if err != nil {
		t.Fatal(err)
	}
	// Take what the watch has delivered so far, then one more write.
	for len(ch) > 0 {
		c, ok := <-ch
		if !ok {
			break
		}
		if c.Index != applied+1 {
			t.Fatalf("Watch(%d) gave change %d after %d", after, c.Index, applied)
		}
		applied = c.Index
	}
	last, err := s.Txn(ctx, []atlas.Op{{Key: "last", Value: []byte("v")}})
	if err != nil {
		t.Fatal(err)
	}
	// Follow as Atlas does: when the channel closes, watch again from the
	// last change applied.
	deadline := time.After(30 * time.Second)
	for applied < last {
		select {
		case c, ok := <-ch:
			if !ok {
				if ch, err = s.Watch(ctx, applied); err != nil {
					t.Fatalf("Watch(%d) again: %v", applied, err)
				}
				continue
			}
			if c.Index != applied+1 {
				t.Fatalf("Watch(%d) gave change %d after %d: changes %d to %d were missed", after, c.Index, applied, applied+1, c.Index-1)
			}
			applied = c.Index
		case <-deadline:
			t.Fatalf("after 30s the watcher is at %d; the store at %d", applied, last)
		}
	}
}

// A watcher dropped for falling behind left its goroutine (and its
// 1024-slot channel) until the watch's context ended, which for Atlas's
// is its lifetime.
func TestADroppedWatcherLeavesNoGoroutine(t *testing.T) {
	s := openLater(t, filepath.Join(t.TempDir(), "atlas.db"), time.Hour, time.Hour)
	defer s.Close()
	ctx := context.Background()
	before := runtime.NumGoroutine()
	for round := range 5 {
		idx, _ := snapshotOf(t, s)
		ch, err := s.Watch(ctx, idx)
		if err != nil {
			t.Fatal(err)
		}
		for range 1030 {
			put(t, s, "i/a", "x", true)
		}
		n := 0
		for range ch {
			n++
		}
		t.Logf("round %d: watcher dropped after %d changes", round, n)
	}
	time.Sleep(50 * time.Millisecond)
	s.mu.Lock()
	w := len(s.watchers)
	s.mu.Unlock()
	t.Logf("goroutines before %d, after 5 dropped watchers %d; live watchers %d", before, runtime.NumGoroutine(), w)
	if runtime.NumGoroutine()-before >= 5 {
		t.Fatalf("leaked %d goroutines", runtime.NumGoroutine()-before)
	}
}

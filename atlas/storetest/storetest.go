// Package storetest is the conformance suite every atlas.Store passes:
// indexes that only grow, conditional transactions, leases the store
// expires, and a change stream that misses nothing.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/switchboard-go/switchboard/atlas"
)

// Run runs the suite. open returns a new, empty store; the suite closes it.
func Run(t *testing.T, open func(t *testing.T) atlas.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s atlas.Store)
	}{
		{"IndexGrows", testIndexGrows},
		{"Conditions", testConditions},
		{"Snapshot", testSnapshot},
		{"LeaseExpires", testLeaseExpires},
		{"KeepAlive", testKeepAlive},
		{"WatchInOrder", testWatchInOrder},
		{"WatchReplays", testWatchReplays},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t)
			defer s.Close()
			tt.fn(t, s)
		})
	}
}

func put(key, val string) atlas.Op { return atlas.Op{Key: key, Value: []byte(val)} }

func mustTxn(t *testing.T, s atlas.Store, ops ...atlas.Op) uint64 {
	t.Helper()
	idx, err := s.Txn(context.Background(), ops)
	if err != nil {
		t.Fatalf("Txn(%v): %v", ops, err)
	}
	return idx
}

func get(t *testing.T, s atlas.Store, key string) (atlas.KV, bool) {
	t.Helper()
	_, kvs, err := s.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range kvs {
		if kv.Key == key {
			return kv, true
		}
	}
	return atlas.KV{}, false
}

func testIndexGrows(t *testing.T, s atlas.Store) {
	// Atlas answers index 1 for what holds nothing yet; a write must be
	// newer than that.
	last, _, err := s.Snapshot(context.Background())
	if err != nil || last < 1 {
		t.Fatalf("new store: Snapshot index = %d, %v; want at least 1", last, err)
	}
	for i := range 20 {
		idx := mustTxn(t, s, put(fmt.Sprintf("k%d", i%3), "v"))
		if idx <= last {
			t.Fatalf("index %d after %d; want it to grow", idx, last)
		}
		last = idx
	}
	idx, _, err := s.Snapshot(context.Background())
	if err != nil || idx != last {
		t.Fatalf("Snapshot index = %d, %v; want %d", idx, err, last)
	}
}

func testConditions(t *testing.T, s atlas.Store) {
	ctx := context.Background()
	i1 := mustTxn(t, s, atlas.Op{Key: "a", Value: []byte("1"), IfIndex: atlas.IfIndex(0)})
	if _, err := s.Txn(ctx, []atlas.Op{{Key: "a", Value: []byte("2"), IfIndex: atlas.IfIndex(0)}}); !errors.Is(err, atlas.ErrConflict) {
		t.Fatalf("create over an existing key: %v; want ErrConflict", err)
	}
	// A failed condition writes nothing, not even the other ops.
	if _, err := s.Txn(ctx, []atlas.Op{put("b", "x"), {Key: "a", Value: []byte("3"), IfIndex: atlas.IfIndex(i1 + 100)}}); !errors.Is(err, atlas.ErrConflict) {
		t.Fatalf("stale condition: %v; want ErrConflict", err)
	}
	if _, ok := get(t, s, "b"); ok {
		t.Fatal("an op of a refused transaction was written")
	}
	i2 := mustTxn(t, s, atlas.Op{Key: "a", Value: []byte("4"), IfIndex: atlas.IfIndex(i1)})
	kv, _ := get(t, s, "a")
	if string(kv.Value) != "4" || kv.Index != i2 {
		t.Fatalf("a = %q at %d; want 4 at %d", kv.Value, kv.Index, i2)
	}
	mustTxn(t, s, atlas.Op{Key: "a", Delete: true, IfIndex: atlas.IfIndex(i2)})
	if _, ok := get(t, s, "a"); ok {
		t.Fatal("deleted key still there")
	}
}

func testSnapshot(t *testing.T, s atlas.Store) {
	mustTxn(t, s, put("x", "1"), put("y", "2"))
	mustTxn(t, s, atlas.Op{Key: "z", Value: []byte("3"), TTL: time.Hour})
	_, kvs, err := s.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, kv := range kvs {
		got[kv.Key] = string(kv.Value)
		if kv.Key == "z" && kv.TTL != time.Hour {
			t.Errorf("z TTL = %v; want 1h", kv.TTL)
		}
	}
	if got["x"] != "1" || got["y"] != "2" || got["z"] != "3" || len(got) != 3 {
		t.Fatalf("snapshot = %v", got)
	}
}

func testLeaseExpires(t *testing.T, s atlas.Store) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	idx := mustTxn(t, s, atlas.Op{Key: "leased", Value: []byte("v"), TTL: time.Second}, put("kept", "v"))
	ch, err := s.Watch(ctx, idx)
	if err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case c, ok := <-ch:
			if !ok {
				t.Fatal("watch closed before the lease ran out")
			}
			for _, kv := range c.KVs {
				if kv.Key == "leased" && kv.Deleted {
					// Expired is a hint some stores cannot give (etcd does
					// not say why a key went): not checked.
					if _, ok := get(t, s, "kept"); !ok {
						t.Fatal("an unleased key went with the lease")
					}
					return
				}
			}
		case <-ctx.Done():
			t.Fatal("leased key did not expire")
		}
	}
}

func testKeepAlive(t *testing.T, s atlas.Store) {
	ctx := context.Background()
	if _, err := s.KeepAlive(ctx, "nothing"); !errors.Is(err, atlas.ErrNotFound) {
		t.Fatalf("KeepAlive of a missing key: %v; want ErrNotFound", err)
	}
	mustTxn(t, s, put("plain", "v"))
	if _, err := s.KeepAlive(ctx, "plain"); !errors.Is(err, atlas.ErrNotFound) {
		t.Fatalf("KeepAlive of an unleased key: %v; want ErrNotFound", err)
	}
	idx := mustTxn(t, s, atlas.Op{Key: "k", Value: []byte("v"), TTL: time.Second})
	// Renewing every 200ms for 2.5s keeps a 1s lease alive, and writes
	// nothing.
	for range 12 {
		exp, err := s.KeepAlive(ctx, "k")
		if err != nil {
			t.Fatalf("KeepAlive: %v", err)
		}
		if time.Until(exp) < 500*time.Millisecond {
			t.Fatalf("KeepAlive gave expiry %v; want about 1s from now", time.Until(exp))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, ok := get(t, s, "k"); !ok {
		t.Fatal("a renewed lease expired")
	}
	if now, _, _ := s.Snapshot(ctx); now != idx {
		t.Fatalf("index moved from %d to %d on KeepAlive; it must not write", idx, now)
	}
}

func testWatchInOrder(t *testing.T, s atlas.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start, _, _ := s.Snapshot(ctx)
	ch, err := s.Watch(ctx, start)
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	errc := make(chan error, 4)
	for w := range 4 {
		go func() {
			for i := range n / 4 {
				// Half of the writers' writes may be synced later: they
				// keep their place among the others all the same.
				op := put(fmt.Sprintf("w%d-%d", w, i), "v")
				op.SyncLater = w%2 == 1
				if _, err := s.Txn(ctx, []atlas.Op{op}); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
	}
	for range 4 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	last := start
	seen := 0
	timeout := time.After(10 * time.Second)
	for seen < n {
		select {
		case c := <-ch:
			if c.Index != last+1 {
				t.Fatalf("change %d after %d; want every index in order", c.Index, last)
			}
			last = c.Index
			seen += len(c.KVs)
		case <-timeout:
			t.Fatalf("saw %d of %d changes", seen, n)
		}
	}
}

func testWatchReplays(t *testing.T, s atlas.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first := mustTxn(t, s, put("a", "1"))
	mustTxn(t, s, put("b", "2"))
	last := mustTxn(t, s, atlas.Op{Key: "a", Delete: true})
	ch, err := s.Watch(ctx, first)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for len(got) < 2 {
		select {
		case c := <-ch:
			for _, kv := range c.KVs {
				got = append(got, fmt.Sprintf("%d:%s:%v", c.Index, kv.Key, kv.Deleted))
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("replayed %v", got)
		}
	}
	want := []string{fmt.Sprintf("%d:b:false", first+1), fmt.Sprintf("%d:a:true", last)}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("replay = %v; want %v", got, want)
	}
}

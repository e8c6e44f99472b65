package etcdstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/switchboard-go/switchboard/atlas"
	"github.com/switchboard-go/switchboard/atlas/etcdstore"
	"github.com/switchboard-go/switchboard/internal/etcdtest"
)

// TestANoOpWriteReachesTheWatcher: a transaction that changes nothing (a
// delete of a missing key) returns etcd's current revision R; Txn asks for a
// progress notification so that the watcher learns R. When the revision
// moved through keys outside the prefix (another Atlas deployment, or any
// other etcd user), the watcher must still reach R.
func TestANoOpWriteReachesTheWatcher(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	a, err := etcdstore.Open(etcdstore.Config{Endpoints: cluster.Endpoints(), Prefix: "/a/"})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := etcdstore.Open(etcdstore.Config{Endpoints: cluster.Endpoints(), Prefix: "/b/"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	idx, _, err := a.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := a.Watch(ctx, idx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Txn(ctx, []atlas.Op{{Key: "x", Value: []byte("v")}}); err != nil {
		t.Fatal(err)
	}
	r, err := a.Txn(ctx, []atlas.Op{{Key: "missing", Delete: true}})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.After(5 * time.Second)
	for {
		select {
		case c, ok := <-ch:
			if !ok {
				t.Fatal("watch closed")
			}
			if c.Index >= r {
				return
			}
		case <-deadline:
			t.Fatalf("watcher never reached the no-op txn's index %d", r)
		}
	}
}

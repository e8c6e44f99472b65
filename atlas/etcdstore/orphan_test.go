package etcdstore_test

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchboard-go/switchboard/atlas"
	"github.com/switchboard-go/switchboard/atlas/etcdstore"
	"github.com/switchboard-go/switchboard/internal/etcdtest"
)

// TestStatusChangesLeaveNoLeasesBehind: each status change writes the
// instance with a lease of its own; the lease it replaces holds no key
// any more and must not stay in etcd for a whole TTL (an hour here).
func TestStatusChangesLeaveNoLeasesBehind(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	a := startReplica(t, cluster.Endpoints())
	if st, body, _ := do(t, "PUT", a.http.URL+"/v1/instances/x-1", reg("x", 5000, "1h")); st != 200 {
		t.Fatalf("register: %d %s", st, body)
	}
	const changes = 10
	for i := range changes {
		status := []string{"critical", "passing"}[i%2]
		if st, body, _ := do(t, "PUT", a.http.URL+"/v1/instances/x-1/status", `{"status":"`+status+`"}`); st != 200 {
			t.Fatalf("heartbeat: %d %s", st, body)
		}
	}
	if st, body, _ := do(t, "DELETE", a.http.URL+"/v1/instances/x-1", ""); st != 200 && st != 204 {
		t.Fatalf("deregister: %d %s", st, body)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: cluster.Endpoints(), DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx := context.Background()
	// The replica keeps a few leases granted ahead of time (its pool);
	// the replaced ones go in the background.
	var left int
	for deadline := time.Now().Add(20 * time.Second); ; {
		resp, err := cli.Leases(ctx)
		if err != nil {
			t.Fatal(err)
		}
		left = len(resp.Leases)
		if left <= 3 {
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%d leases in etcd after %d status changes and a deregistration; want the pool's few", left, changes)
}

// TestAHeartbeatFollowsALeaseReplacedThroughAnotherReplica: replica 2
// knows the key's lease; a write through replica 1 gives the key a new
// lease and revokes the old one. A heartbeat through replica 2 before its
// watch brings it the write renews the new lease rather than answering
// that the instance is gone.
func TestAHeartbeatFollowsALeaseReplacedThroughAnotherReplica(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	open := func() *etcdstore.Store {
		s, err := etcdstore.Open(etcdstore.Config{Endpoints: cluster.Endpoints(), Prefix: "/follow/"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	s1, s2 := open(), open()
	ctx := context.Background()
	put := []atlas.Op{{Key: "k", Value: []byte("v"), TTL: time.Hour}}
	if _, err := s1.Txn(ctx, put); err != nil {
		t.Fatal(err)
	}
	// Replica 2 learns the lease (it follows no watch here).
	if _, err := s2.KeepAlive(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: cluster.Endpoints(), DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	resp, err := cli.Get(ctx, "/follow/k")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get: %v %v", resp, err)
	}
	old := clientv3.LeaseID(resp.Kvs[0].Lease)
	if _, err := s1.Txn(ctx, put); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the replaced lease is revoked", func() bool {
		ttl, err := cli.TimeToLive(ctx, old)
		return err == nil && ttl.TTL < 0
	})
	if _, err := s2.KeepAlive(ctx, "k"); err != nil {
		t.Fatalf("heartbeat through the replica that knew the old lease: %v", err)
	}
}

package etcdstore

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchboard-go/switchboard/atlas"
	"github.com/switchboard-go/switchboard/internal/etcdtest"
)

// pooled waits until the pool holds n leases of secs seconds.
func pooled(t *testing.T, p *leasePool, secs int64, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		p.mu.Lock()
		have := len(p.free[secs])
		p.mu.Unlock()
		if have >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the pool holds %d leases of %ds after 10s; want %d", have, secs, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPooledLeaseRunsItsWholeTTL: a registration takes a lease granted
// ahead of time (no grant on its way) and the lease then runs its whole
// TTL from the registration, not from the grant; a lease older than half
// its TTL is not taken; a registration with a TTL never seen before is
// granted on the spot.
func TestPooledLeaseRunsItsWholeTTL(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	s, err := Open(Config{Endpoints: cluster.Endpoints(), Prefix: "/pool/"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	const ttl = 6 * time.Second
	const secs = int64(ttl / time.Second)

	if _, err := s.Txn(ctx, []atlas.Op{{Key: "a", Value: []byte("v"), TTL: ttl}}); err != nil {
		t.Fatal(err)
	}
	pooled(t, s.pool, secs, 1)
	s.pool.mu.Lock()
	want := s.pool.free[secs][0].id
	s.pool.mu.Unlock()

	time.Sleep(2 * time.Second) // the pooled lease ages: 4s of 6 left
	if _, err := s.Txn(ctx, []atlas.Op{{Key: "b", Value: []byte("v"), TTL: ttl}}); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	got := s.leases["b"]
	s.mu.Unlock()
	if got != want {
		t.Fatalf("b got lease %x; want the pooled %x", got, want)
	}
	ttlResp, err := s.cli.TimeToLive(ctx, got)
	if err != nil {
		t.Fatal(err)
	}
	if ttlResp.TTL < secs-1 {
		t.Fatalf("b's lease has %ds left right after the registration; want about %d (renewed when taken)", ttlResp.TTL, secs)
	}

	// A pooled lease past half its TTL stays in the pool, unused.
	pooled(t, s.pool, secs, 1)
	s.pool.mu.Lock()
	stale := s.pool.free[secs][len(s.pool.free[secs])-1].id
	s.pool.now = func() time.Time { return time.Now().Add(ttl) }
	s.pool.mu.Unlock()
	if _, err := s.Txn(ctx, []atlas.Op{{Key: "c", Value: []byte("v"), TTL: ttl}}); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	got = s.leases["c"]
	s.mu.Unlock()
	if got == stale || got == 0 {
		t.Fatalf("c got lease %x; want a new one, not the stale pooled %x", got, stale)
	}
}

// TestLeasePoolIsBounded: however many registrations, at most maxPooled
// leases of a TTL wait in the pool or on their way to it, and close stops
// it.
func TestLeasePoolIsBounded(t *testing.T) {
	grants := make(chan struct{}, 1000)
	p := newLeasePool(func(ctx context.Context, secs int64) (clientv3.LeaseID, error) {
		grants <- struct{}{}
		return clientv3.LeaseID(len(grants)), nil
	})
	for range 500 {
		p.take(60)
	}
	p.close()
	p.mu.Lock()
	pooled, pending := len(p.free[60]), p.pending[60]
	p.mu.Unlock()
	if pooled > maxPooled || pending != 0 {
		t.Fatalf("%d leases pooled, %d grants pending after close; want at most %d, 0", pooled, pending, maxPooled)
	}
	// A take asks for one grant at most: the pool costs no raft writes
	// beyond the leases it replaces.
	if n := len(grants); n > 500 {
		t.Fatalf("%d grants for 500 takes; want at most one each", n)
	}
	if _, ok := p.take(60); ok {
		t.Fatal("a closed pool handed out a lease")
	}
}

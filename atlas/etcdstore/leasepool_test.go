package etcdstore

import (
	"context"
	"sync/atomic"
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
// its TTL is not used.
func TestPooledLeaseRunsItsWholeTTL(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	s := openStore(t, cluster, "/pool/")
	ctx := context.Background()
	const ttl = 10 * time.Second
	const secs = int64(ttl / time.Second)

	if _, err := s.Txn(ctx, []atlas.Op{{Key: "a", Value: []byte("v"), TTL: ttl}}); err != nil {
		t.Fatal(err)
	}
	pooled(t, s.pool, secs, 1)
	s.pool.mu.Lock()
	want := s.pool.free[secs][0].id
	s.pool.mu.Unlock()

	time.Sleep(3 * time.Second) // the pooled lease ages in etcd: 7s of 10 left
	if _, err := s.Txn(ctx, []atlas.Op{{Key: "b", Value: []byte("v"), TTL: ttl}}); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	got := s.leases["b"].id
	s.mu.Unlock()
	if got != want {
		t.Fatalf("b got lease %x; want the pooled %x", got, want)
	}
	ttlResp, err := s.cli.TimeToLive(ctx, got)
	if err != nil {
		t.Fatal(err)
	}
	if ttlResp.TTL < secs-2 {
		t.Fatalf("b's lease has %ds left right after the registration; want about %d (renewed when taken)", ttlResp.TTL, secs)
	}

	// A pooled lease just past half its TTL is not used.
	pooled(t, s.pool, secs, 1)
	s.pool.mu.Lock()
	stale := s.pool.free[secs][0].id
	s.pool.now = func() time.Time { return time.Now().Add(ttl/2 + 500*time.Millisecond) }
	s.pool.mu.Unlock()
	if _, err := s.Txn(ctx, []atlas.Op{{Key: "c", Value: []byte("v"), TTL: ttl}}); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	got = s.leases["c"].id
	s.mu.Unlock()
	if got == stale || got == 0 {
		t.Fatalf("c got lease %x; want a new one, not the stale pooled %x", got, stale)
	}
}

// TestLeasePoolTakesTheYoungest: leases join the pool as their grants
// end, not in the order they began; take drops every lease past half its
// TTL wherever it is and hands out the youngest of the others.
func TestLeasePoolTakesTheYoungest(t *testing.T) {
	p := newLeasePool(func(ctx context.Context, secs int64) (clientv3.LeaseID, error) {
		<-ctx.Done() // no refill joins during the test
		return 0, ctx.Err()
	})
	defer p.close()
	now := time.Now()
	p.now = func() time.Time { return now }
	p.mu.Lock()
	p.free[60] = []pooledLease{
		{id: 1, granted: now.Add(-10 * time.Second)},
		{id: 2, granted: now.Add(-40 * time.Second)}, // too old, in the middle
		{id: 3, granted: now.Add(-5 * time.Second)},
		{id: 4, granted: now.Add(-20 * time.Second)},
		{id: 5, granted: now.Add(-31 * time.Second)}, // too old, last
	}
	p.mu.Unlock()
	for _, want := range []clientv3.LeaseID{3, 1, 4} {
		if got, ok := p.take(60); !ok || got != want {
			t.Fatalf("take: %d, %v; want %d", got, ok, want)
		}
	}
	if got, ok := p.take(60); ok {
		t.Fatalf("take handed out %d, older than half its TTL", got)
	}
}

// TestLeasePoolIsBounded: however many registrations at once, at most
// maxPooled grants of a TTL are in flight or waiting in the pool; a TTL
// too short to pool is granted on the spot only; a closed pool hands out
// nothing.
func TestLeasePoolIsBounded(t *testing.T) {
	var started atomic.Int64
	release := make(chan struct{})
	p := newLeasePool(func(ctx context.Context, secs int64) (clientv3.LeaseID, error) {
		n := started.Add(1)
		select {
		case <-release:
			return clientv3.LeaseID(n), nil
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	})
	for range 500 {
		p.take(60)
	}
	if n := started.Load(); n > maxPooled {
		t.Fatalf("%d grants started for 500 takes at once; want at most %d", n, maxPooled)
	}
	if _, ok := p.take(minPooledTTL - 1); ok {
		t.Fatal("a lease too short to pool came from the pool")
	}
	close(release)
	pooled(t, p, 60, int(started.Load()))
	if n := started.Load(); n > maxPooled {
		t.Fatalf("%d grants started; want at most %d", n, maxPooled)
	}
	p.close()
	if _, ok := p.take(60); ok {
		t.Fatal("a closed pool handed out a lease")
	}
}

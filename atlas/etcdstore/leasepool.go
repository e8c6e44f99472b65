package etcdstore

import (
	"context"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// leasePool keeps leases granted ahead of need, by TTL, so that a
// registration costs one raft write (its transaction) instead of two (a
// grant, then the transaction): the grant that replaces a lease taken
// from the pool is made in the background. A pooled lease is renewed when
// it is taken, so the instance's lease runs its whole TTL from the
// registration, and it is taken only while younger than half its TTL, so
// that it cannot have expired before the renewal reaches etcd. A lease
// grown too old in the pool is dropped and left to expire in etcd.
//
// What the pool costs: every registration starts one background grant (to
// replace the lease it took, or, when it found none young enough and was
// granted one on the spot, to have one for the next); nothing is granted
// for a TTL no registration asked for, and at most maxPooled leases wait
// per TTL. The waste is the pooled leases that age out unused, each left
// in etcd until its TTL ends: at most one grant more than registrations
// per half TTL when they come further apart than that.
type leasePool struct {
	grant func(ctx context.Context, secs int64) (clientv3.LeaseID, error)

	mu      sync.Mutex
	free    map[int64][]pooledLease // by TTL in seconds
	pending map[int64]int           // background grants in flight, by TTL
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	now     func() time.Time
}

type pooledLease struct {
	id      clientv3.LeaseID
	granted time.Time // before the grant was sent: the lease is younger
}

const maxPooled = 64

// minPooledTTL is the shortest TTL pooled, in seconds: the 6 s lease of a
// sidecar checking every 2 s is, and half of it leaves a renewal on the
// open stream ample time. Should the renewal have to wait for a new stream
// to the leader longer than the lease has left, the registration fails
// (lease not found: the sidecar registers again) or the instance expires
// early and its next heartbeat registers it again.
const minPooledTTL = 6

func newLeasePool(grant func(ctx context.Context, secs int64) (clientv3.LeaseID, error)) *leasePool {
	ctx, cancel := context.WithCancel(context.Background())
	return &leasePool{grant: grant, free: map[int64][]pooledLease{}, pending: map[int64]int{},
		ctx: ctx, cancel: cancel, now: time.Now}
}

// take returns a pooled lease of secs seconds, or false when there is none
// young enough; either way it starts one background grant to replace it.
func (p *leasePool) take(secs int64) (clientv3.LeaseID, bool) {
	if secs < minPooledTTL {
		return 0, false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ctx.Err() != nil {
		return 0, false
	}
	p.refillLocked(secs)
	// Leases join the pool as their grants end, not in the order the
	// grants began, so look at each: drop those too old to trust (they
	// expire in etcd), take the youngest (it lives longest).
	maxAge := time.Duration(secs) * time.Second / 2
	now := p.now()
	q := p.free[secs][:0]
	youngest := -1
	for _, l := range p.free[secs] {
		if now.Sub(l.granted) >= maxAge {
			continue
		}
		if youngest < 0 || l.granted.After(q[youngest].granted) {
			youngest = len(q)
		}
		q = append(q, l)
	}
	if youngest < 0 {
		delete(p.free, secs)
		return 0, false
	}
	id := q[youngest].id
	q = append(q[:youngest], q[youngest+1:]...)
	if len(q) == 0 {
		delete(p.free, secs)
	} else {
		p.free[secs] = q
	}
	return id, true
}

// refillLocked starts a background grant of a secs-second lease unless
// the pool is full.
func (p *leasePool) refillLocked(secs int64) {
	if len(p.free[secs])+p.pending[secs] >= maxPooled {
		return
	}
	p.pending[secs]++
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		start := p.now()
		ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
		id, err := p.grant(ctx, secs)
		cancel()
		p.mu.Lock()
		defer p.mu.Unlock()
		p.pending[secs]--
		if p.pending[secs] == 0 {
			delete(p.pending, secs)
		}
		if err == nil && p.ctx.Err() == nil {
			p.free[secs] = append(p.free[secs], pooledLease{id: id, granted: start})
		}
	}()
}

// close stops the background grants; pooled leases are left to expire.
func (p *leasePool) close() {
	p.mu.Lock()
	p.cancel()
	p.mu.Unlock()
	p.wg.Wait()
}

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
// The pool costs no extra raft writes: every lease taken, pooled or granted
// on the spot, is replaced by one grant, and nothing is granted for a TTL
// no registration asked for. At most maxPooled leases wait per TTL.
type leasePool struct {
	grant func(ctx context.Context, secs int64) (clientv3.LeaseID, error)

	mu      sync.Mutex
	free    map[int64][]pooledLease // by TTL in seconds, oldest first
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

func newLeasePool(grant func(ctx context.Context, secs int64) (clientv3.LeaseID, error)) *leasePool {
	ctx, cancel := context.WithCancel(context.Background())
	return &leasePool{grant: grant, free: map[int64][]pooledLease{}, pending: map[int64]int{},
		ctx: ctx, cancel: cancel, now: time.Now}
}

// take returns a pooled lease of secs seconds, or false when there is none
// young enough; either way it starts one background grant to replace it.
func (p *leasePool) take(secs int64) (clientv3.LeaseID, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ctx.Err() != nil {
		return 0, false
	}
	p.refillLocked(secs)
	maxAge := time.Duration(secs) * time.Second / 2
	q := p.free[secs]
	now := p.now()
	for len(q) > 0 && now.Sub(q[0].granted) >= maxAge {
		q = q[1:] // too old to trust: let it expire
	}
	if len(q) == 0 {
		delete(p.free, secs)
		return 0, false
	}
	// The youngest lease lives longest; take it.
	l := q[len(q)-1]
	if q = q[:len(q)-1]; len(q) == 0 {
		delete(p.free, secs)
	} else {
		p.free[secs] = q
	}
	return l.id, true
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

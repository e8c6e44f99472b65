package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// renewer renews leases over one long-lived LeaseKeepAlive stream, many
// renewals in flight at once. clientv3's KeepAliveOnce opens a stream for
// each renewal (a round trip to set it up, then one for the renewal), which
// held a batch of heartbeats to a few thousand a second.
//
// The stream goes to the etcd leader when the renewer can tell which member
// that is: a follower forwards every renewal to the leader as an HTTP
// request of its own.
//
// A renewal never waits for the stream beyond its own context. Requests
// are sent by a goroutine of the stream's own, so that a Send held up by a
// connection cut off without a word (gRPC's flow control then stops taking
// requests) holds up no renewal; and a stream that has answered nothing for
// stuckAfter while a renewal waited its whole deadline is dropped, so that
// the next renewal opens another, perhaps to a new leader, instead of each
// waiting out its deadline until gRPC's keep-alive ends the stream (10 s
// and more).
type renewer struct {
	cli *clientv3.Client
	// dial opens a client to one endpoint (the leader).
	dial func(endpoint string) (*clientv3.Client, error)

	mu      sync.Mutex // guards what follows, and each stream's queue and heard
	leader  *clientv3.Client
	stream  *keepAliveStream
	opening *opening                 // the stream being opened, if one is
	waiting map[int64][]chan renewal // by lease, oldest first: etcd answers a stream's requests in order
	closed  bool
}

// keepAliveStream is one LeaseKeepAlive stream and what its sender has
// still to send.
type keepAliveStream struct {
	pb.Lease_LeaseKeepAliveClient
	cancel context.CancelFunc
	ended  chan struct{} // closed when the stream is dropped
	wake   chan struct{} // (1) the queue has requests
	queue  []int64       // leases to renew, in the order of waiting
	heard  time.Time     // when etcd last answered on it (or it opened)
}

// opening is a stream being opened, in the background: looking for the
// leader and opening a stream can take seconds when etcd is unreachable,
// and each renewal waits for it only as long as its own context allows.
type opening struct {
	done chan struct{}
	err  error // set before done is closed
}

type renewal struct {
	ttl int64 // seconds; 0: no such lease
	err error
}

var errRenewerClosed = errors.New("lease renewer closed")

const (
	// openTimeout bounds the opening of a stream.
	openTimeout = 5 * time.Second
	// stuckAfter: a stream that answered nothing for this long, while a
	// renewal waited on it until its deadline, is dropped.
	stuckAfter = time.Second
)

func newRenewer(cli *clientv3.Client, dial func(string) (*clientv3.Client, error)) *renewer {
	return &renewer{cli: cli, dial: dial, waiting: map[int64][]chan renewal{}}
}

// open looks for the leader and opens a stream to it (to the shared
// client's connection when it cannot tell the leader), then installs the
// stream, unless the renewer closed meanwhile.
func (r *renewer) open(o *opening) {
	var leader *clientv3.Client
	if r.dial != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		for _, ep := range r.cli.Endpoints() {
			st, err := r.cli.Status(ctx, ep)
			if err != nil || st.Header == nil || st.Header.MemberId != st.Leader {
				continue
			}
			if c, err := r.dial(ep); err == nil {
				leader = c
			}
			break
		}
		cancel()
	}
	conn := r.cli.ActiveConnection()
	if leader != nil {
		conn = leader.ActiveConnection()
	}
	// The stream needs a leader, so that a member cut off from the others
	// fails the renewal instead of holding it.
	sctx, cancel := context.WithCancel(clientv3.WithRequireLeader(context.Background()))
	// Opening waits for a connection; bound it, as the stream's own
	// context has to outlive this call.
	timer := time.AfterFunc(openTimeout, cancel)
	stream, err := pb.NewLeaseClient(conn).LeaseKeepAlive(sctx)
	if !timer.Stop() && err == nil {
		err = context.DeadlineExceeded
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.opening = nil
	if err == nil && r.closed {
		err = errRenewerClosed
	}
	if err != nil {
		cancel()
		if leader != nil {
			leader.Close()
		}
		o.err = err
		close(o.done)
		return
	}
	r.leader = leader
	r.startLocked(stream, cancel)
	close(o.done)
}

// startLocked installs stream as the current one and starts its sender and
// receiver.
func (r *renewer) startLocked(stream pb.Lease_LeaseKeepAliveClient, cancel context.CancelFunc) *keepAliveStream {
	s := &keepAliveStream{Lease_LeaseKeepAliveClient: stream, cancel: cancel,
		ended: make(chan struct{}), wake: make(chan struct{}, 1), heard: time.Now()}
	r.stream = s
	go r.send(s)
	go r.receive(s)
	return s
}

// renew renews lease id once and returns its TTL in seconds, 0 when etcd
// does not know the lease.
func (r *renewer) renew(ctx context.Context, id clientv3.LeaseID) (int64, error) {
	ch := make(chan renewal, 1)
	r.mu.Lock()
	for r.stream == nil {
		if r.closed {
			r.mu.Unlock()
			return 0, errRenewerClosed
		}
		o := r.opening
		if o == nil {
			o = &opening{done: make(chan struct{})}
			r.opening = o
			go r.open(o)
		}
		r.mu.Unlock()
		select {
		case <-o.done:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		if o.err != nil {
			return 0, o.err
		}
		r.mu.Lock()
	}
	s := r.stream
	r.waiting[int64(id)] = append(r.waiting[int64(id)], ch)
	s.queue = append(s.queue, int64(id))
	select {
	case s.wake <- struct{}{}:
	default:
	}
	r.mu.Unlock()
	queued := time.Now()
	select {
	case res := <-ch:
		return res.ttl, res.err
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			r.mu.Lock()
			if waited := time.Since(queued); waited >= stuckAfter && s.heard.Before(queued) {
				r.failLocked(s, fmt.Errorf("etcd answered no lease renewal on the stream for %s", waited.Round(time.Millisecond)))
			}
			r.mu.Unlock()
		}
		return 0, ctx.Err()
	}
}

// send sends the renewals queued on s, in order, until s is dropped.
func (r *renewer) send(s *keepAliveStream) {
	for {
		select {
		case <-s.wake:
		case <-s.ended:
			return
		}
		r.mu.Lock()
		ids := s.queue
		s.queue = nil
		r.mu.Unlock()
		for _, id := range ids {
			if err := s.Send(&pb.LeaseKeepAliveRequest{ID: id}); err != nil {
				r.mu.Lock()
				r.failLocked(s, err)
				r.mu.Unlock()
				return
			}
		}
	}
}

// receive hands each answer of s to the oldest renewal of its lease,
// until the stream fails.
func (r *renewer) receive(s *keepAliveStream) {
	for {
		resp, err := s.Recv()
		r.mu.Lock()
		if r.stream != s {
			// Dropped (a failed Send, Close): what it still delivers
			// belongs to renewals already failed, not to the next
			// stream's.
			r.mu.Unlock()
			return
		}
		if err != nil {
			r.failLocked(s, err)
			r.mu.Unlock()
			return
		}
		s.heard = time.Now()
		if q := r.waiting[resp.ID]; len(q) > 0 {
			q[0] <- renewal{ttl: resp.TTL}
			if len(q) == 1 {
				delete(r.waiting, resp.ID)
			} else {
				r.waiting[resp.ID] = q[1:]
			}
		}
		r.mu.Unlock()
	}
}

// failLocked drops s, if it is still the current stream, and fails every
// renewal waiting on it; the next renewal opens a new stream.
func (r *renewer) failLocked(s *keepAliveStream, err error) {
	if r.stream != s {
		return
	}
	s.cancel()
	close(s.ended)
	s.queue = nil
	r.stream = nil
	// The leader may have changed: look again for the next stream.
	if r.leader != nil {
		r.leader.Close()
		r.leader = nil
	}
	for id, q := range r.waiting {
		for _, ch := range q {
			ch <- renewal{err: err}
		}
		delete(r.waiting, id)
	}
}

func (r *renewer) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	if r.stream != nil {
		r.failLocked(r.stream, errRenewerClosed)
	}
	if r.leader != nil {
		r.leader.Close()
		r.leader = nil
	}
}

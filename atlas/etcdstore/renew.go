package etcdstore

import (
	"context"
	"errors"
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
type renewer struct {
	cli *clientv3.Client
	// dial opens a client to one endpoint (the leader).
	dial func(endpoint string) (*clientv3.Client, error)

	mu      sync.Mutex // serialises Send, guards what follows
	leader  *clientv3.Client
	stream  pb.Lease_LeaseKeepAliveClient
	cancel  context.CancelFunc
	opening *opening                 // the stream being opened, if one is
	waiting map[int64][]chan renewal // by lease, oldest first: etcd answers a stream's requests in order
	closed  bool
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

// openTimeout bounds the opening of a stream.
const openTimeout = 5 * time.Second

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
	r.stream, r.cancel, r.leader = stream, cancel, leader
	close(o.done)
	go r.receive(stream)
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
	stream := r.stream
	r.waiting[int64(id)] = append(r.waiting[int64(id)], ch)
	err := stream.Send(&pb.LeaseKeepAliveRequest{ID: int64(id)})
	if err != nil {
		r.failLocked(stream, err)
	}
	r.mu.Unlock()
	select {
	case res := <-ch:
		return res.ttl, res.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// receive hands each answer of stream to the oldest renewal of its lease,
// until the stream fails.
func (r *renewer) receive(stream pb.Lease_LeaseKeepAliveClient) {
	for {
		resp, err := stream.Recv()
		r.mu.Lock()
		if r.stream != stream {
			// Dropped (a failed Send, Close): what it still delivers
			// belongs to renewals already failed, not to the next
			// stream's.
			r.mu.Unlock()
			return
		}
		if err != nil {
			r.failLocked(stream, err)
			r.mu.Unlock()
			return
		}
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

// failLocked ends stream, if it is still the current one, and fails every
// renewal waiting on it; the next renewal opens a new stream.
func (r *renewer) failLocked(stream pb.Lease_LeaseKeepAliveClient, err error) {
	if r.stream != stream {
		return
	}
	r.cancel()
	r.stream, r.cancel = nil, nil
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

package etcdstore

import (
	"context"
	"errors"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
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
	waiting map[int64][]chan renewal // by lease, oldest first: etcd answers a stream's requests in order
	closed  bool
}

type renewal struct {
	ttl int64 // seconds; 0: no such lease
	err error
}

var errRenewerClosed = errors.New("lease renewer closed")

func newRenewer(cli *clientv3.Client, dial func(string) (*clientv3.Client, error)) *renewer {
	return &renewer{cli: cli, dial: dial, waiting: map[int64][]chan renewal{}}
}

// connLocked returns a connection to the leader if it can find it, else
// the shared client's.
func (r *renewer) connLocked() *grpc.ClientConn {
	if r.leader == nil && r.dial != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		for _, ep := range r.cli.Endpoints() {
			st, err := r.cli.Status(ctx, ep)
			if err != nil || st.Header == nil || st.Header.MemberId != st.Leader {
				continue
			}
			if c, err := r.dial(ep); err == nil {
				r.leader = c
			}
			break
		}
	}
	if r.leader != nil {
		return r.leader.ActiveConnection()
	}
	return r.cli.ActiveConnection()
}

// renew renews lease id once and returns its TTL in seconds, 0 when etcd
// does not know the lease.
func (r *renewer) renew(ctx context.Context, id clientv3.LeaseID) (int64, error) {
	ch := make(chan renewal, 1)
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return 0, errRenewerClosed
	}
	if r.stream == nil {
		// The stream needs a leader, so that a member cut off from the
		// others fails the renewal instead of holding it.
		sctx, cancel := context.WithCancel(clientv3.WithRequireLeader(context.Background()))
		stream, err := pb.NewLeaseClient(r.connLocked()).LeaseKeepAlive(sctx)
		if err != nil {
			cancel()
			r.mu.Unlock()
			return 0, err
		}
		r.stream, r.cancel = stream, cancel
		go r.receive(stream)
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

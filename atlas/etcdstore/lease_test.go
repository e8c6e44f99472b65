package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/switchboard-go/switchboard/atlas"
	"github.com/switchboard-go/switchboard/internal/etcdtest"
)

// openStore opens a store on cluster under prefix, closed when the test
// ends.
func openStore(t *testing.T, cluster *etcdtest.Cluster, prefix string) *Store {
	t.Helper()
	s, err := Open(Config{Endpoints: cluster.Endpoints(), Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// renewedKey starts a one-member cluster and a store on it under prefix,
// which writes key with a minute's lease and renews it once.
func renewedKey(t *testing.T, prefix, key string) (*etcdtest.Cluster, *Store) {
	t.Helper()
	cluster := etcdtest.Start(t, 1)
	s := openStore(t, cluster, prefix)
	ctx := context.Background()
	if _, err := s.Txn(ctx, []atlas.Op{{Key: key, Value: []byte("v"), TTL: time.Minute}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.KeepAlive(ctx, key); err != nil {
		t.Fatal(err)
	}
	return cluster, s
}

// Two replicas write one leased key concurrently. Once the watch of the
// first has caught up, its cache holds the key's actual lease: a write of
// its own answered late must not put back a lease the key no longer has
// (heartbeats would renew that one while the key's lease runs out).
func TestLeaseCacheFollowsTheKey(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	s1, s2 := openStore(t, cluster, "/cache/"), openStore(t, cluster, "/cache/")
	ctx := context.Background()
	index, _, err := s1.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wch, err := s1.Watch(ctx, index)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu   sync.Mutex
		seen uint64
	)
	go func() {
		for c := range wch {
			mu.Lock()
			seen = c.Index
			mu.Unlock()
		}
	}()
	for round := range 20 {
		var wg sync.WaitGroup
		for g := range 8 {
			s := s1
			if g%2 == 1 {
				s = s2
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 10 {
					// Conflicts and all: only the last write counts.
					_, _ = s.Txn(ctx, []atlas.Op{{Key: "k", Value: fmt.Appendf(nil, "%d-%d", g, i), TTL: time.Minute}})
				}
			}()
		}
		wg.Wait()
		resp, err := s1.cli.Get(ctx, "/cache/k")
		if err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(10 * time.Second); ; {
			mu.Lock()
			caught := seen >= uint64(resp.Header.Revision)
			mu.Unlock()
			if caught {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: the watch did not reach revision %d", round, resp.Header.Revision)
			}
			time.Sleep(5 * time.Millisecond)
		}
		s1.mu.Lock()
		cached := s1.leases["k"].id
		s1.mu.Unlock()
		if actual := clientv3.LeaseID(resp.Kvs[0].Lease); cached != actual {
			t.Fatalf("round %d: the cache holds lease %x for k; the key has %x", round, cached, actual)
		}
	}
}

// A renewal of a lease that has run out, but that etcd has not revoked
// yet, is answered only once etcd revokes it. It must not hold up the
// heartbeats of live instances meanwhile.
func TestAnExpiredLeaseDoesNotHoldUpHeartbeats(t *testing.T) {
	_, s := renewedKey(t, "/expired/", "live")
	ctx := context.Background()
	// Leases that run out together, so that etcd revokes them over a
	// second or two (about 1,000 a second), the instance's last.
	var wg sync.WaitGroup
	grants := time.Now()
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 4000 / 64 {
				if _, err := s.cli.Grant(ctx, 5); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("4,000 leases granted in %v", time.Since(grants).Round(time.Millisecond))
	if _, err := s.Txn(ctx, []atlas.Op{{Key: "dead", Value: []byte("v"), TTL: 5 * time.Second}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5*time.Second + 300*time.Millisecond)
	deadAt := time.Now()
	deadTook := make(chan time.Duration, 1)
	go func() {
		// Not found once etcd revokes it; unavailable when that takes
		// longer than the store's 5 s bound (a slow machine).
		_, err := s.KeepAlive(ctx, "dead")
		if !errors.Is(err, atlas.ErrNotFound) && !errors.Is(err, atlas.ErrUnavailable) {
			t.Errorf("KeepAlive of the expired instance: %v; want not found or unavailable", err)
		}
		deadTook <- time.Since(deadAt)
	}()
	time.Sleep(20 * time.Millisecond)
	liveAt := time.Now()
	if _, err := s.KeepAlive(ctx, "live"); err != nil {
		t.Fatalf("KeepAlive of the live instance: %v", err)
	}
	liveTook := time.Since(liveAt)
	dead := <-deadTook
	t.Logf("the expired lease's renewal took %v, the live one's %v", dead.Round(time.Millisecond), liveTook.Round(time.Millisecond))
	if dead < 200*time.Millisecond {
		t.Fatalf("the expired lease's renewal came back in %v: etcd had no revocations queued, so the test showed nothing", dead)
	}
	if liveTook > dead/2 {
		t.Fatal("the live instance's heartbeat waited until etcd had revoked the expired lease")
	}
}

// With etcd down, each heartbeat fails within its own deadline, and Close
// returns, rather than queueing behind one another's search for a leader.
func TestHeartbeatsDuringAnOutageKeepTheirDeadline(t *testing.T) {
	cluster, s := renewedKey(t, "/outage/", "k")
	ctx := context.Background()
	cluster.Members[0].Stop()
	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			if _, err := s.KeepAlive(c, "k"); !errors.Is(err, atlas.ErrUnavailable) {
				t.Errorf("KeepAlive with etcd down: %v; want unavailable", err)
			}
		}()
	}
	wg.Wait()
	// Each had 1 s; one after another they took 2 s each (16 s).
	if took := time.Since(start); took > 8*time.Second {
		t.Errorf("8 heartbeats of 1 s each took %v together", took.Round(time.Millisecond))
	}
	closed := make(chan struct{})
	go func() { s.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(8 * time.Second):
		t.Fatal("Close did not return within 8 s with etcd down")
	}
}

type fakeStream struct {
	grpc.ClientStream
	sendErr error
	recv    chan *pb.LeaseKeepAliveResponse
}

func (f *fakeStream) Send(*pb.LeaseKeepAliveRequest) error { return f.sendErr }

func (f *fakeStream) Recv() (*pb.LeaseKeepAliveResponse, error) {
	r, ok := <-f.recv
	if !ok {
		return nil, io.EOF
	}
	return r, nil
}

// An answer a dropped stream still delivers is not handed to a renewal
// sent on the next stream.
func TestAnswersOfADroppedStreamAreIgnored(t *testing.T) {
	r := newRenewer(nil, nil)
	old := &fakeStream{sendErr: io.EOF, recv: make(chan *pb.LeaseKeepAliveResponse, 1)}
	r.mu.Lock()
	r.startLocked(old, func() {})
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := r.renew(ctx, 7); err == nil { // Send fails: the stream is dropped
		t.Fatal("a renewal whose Send failed succeeded")
	}
	next := &fakeStream{recv: make(chan *pb.LeaseKeepAliveResponse)} // never answers
	r.mu.Lock()
	r.startLocked(next, func() {})
	r.mu.Unlock()
	done := make(chan int64, 1)
	go func() {
		c, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		ttl, _ := r.renew(c, 7)
		done <- ttl
	}()
	time.Sleep(100 * time.Millisecond)
	old.recv <- &pb.LeaseKeepAliveResponse{ID: 7, TTL: 60} // the dropped stream's answer
	if ttl := <-done; ttl > 0 {
		t.Fatalf("a renewal on the new stream, never answered, got ttl %d from the dropped stream", ttl)
	}
}

// cutStream is a stream whose connection was cut off without a word:
// Send blocks, as gRPC's does once flow control stops taking requests,
// and nothing comes back, until the stream is cancelled.
type cutStream struct {
	grpc.ClientStream
	cut chan struct{}
}

func (c *cutStream) Send(*pb.LeaseKeepAliveRequest) error { <-c.cut; return context.Canceled }

func (c *cutStream) Recv() (*pb.LeaseKeepAliveResponse, error) { <-c.cut; return nil, context.Canceled }

// Renewals on a stream cut off without a word each fail within their own
// deadline (they queued behind one blocked Send, 14.7 s for a 1 s
// deadline), and the stream is dropped: the next renewal opens another
// and succeeds.
func TestACutStreamHoldsUpNoRenewal(t *testing.T) {
	_, s := renewedKey(t, "/cut/", "k")
	ctx := context.Background()
	s.mu.Lock()
	id := s.leases["k"].id
	s.mu.Unlock()
	cut := &cutStream{cut: make(chan struct{})}
	s.renew.mu.Lock()
	s.renew.failLocked(s.renew.stream, errors.New("replaced by the test"))
	s.renew.startLocked(cut, sync.OnceFunc(func() { close(cut.cut) }))
	s.renew.mu.Unlock()

	var wg sync.WaitGroup
	done := make(chan struct{})
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, cancel := context.WithTimeout(ctx, 1200*time.Millisecond)
			defer cancel()
			if _, err := s.renew.renew(c, id); err == nil {
				t.Error("a renewal on a cut stream succeeded")
			}
		}()
	}
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("renewals on a cut stream did not return within 30 s (their deadline: 1.2 s)")
	}
	select {
	case <-cut.cut:
	default:
		t.Fatal("the cut stream was kept after renewals waited out their deadline on it")
	}
	c, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if ttl, err := s.renew.renew(c, id); err != nil || ttl <= 0 {
		t.Fatalf("renewal after the cut stream was dropped: ttl %d, %v; want it renewed on a new stream", ttl, err)
	}
}

// A write whose context ended after etcd committed it failed with an
// error, and the store then revoked the leases it had granted for it:
// which deleted what etcd had written (a registration or a status change
// became a deregistration). They are left to run out instead.
func TestAWriteThatFailedLateIsNotRevoked(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	s := openStore(t, cluster, "/late/")
	failed := 0
	for i := range 300 {
		// Deadlines around how long a write takes here: some end
		// before etcd takes the write, some after.
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(200+(i%40)*50)*time.Microsecond)
		if _, err := s.Txn(ctx, []atlas.Op{{Key: fmt.Sprintf("k%03d", i), Value: []byte("v"), TTL: time.Minute}}); err != nil {
			failed++
		}
		cancel()
	}
	s.WaitBackground()
	cli, err := clientv3.New(clientv3.Config{Endpoints: cluster.Endpoints(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	now, err := cli.Get(context.Background(), "/late/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	// Every event under the prefix so far: a put may be followed by no
	// delete, since nothing else deletes these keys within their minute.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	puts, deletes := 0, 0
	for resp := range cli.Watch(ctx, "/late/", clientv3.WithPrefix(), clientv3.WithRev(1)) {
		for _, ev := range resp.Events {
			if ev.Type == clientv3.EventTypePut {
				puts++
			} else {
				deletes++
			}
		}
		if resp.Header.Revision >= now.Header.Revision || resp.Err() != nil {
			break
		}
	}
	t.Logf("%d of 300 writes failed; %d were stored", failed, puts)
	if deletes > 0 {
		t.Fatalf("%d of the %d writes etcd stored were deleted: their leases were revoked after a late failure", deletes, puts)
	}
}

// A key deleted while no watch ran (before a reload after compaction, say)
// leaves no lease in the cache once a snapshot shows it gone.
func TestASnapshotPrunesTheLeaseCache(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	s1, s2 := openStore(t, cluster, "/prune/"), openStore(t, cluster, "/prune/")
	ctx := context.Background()
	for _, k := range []string{"gone", "kept"} {
		if _, err := s1.Txn(ctx, []atlas.Op{{Key: k, Value: []byte("v"), TTL: time.Minute}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s2.Txn(ctx, []atlas.Op{{Key: "gone", Delete: true}}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s1.Snapshot(ctx); err != nil {
		t.Fatal(err)
	}
	s1.mu.Lock()
	_, gone := s1.leases["gone"]
	_, kept := s1.leases["kept"]
	s1.mu.Unlock()
	if gone || !kept {
		t.Fatalf("lease cache after a snapshot: deleted key cached %v, live key cached %v; want false, true", gone, kept)
	}
}

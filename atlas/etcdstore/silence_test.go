package etcdstore_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-go/switchboard/atlas"
	"github.com/switchboard-go/switchboard/atlas/etcdstore"
	"github.com/switchboard-go/switchboard/internal/etcdtest"
)

// TestASilentWatchIsEndedAndPingFails: a watch whose stream hears nothing
// more, although etcd still answers calls (its member cut off without a
// word, the other calls balanced onto other members), is ended, and Ping
// fails until a watch is heard from again. Before, such a replica served
// its old view as fresh until gRPC's keep-alive broke the stream, 10 s
// and more later.
func TestASilentWatchIsEndedAndPingFails(t *testing.T) {
	s, ctx, ch := watching(t, false)
	// A quiet stream that answers when asked is not silent: Atlas pings
	// every second, for longer than a silent one is given. (etcd answers
	// a request for progress once its revision reaches the watch's start:
	// a write first.)
	idx, err := s.Txn(ctx, []atlas.Op{{Key: "k0", Value: []byte("v")}})
	if err != nil {
		t.Fatal(err)
	}
	<-ch
	for range 5 {
		if err := s.Ping(ctx); err != nil {
			t.Fatalf("ping with a quiet watch: %v", err)
		}
		time.Sleep(time.Second)
	}
	if !s.Progressed() {
		t.Fatal("etcd answered no request for progress in 5 s of a quiet watch")
	}
	s.Deafen(true)
	written, err := s.Txn(ctx, []atlas.Op{{Key: "k", Value: []byte("v")}})
	if err != nil {
		t.Fatal(err)
	}
	var pingErr error
	pollFor(t, 30*time.Second, "ping failing with a silent watch", func() bool {
		pingErr = s.Ping(ctx)
		return pingErr != nil
	})
	if !strings.Contains(pingErr.Error(), "heard nothing from etcd") {
		t.Fatalf("ping with a silent watch: %v; want it to say the watch heard nothing", pingErr)
	}
	pollFor(t, 30*time.Second, "the silent watch ended", func() bool {
		select {
		case _, ok := <-ch:
			return !ok
		default:
			return false
		}
	})
	s.Deafen(false)
	if err := s.Ping(ctx); err == nil {
		t.Fatal("ping passed before a new watch was heard from")
	}
	ch, err = s.Watch(ctx, idx)
	if err != nil {
		t.Fatal(err)
	}
	if c := <-ch; c.Index != written {
		t.Fatalf("the next watch's first change is at %d; want the write made while the last was silent, at %d", c.Index, written)
	}
	pollFor(t, 30*time.Second, "ping passing again", func() bool { return s.Ping(ctx) == nil })
}

// TestAWatchBehindAProxyIsNeverTakenForSilent: etcd's gRPC proxy answers
// no request for progress. A store behind it stops asking once three went
// unanswered, and takes no watch for silent, however long it is quiet;
// before, a healthy watch behind the proxy was ended 3 s after every
// write, and the replica's event streams with it.
func TestAWatchBehindAProxyIsNeverTakenForSilent(t *testing.T) {
	s, ctx, ch := watching(t, true)
	quiet := func(round int) {
		t.Helper()
		if _, err := s.Txn(ctx, []atlas.Op{{Key: fmt.Sprint("k", round), Value: []byte("v")}}); err != nil {
			t.Fatal(err)
		}
		<-ch
		for j := range 5 {
			if err := s.Ping(ctx); err != nil {
				t.Fatalf("round %d: ping %d s after a write, behind a proxy that answers no request for progress: %v", round, j, err)
			}
			time.Sleep(time.Second)
		}
	}
	quiet(0)
	quiet(1)
	// The proxy passes on etcd's own progress notifications (every 10
	// minutes): one must not arm the store.
	s.DropProgress(false)
	if _, err := s.Txn(ctx, []atlas.Op{{Key: "missing", Delete: true}}); err != nil { // asks for one
		t.Fatal(err)
	}
	for range ch { // to the notification
		break
	}
	s.DropProgress(true)
	quiet(2)
	if s.Progressed() {
		t.Fatal("armed behind a proxy that answers no request for progress")
	}
}

// TestAReplicaWithASilentWatchSendsWatchersElsewhere: Atlas over a store
// whose watch went silent can tell no change; it ends its event streams,
// marks its reads stale, and once a watch is heard from again it serves
// fresh reads with what was written meanwhile.
func TestAReplicaWithASilentWatchSendsWatchersElsewhere(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	a := startReplica(t, cluster.Endpoints())
	b := startReplica(t, cluster.Endpoints())
	ended := readStream(t, a.http.URL+"/v1/watch?service=x")
	// A store takes a watch for silent once etcd has answered a request
	// for progress on it (etcd's gRPC proxy never does): after a write,
	// Atlas's ping asks for one within 2 s.
	if st, body, _ := do(t, "PUT", b.http.URL+"/v1/instances/y-1", reg("y", 5001, "1h")); st != 200 {
		t.Fatalf("register through B: %d %s", st, body)
	}
	pollFor(t, 30*time.Second, "etcd answering A's request for progress", a.store.Progressed)
	a.store.Deafen(true)
	if st, body, _ := do(t, "PUT", b.http.URL+"/v1/instances/x-1", reg("x", 5000, "1h")); st != 200 {
		t.Fatalf("register through B: %d %s", st, body)
	}
	select {
	case err := <-ended:
		if err != nil {
			t.Fatalf("A's event stream broke (%v); want it ended", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("A's event stream still open 30 s after its watch went silent")
	}
	if _, _, hdr := do(t, "GET", a.http.URL+"/v1/services/x", ""); hdr.Get(atlas.StaleHeader) == "" {
		t.Fatalf("a read from A with a silent watch is not marked stale: %v", hdr)
	}
	a.store.Deafen(false)
	pollFor(t, 30*time.Second, "A fresh again, with B's write", func() bool {
		_, body, hdr := do(t, "GET", a.http.URL+"/v1/services/x", "")
		return hdr.Get(atlas.StaleHeader) == "" && strings.Contains(body, `"id":"x-1"`)
	})
}

// watching opens a store on a one-member cluster and a watch from its
// index now; dropProgress makes it drop progress notifications, as etcd's
// gRPC proxy does. Everything ends with the test.
func watching(t *testing.T, dropProgress bool) (*etcdstore.Store, context.Context, <-chan atlas.Change) {
	t.Helper()
	return watchingOn(t, etcdtest.Start(t, 1), dropProgress)
}

// watchingOn is watching on cluster.
func watchingOn(t *testing.T, cluster *etcdtest.Cluster, dropProgress bool) (*etcdstore.Store, context.Context, <-chan atlas.Change) {
	t.Helper()
	s, err := etcdstore.Open(etcdstore.Config{Endpoints: cluster.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	s.DropProgress(dropProgress)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	idx, _, err := s.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := s.Watch(ctx, idx)
	if err != nil {
		t.Fatal(err)
	}
	return s, ctx, ch
}

// pollFor calls ok until it holds, within limit (eventually: 10 s).
func pollFor(t *testing.T, limit time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

package etcdstore

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// A watch's stream can go silent while etcd still answers: the member it
// sits on is cut off from this replica without a word (a firewall that
// drops packets, a hung proxy), while other calls are balanced onto other
// members. gRPC's keep-alive ends such a stream only after 10 s and more,
// and until then the replica served its old view as fresh. So Ping, which
// Atlas calls every second, also asks the watch for progress once it has
// been quiet for askAfter; a watch that has then heard nothing for
// silentAfter is ended (Atlas opens another, on a stream that may reach a
// member that answers) and Ping fails until a watch is heard from again:
// Atlas marks its reads stale and sends its watchers to another replica.
// A watch that is busy handing changes to a slow Atlas is not silent.
// etcd's gRPC proxy drops requests for progress: until one has been
// answered on this store, no watch is taken for silent (behind the proxy,
// one would be ended after every write), and a cut stream is left to
// gRPC's keep-alive, as before.
const (
	askAfter    = time.Second
	silentAfter = 3 * time.Second
)

// watchLife is what Ping knows of the newest watch.
type watchLife struct {
	start  int64              // the revision it starts at
	heard  time.Time          // when it last heard from etcd or delivered a change
	cancel context.CancelFunc // ends it
}

// heardLocked notes that w heard from etcd (or delivered what it had): its
// stream works.
func (s *Store) heardLocked(w *watchLife) {
	w.heard = time.Now()
	if s.live == w {
		s.silent = false
	}
}

// checkWatch asks the newest watch for progress once it is quiet, ends it
// once it has been silent too long, and reports an error while no watch
// has been heard from since. rev is etcd's revision now: while it is below
// the watch's start nothing happened that the watch could tell, and etcd
// answers no request for progress (it would say less than the watch
// asked for), so a quiet watch is then not silent.
func (s *Store) checkWatch(ctx context.Context, rev int64) error {
	s.mu.Lock()
	w, silent := s.live, s.silent
	var quiet time.Duration
	if w != nil && rev < w.start {
		s.heardLocked(w)
	}
	if w != nil {
		quiet = time.Since(w.heard)
	}
	cut := w != nil && quiet >= silentAfter && s.progressed
	if cut {
		s.silent, silent = true, true
		s.live = nil
		w.cancel()
	}
	s.mu.Unlock()
	if cut {
		s.cfg.Logger.Warn("etcdstore: the watch heard nothing from etcd although asked for progress; opening another", "quiet", quiet.Round(time.Millisecond))
	}
	if silent {
		return fmt.Errorf("the watch heard nothing from etcd for %s although asked for progress: its stream may be cut off", silentAfter)
	}
	if w != nil && quiet >= askAfter {
		// With the watches' metadata, so that it goes on their stream.
		_ = s.cli.RequestProgress(clientv3.WithRequireLeader(ctx))
	}
	return nil
}

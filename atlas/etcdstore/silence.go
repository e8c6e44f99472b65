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
//
// etcd's gRPC proxy drops requests for progress (and passes on etcd's own
// progress notifications, every 10 minutes): behind it a watch would be
// ended after every write. So no watch is taken for silent until etcd has
// answered armAfter requests on this store, which a periodic notification
// cannot do; and once giveUpAfter requests in a row went unanswered
// before that, the store stops asking: a cut stream is then left to gRPC's
// keep-alive, as before.
const (
	askAfter    = time.Second
	silentAfter = 3 * time.Second
	armAfter    = 2
	giveUpAfter = 3
)

// progressState is what a store knows of etcd's answers to requests for
// progress (guarded by Store.mu).
type progressState struct {
	answered   int  // notifications while a request was out, up to armAfter
	unanswered int  // requests in a row with no notification since
	unasked    bool // given up: etcd (or a proxy) does not answer
}

// armed reports whether etcd has shown that it answers.
func (p *progressState) armed() bool { return p.answered >= armAfter && !p.unasked }

// notifiedLocked notes a progress notification.
func (p *progressState) notifiedLocked() {
	if p.unanswered > 0 && !p.unasked {
		p.answered = min(p.answered+1, armAfter)
	}
	p.unanswered = 0
}

// askLocked notes a request about to be sent, and reports whether to send
// it: not once etcd has not answered giveUpAfter in a row before it was
// armed.
func (p *progressState) askLocked() bool {
	if p.unasked {
		return false
	}
	p.unanswered++
	if !p.armed() && p.unanswered > giveUpAfter {
		p.unasked = true
		return false
	}
	return true
}

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
	cut := w != nil && quiet >= silentAfter && s.progress.armed()
	if cut {
		s.silent, silent = true, true
		s.live = nil
		w.cancel()
	}
	wasAsking := !s.progress.unasked
	ask := !silent && w != nil && quiet >= askAfter && s.progress.askLocked()
	gaveUp := wasAsking && s.progress.unasked
	s.mu.Unlock()
	if cut {
		s.cfg.Logger.Warn("etcdstore: the watch heard nothing from etcd although asked for progress; opening another", "quiet", quiet.Round(time.Millisecond))
	}
	if gaveUp {
		s.cfg.Logger.Info("etcdstore: etcd answers no request for progress (etcd's gRPC proxy?): a watch cut off without a word is left to gRPC's keep-alive", "unanswered", giveUpAfter)
	}
	if silent {
		return fmt.Errorf("the watch heard nothing from etcd for %s although asked for progress: its stream may be cut off", silentAfter)
	}
	if ask {
		// With the watches' metadata, so that it goes on their stream.
		_ = s.cli.RequestProgress(clientv3.WithRequireLeader(ctx))
	}
	return nil
}

package atlas

import (
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	sb "github.com/switchboard-go/switchboard"
)

// streams tracks every open event stream and how far it has sent, so that
// Atlas can tell when a change has reached every watcher of a service:
// what a sidecar's drain waits for before it deregisters.
type streams struct {
	// mu guards set and moved.
	mu  sync.Mutex
	set map[*streamState]struct{}
	// moved is closed whenever a stream sends more.
	moved chan struct{}
}

// streamState is one open stream.
type streamState struct {
	realm    string
	all      bool
	services []string
	sent     atomic.Uint64 // everything up to this index has been sent
}

func (st *streamState) watches(realm, service string) bool {
	return st.realm == realm && (st.all || slices.Contains(st.services, service))
}

func (s *streams) add(st *streamState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.set == nil {
		s.set = make(map[*streamState]struct{})
		s.moved = make(chan struct{})
	}
	s.set[st] = struct{}{}
}

func (s *streams) remove(st *streamState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.set, st)
	s.signalLocked()
}

// progress records that st has sent everything up to index.
func (s *streams) progress(st *streamState, index uint64) {
	st.sent.Store(index)
	s.mu.Lock()
	s.signalLocked()
	s.mu.Unlock()
}

func (s *streams) signalLocked() {
	if s.moved != nil {
		close(s.moved)
		s.moved = make(chan struct{})
	}
}

// count returns how many streams watch service in realm and how many of
// them have sent index, and a channel closed at the next progress.
func (s *streams) count(realm, service string, index uint64) (watchers, confirmed int, moved <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.moved == nil {
		s.set = make(map[*streamState]struct{})
		s.moved = make(chan struct{})
	}
	for st := range s.set {
		if st.watches(realm, service) {
			watchers++
			if st.sent.Load() >= index {
				confirmed++
			}
		}
	}
	return watchers, confirmed, s.moved
}

// handlePropagation serves GET /v1/services/{name}/propagation?index=N&wait=D:
// it waits (at most wait, default 10s) until every event stream that
// watches the service has been sent the change at index N.
func (s *Server) handlePropagation(w http.ResponseWriter, r *http.Request) error {
	q, err := s.parseServiceQuery(r)
	if err != nil {
		return err
	}
	if err := principalFrom(r.Context()).readService(q.realm, q.service); err != nil {
		return err
	}
	index, wait, err := blockingParams(r)
	if err != nil {
		return err
	}
	if !query(r).Has("wait") {
		wait = 10 * time.Second
	}
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(wait + 30*time.Second))
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		watchers, confirmed, moved := s.streams.count(q.realm, q.service, index)
		if confirmed == watchers {
			writeJSON(w, http.StatusOK, 0, marshal(sb.Propagation{Service: q.service, Realm: q.realm, Index: index, Watchers: watchers, Confirmed: confirmed}))
			return nil
		}
		select {
		case <-moved:
		case <-timer.C:
			writeJSON(w, http.StatusOK, 0, marshal(sb.Propagation{Service: q.service, Realm: q.realm, Index: index, Watchers: watchers, Confirmed: confirmed}))
			return nil
		case <-r.Context().Done():
			return nil
		case <-s.waits.Done():
			return sb.Errorf(sb.EUnavailable, "atlas is shutting down")
		}
	}
}

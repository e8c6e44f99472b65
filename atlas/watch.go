package atlas

import (
	"cmp"
	"context"
	"io"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	sb "github.com/switchboard-go/switchboard"
)

// KeepAliveInterval is how often the event stream sends a comment line.
var KeepAliveInterval = 15 * time.Second

// maxWatchServices bounds the services one event stream lists: ten times
// what a sidecar's shared stream holds (it splits at 64).
const maxWatchServices = 640

// handleWatch serves GET /v1/watch: Server-Sent Events with one snapshot
// event per service on connect, then one update event per change of a
// service's answer, each with the same JSON as GET /v1/services/{name}.
//
// A stream never makes Atlas wait: each stream reads the history of changes
// at its own pace and sends each changed service's current answer, so a
// slow reader gets fewer, newer events, and one that falls behind the
// history gets snapshots again.
func (s *Server) handleWatch(w http.ResponseWriter, r *http.Request) error {
	realm, err := realmParam(r)
	if err != nil {
		return err
	}
	services := query(r)["service"]
	if len(services) == 0 {
		return sb.Errorf(sb.EInvalid, "service: at least one is required (or service=*)")
	}
	all := slices.Contains(services, "*")
	if !all {
		for _, svc := range services {
			if err := sb.ValidateName("service", svc); err != nil {
				return err
			}
		}
		// Each once, in the order given (the snapshot's): a stream's
		// work on resume and at each wake grows with its list, so a list
		// is bounded (service=* follows all).
		seen := make(map[string]bool, len(services))
		services = slices.DeleteFunc(slices.Clone(services), func(svc string) bool {
			dup := seen[svc]
			seen[svc] = true
			return dup
		})
		if len(services) > maxWatchServices {
			return sb.Errorf(sb.EInvalid, "service: at most %d in one stream (service=* follows every one), got %d", maxWatchServices, len(services))
		}
	}
	// allowed is asked on connect and again whenever a token or a policy
	// changes: a stream must end when its token is deleted, or when the
	// policy that let it watch a service is withdrawn.
	p := principalFrom(r.Context())
	allowed := func() error {
		if err := p.current(); err != nil {
			return err
		}
		if all {
			return p.readAll()
		}
		for _, svc := range services {
			if err := p.readService(realm, svc); err != nil {
				return err
			}
		}
		return nil
	}
	if err := allowed(); err != nil {
		return err
	}
	stop := s.waitCtx()
	if err := s.refuseWhileStale(); err != nil {
		return err
	}
	var resume uint64
	resuming := false
	if v := r.Header.Get("Last-Event-ID"); v != "" {
		if resume, err = strconv.ParseUint(v, 10, 64); err != nil {
			return sb.Errorf(sb.EInvalid, "Last-Event-ID: must be an index, got %q", v)
		}
		resuming = true
		if s.replicated() {
			// A stream resumed here from a replica that was ahead: it
			// resumes once this one has caught up, a few seconds at
			// most, rather than with a snapshot from before what the
			// client has seen. (A store that went back, one wiped, say,
			// gets the snapshot.)
			ctx, cancel := context.WithTimeout(r.Context(), catchUpWait)
			_ = s.waitApplied(ctx, resume)
			cancel()
		}
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	out, err := openStream(w)
	if err != nil {
		return err
	}
	defer out.close()
	s.metrics.streams.Inc()
	defer s.metrics.streams.Dec()

	wants := func(svc string) bool { return all || slices.Contains(services, svc) }
	track := &streamState{realm: realm, all: all, services: services}
	s.streams.add(track)
	defer s.streams.remove(track)
	// write sends one event; id 0 sends none. A slow reader must not hold
	// a goroutine forever, hence the deadline.
	write := func(kind string, id uint64, body []byte) error {
		_ = out.setWriteDeadline(time.Now().Add(30 * time.Second))
		var buf [64]byte
		head := append(buf[:0], "event: "...)
		head = append(head, kind...)
		if id != 0 {
			head = append(head, "\nid: "...)
			head = strconv.AppendUint(head, id, 10)
		}
		head = append(head, "\ndata: "...)
		for _, b := range [][]byte{head, body, newline} {
			if _, err := out.Write(b); err != nil {
				return err
			}
		}
		return nil
	}
	flush := out.flush
	// snapshot sends every service's answer. Only the last event carries an
	// id, the index the snapshot is current at: a stream cut in the middle
	// of a snapshot resumes with a whole snapshot.
	//
	// A stream of every service also sends, empty, each service it showed
	// before that has no instance left: a snapshot again (after a gap in
	// the history) must not leave the client a service that is gone.
	// shown holds the services it sent with instances and not since
	// without (see shows), so that a long stream over services that come
	// and go keeps only those there are.
	shown := map[string]bool{}
	shows := func(name string, there bool) {
		if !all {
			return
		}
		if there {
			shown[name] = true
		} else {
			delete(shown, name)
		}
	}
	snapshot := func() (uint64, error) {
		s.st.mu.RLock()
		last := s.st.applied
		var names []string
		if all {
			for name := range s.st.byService[realm] {
				names = append(names, name)
			}
			for name := range shown {
				if _, ok := s.st.byService[realm][name]; !ok {
					names = append(names, name)
				}
			}
			slices.Sort(names)
		} else {
			names = services
		}
		s.st.mu.RUnlock()
		for i, name := range names {
			s.st.mu.RLock()
			_, there := s.st.byService[realm][name]
			_, body := s.renderServiceLocked(serviceQuery{realm: realm, service: name})
			s.st.mu.RUnlock()
			shows(name, there)
			var id uint64
			if i == len(names)-1 {
				id = max(last, 1)
			}
			if err := write("snapshot", id, body); err != nil {
				return 0, err
			}
		}
		return last, flush()
	}

	var last uint64
	s.st.mu.RLock()
	canResume := resuming && resume > 0 && resume >= s.st.historyFloor && resume <= s.st.applied
	s.st.mu.RUnlock()
	if canResume {
		last = resume
		_ = out.setWriteDeadline(time.Now().Add(30 * time.Second))
		// The answer's head goes out now. With nothing new, the first
		// write would otherwise be the next change or keep-alive, and
		// the client gives up long before (10 s): every sidecar whose
		// Atlas restarted reconnected every 10 s until a change.
		if err := flush(); err != nil {
			return nil
		}
	} else if last, err = snapshot(); err != nil {
		return nil
	}
	keepAlive := time.NewTicker(KeepAliveInterval)
	defer keepAlive.Stop()
	// A stream of some services wakes for those services only (a
	// sidecar's, say: a change elsewhere in the realm is not its
	// business); one of every service, or of more than maxStreamKeys, for
	// any change in the realm. With auth on, a change of tokens or
	// policies wakes it too.
	wakeKeys := []string{listKey(realm)}
	if !all && len(services) <= maxStreamKeys {
		wakeKeys = wakeKeys[:0]
		for _, svc := range services {
			wakeKeys = append(wakeKeys, svcKey(realm, svc))
		}
	}
	if p != nil {
		wakeKeys = append(wakeKeys, tokensKey, policiesKey)
	}
	// Subscribed before the loop first reads what changed since last: a
	// change before that read, the read finds; one after it, the wait
	// below receives, however soon it comes.
	changed, unsubscribe := s.st.subscribe(wakeKeys)
	defer unsubscribe()
	for {
		if p != nil && allowed() != nil {
			return nil
		}
		// The answers are rendered as of upTo, under the same lock: one
		// rendered later could carry a newer index than a change to
		// another service that this pass did not see, and resuming from
		// it would skip that change.
		type upd struct {
			index   uint64
			service string
			body    []byte
			there   bool // the service has instances
		}
		var ups []upd
		s.st.mu.RLock()
		gap := last < s.st.historyFloor
		upTo := s.st.applied
		if !gap {
			for _, svc := range s.st.changedSinceLocked(realm, last, wants) {
				index, body := s.renderServiceLocked(serviceQuery{realm: realm, service: svc})
				_, there := s.st.byService[realm][svc]
				ups = append(ups, upd{index, svc, body, there})
			}
		}
		s.st.mu.RUnlock()
		if gap {
			if last, err = snapshot(); err != nil {
				return nil
			}
			s.streams.progress(track, last)
			continue
		}
		if len(ups) > 0 {
			// Send in index order, so that Last-Event-ID resumes exactly.
			slices.SortFunc(ups, func(a, b upd) int { return cmp.Compare(a.index, b.index) })
			for i, u := range ups {
				// One write may change two services (an instance moved
				// between them): only the last event of an index carries
				// it, so that resuming from it misses nothing.
				id := u.index
				if i+1 < len(ups) && ups[i+1].index == u.index {
					id = 0
				}
				if err := write("update", id, u.body); err != nil {
					return nil
				}
				shows(u.service, u.there)
			}
			if err := flush(); err != nil {
				return nil
			}
		}
		last = upTo
		s.streams.progress(track, last)
		select {
		case <-changed:
		case <-keepAlive.C:
			_ = out.setWriteDeadline(time.Now().Add(30 * time.Second))
			if _, err := io.WriteString(out, ": keep-alive\n\n"); err != nil {
				return nil
			}
			if err := flush(); err != nil {
				return nil
			}
		case <-r.Context().Done():
			return nil
		case <-out.gone:
			return nil
		case <-stop.Done():
			return nil
		}
	}
}

var newline = []byte("\n")

// maxStreamKeys bounds the services a stream waits on one by one; a
// stream of more waits on every change in its realm, as one of every
// service does.
const maxStreamKeys = 64

// stream is where an event stream's bytes go: the connection itself,
// taken over from net/http, so that an event goes out in one write. (Through
// a ResponseWriter, chunked encoding and its 4 KiB buffer turn one event of
// a large service into three writes, and three wake-ups of the reader.)
// Where the connection cannot be taken over (HTTP/2), the ResponseWriter.
//
// The events of one pass are gathered in a buffer from a pool and sent
// in one write by the flush that ends the pass, which gives the buffer
// back: a stream spends nearly all its life waiting, and a sidecar, a
// dashboard or a script holds one each.
type stream struct {
	dst              io.Writer
	pending          *[]byte      // nil between passes
	after            func() error // once pending is written
	setWriteDeadline func(time.Time) error
	gone             <-chan struct{} // closed when the client hangs up
	close            func()
}

// streamBufs holds the buffers of passes; one that grew past 64 KiB (an
// event of a large service) is not kept.
var streamBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// streamChunk is what a pass gathers before it writes: a snapshot of
// every service (service=*) goes out in pieces of about this size, not
// gathered whole.
const streamChunk = 64 << 10

func (st *stream) Write(p []byte) (int, error) {
	if len(p) >= streamChunk {
		// As bufio.Writer does: what was gathered goes first, then p
		// itself, not copied (an event of a large service, to every
		// stream of it at once).
		if err := st.send(); err != nil {
			return 0, err
		}
		return st.dst.Write(p)
	}
	if st.pending == nil {
		st.pending = streamBufs.Get().(*[]byte)
	}
	*st.pending = append(*st.pending, p...)
	if len(*st.pending) >= streamChunk {
		return len(p), st.send()
	}
	return len(p), nil
}

// send writes what the pass has gathered so far.
func (st *stream) send() error {
	if st.pending == nil || len(*st.pending) == 0 {
		return nil
	}
	_, err := st.dst.Write(*st.pending)
	*st.pending = (*st.pending)[:0]
	return err
}

// flush sends what the pass wrote and gives the buffer back.
func (st *stream) flush() error {
	err := st.send()
	st.release()
	if err != nil {
		return err
	}
	return st.after()
}

func (st *stream) release() {
	if b := st.pending; b != nil {
		st.pending = nil
		if cap(*b) <= streamChunk {
			*b = (*b)[:0]
			streamBufs.Put(b)
		}
	}
}

func openStream(w http.ResponseWriter) (*stream, error) {
	rc := http.NewResponseController(w)
	conn, _, err := rc.Hijack()
	if err != nil {
		_ = rc.SetWriteDeadline(time.Time{})
		w.WriteHeader(http.StatusOK)
		st := &stream{
			dst:              w,
			after:            rc.Flush,
			setWriteDeadline: rc.SetWriteDeadline,
			gone:             make(chan struct{}),
		}
		st.close = st.release
		return st, nil
	}
	if sr, ok := w.(interface{ setStatus(int) }); ok {
		sr.setStatus(http.StatusOK)
	}
	_ = conn.SetDeadline(time.Time{})
	st := &stream{
		dst:              conn,
		after:            func() error { return nil },
		setWriteDeadline: conn.SetWriteDeadline,
	}
	// The body ends when the connection closes: no chunked framing.
	io.WriteString(st, "HTTP/1.1 200 OK\r\n")
	w.Header().Set("Connection", "close")
	_ = w.Header().Write(st)
	io.WriteString(st, "\r\n")
	// The client sends nothing more: a read that ends means it left, and
	// one that returns bytes ends the stream too (the answer said
	// Connection: close; nothing may follow the request). It reads into a
	// small buffer of its own: io.Copy to io.Discard would hold an 8 KiB
	// one for the stream's life.
	gone := make(chan struct{})
	go func() {
		defer close(gone)
		var b [16]byte
		_, _ = conn.Read(b[:])
	}()
	st.gone = gone
	st.close = func() {
		st.release()
		conn.Close()
	}
	return st, nil
}

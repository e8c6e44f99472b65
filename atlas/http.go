package atlas

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"net/http"
	"reflect"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	sb "github.com/switchboard-go/switchboard"
)

// IndexHeader carries the index of every GET answer.
const IndexHeader = sb.IndexHeader

// Blocking query bounds (SPEC "Watching").
const (
	DefaultWait = 5 * time.Minute
	MaxWait     = 10 * time.Minute
)

// apiFunc is a handler that returns its error instead of writing it.
type apiFunc func(w http.ResponseWriter, r *http.Request) error

// writeError writes err as the JSON error body with the status of its code.
// Errors that are not *sb.Error are logged and answered as "internal"
// with no detail.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	code := sb.ErrorCode(err)
	if code == sb.EInternal {
		s.log.Error("atlas: internal error", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	if code == sb.ENotFound && r.Method == http.MethodGet && w.Header().Get(IndexHeader) == "" {
		// Every GET answer carries the index (the SPEC), a 404 too: the
		// index as of which the thing was not there.
		s.st.mu.RLock()
		index := s.st.applied
		s.st.mu.RUnlock()
		w.Header().Set(IndexHeader, strconv.FormatUint(index, 10))
	}
	WriteError(w, err)
}

// WriteError writes err as Switchboard's JSON error body. Other packages
// that answer with Switchboard errors (the sidecar) use it too.
func WriteError(w http.ResponseWriter, err error) {
	code := sb.ErrorCode(err)
	body, _ := json.Marshal(map[string]sb.Error{"error": {Code: code, Message: sb.ErrorMessage(err)}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if code == sb.EUnauthenticated {
		w.Header().Set("WWW-Authenticate", `Bearer realm="atlas"`) // RFC 6750
	}
	w.WriteHeader(sb.HTTPStatus(code))
	w.Write(append(body, '\n'))
}

func writeJSON(w http.ResponseWriter, status int, index uint64, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if index > 0 {
		w.Header().Set(IndexHeader, strconv.FormatUint(index, 10))
	}
	// index 0 marks answers that are not GETs: they carry no index.
	// Content-Length spares an answer over 2 KiB chunked framing and a
	// write of its own.
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	if rec, ok := w.(*statusRecorder); ok {
		rec.writeWhole(body)
		return
	}
	w.Write(body)
}

func marshal(v any) []byte {
	b, err := jsonMarshal(v)
	if err != nil {
		panic(fmt.Sprintf("atlas: marshal %T: %v", v, err)) // only our own types are marshalled
	}
	return append(b, '\n')
}

// decodeBody reads a JSON body into v with the SPEC's rules: at most limit
// bytes (413), JSON content type (415), no unknown fields and nothing after
// the value (400).
func decodeBody(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	body, err := readBody(w, r, limit)
	if err != nil {
		return err
	}
	return DecodeJSON(body, v)
}

// readBody reads a JSON body with decodeBody's limits and content type.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" {
			return nil, sb.Errorf(sb.EUnsupportedMedia, "content-type: must be application/json, got %q", ct)
		}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return nil, sb.Errorf(sb.ETooLarge, "body: must be at most %d bytes", limit)
	}
	if err != nil {
		return nil, sb.Errorf(sb.EInvalid, "body: could not be read: %v", err)
	}
	return body, nil
}

// DecodeJSON decodes one JSON value into v, refusing unknown fields and
// trailing data, with errors that name the field.
func DecodeJSON(body []byte, v any) error {
	if t := bytes.TrimSpace(body); len(t) == 0 || bytes.Equal(t, []byte("null")) {
		return sb.Errorf(sb.EInvalid, "body: a JSON object is required")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var typeErr *json.UnmarshalTypeError
		var syntaxErr *json.SyntaxError
		switch {
		case errors.As(err, &typeErr) && typeErr.Field != "":
			return sb.Errorf(sb.EInvalid, "%s: %s", typeErr.Field, typeRule(reflect.TypeOf(v), typeErr))
		case errors.As(err, &typeErr):
			return sb.Errorf(sb.EInvalid, "body: must be a JSON object, got %s", typeErr.Value)
		case errors.As(err, &syntaxErr):
			return sb.Errorf(sb.EInvalid, "body: malformed JSON at byte %d: %v", syntaxErr.Offset, err)
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			return sb.Errorf(sb.EInvalid, "%s: unknown field", strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`))
		case errors.Is(err, io.ErrUnexpectedEOF):
			return sb.Errorf(sb.EInvalid, "body: malformed JSON: unexpected end")
		}
		// Errors from our own UnmarshalJSON methods (durations) name no
		// field; the only such field is ttl.
		return sb.Errorf(sb.EInvalid, "ttl: %v", err)
	}
	// Not dec.More, which takes a stray "]" or "}" for the end of input.
	if len(bytes.TrimSpace(body[dec.InputOffset():])) > 0 {
		return sb.Errorf(sb.EInvalid, "body: must be a single JSON value, found data after it")
	}
	return checkKeyCase(body, reflect.TypeOf(v))
}

// typeRule says what a value of the wrong type should have been: "must
// be a whole number, got number 1.5". Elements of arrays and values of
// objects are named as such, since the error names only the field.
func typeRule(v reflect.Type, e *json.UnmarshalTypeError) string {
	kind := e.Type.Kind()
	if lit, ok := strings.CutPrefix(e.Value, "number "); ok && isInt(kind) && !strings.ContainsAny(lit, ".eE") {
		return "out of range, got " + e.Value
	}
	what := "must be " + jsonTypeName(kind)
	if f := jsonField(v, e.Field); f != nil && f != e.Type {
		switch f.Kind() {
		case reflect.Slice:
			what = "each element " + what
		case reflect.Map:
			what = "each value " + what
		}
	}
	return what + ", got " + e.Value
}

func isInt(k reflect.Kind) bool {
	return k >= reflect.Int && k <= reflect.Uint64
}

// jsonField finds the type of the field at a dotted JSON path in t, a
// struct or a pointer to one; nil when there is none.
func jsonField(t reflect.Type, path string) reflect.Type {
	for name := range strings.SplitSeq(path, ".") {
		for t != nil && t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if t == nil || t.Kind() != reflect.Struct {
			return nil
		}
		t = jsonFields(t)[name]
	}
	return t
}

func jsonTypeName(k reflect.Kind) string {
	if isInt(k) {
		return "a whole number"
	}
	switch k {
	case reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Slice:
		return "an array"
	case reflect.Map, reflect.Struct:
		return "an object"
	case reflect.Pointer:
		return "a value of the right type"
	}
	return k.String()
}

// statusRecorder remembers the status for metrics, and writes answers
// whole.
type statusRecorder struct {
	http.ResponseWriter
	status int
	conn   *coalescingConn // nil unless served through Listener
}

// writeWhole writes body, the whole body of an answer whose headers are
// set, and has the answer leave in one write when the connection allows.
func (r *statusRecorder) writeWhole(body []byte) {
	if r.conn == nil || len(body) <= minHeld || len(body) > maxHeld {
		r.Write(body)
		return
	}
	r.conn.hold()
	defer r.conn.release() // also if a write panics: nothing stays held
	r.Write(body)
	r.Flush()
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// setStatus records the status of an answer written past the recorder (an
// event stream on a connection taken over).
func (r *statusRecorder) setStatus(code int) {
	if r.status == 0 {
		r.status = code
	}
}

// Flush lets the event stream flush through the recorder.
func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// wrap turns an apiFunc into a handler with authentication, a write
// deadline, panic recovery, metrics and error mapping.
func (s *Server) wrap(route string, public bool, h apiFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		if r.ProtoMajor == 1 {
			rec.conn, _ = r.Context().Value(connKey{}).(*coalescingConn)
		}
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.Error("atlas: panic", "route", route, "panic", v, "stack", string(debug.Stack()))
				if rec.status == 0 {
					WriteError(rec, fmt.Errorf("panic: %v", v))
				}
			}
			s.metrics.observe(route, rec.status, time.Since(start))
		}()
		// Blocking handlers move this deadline out as far as they need.
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(30 * time.Second))
		if r.Method == http.MethodGet {
			s.markStale(w)
		}
		if err := s.refuseBrowsers(r); err != nil {
			s.writeError(rec, r, err)
			return
		}
		if !public {
			p, err := s.authenticate(r)
			if err != nil {
				s.writeError(rec, r, err)
				return
			}
			r = r.WithContext(context.WithValue(r.Context(), reqInfoKey{}, &reqInfo{principal: p, query: r.URL.Query()}))
		}
		if err := h(rec, r); err != nil {
			s.writeError(rec, r, err)
		}
	})
}

// blockingParams reads ?index and ?wait.
func blockingParams(r *http.Request) (index uint64, wait time.Duration, err error) {
	q := query(r)
	if v := q.Get("index"); v != "" {
		index, err = strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, 0, sb.Errorf(sb.EInvalid, "index: must be a non-negative integer, got %q", v)
		}
	}
	wait = DefaultWait
	if v := q.Get("wait"); v != "" {
		wait, err = time.ParseDuration(v)
		if err != nil {
			// Consul also takes plain seconds.
			n, nerr := strconv.ParseUint(v, 10, 32)
			if nerr != nil {
				return 0, 0, sb.Errorf(sb.EInvalid, "wait: must be a duration such as \"30s\", got %q", v)
			}
			wait = time.Duration(n) * time.Second
		}
		if wait <= 0 {
			return 0, 0, sb.Errorf(sb.EInvalid, "wait: must be positive, got %q", v)
		}
		wait = min(wait, MaxWait)
	}
	return index, wait, nil
}

// answer renders a GET answer from memory: its index and its body without
// lease fields (what blocking queries compare).
type answer func() (index uint64, body []byte, err error)

// blocking serves a GET that may be a blocking query. keys are the watch
// keys the answer depends on. When ?index=N is given and N is the current
// index, it waits until the answer itself differs from the one at N (not
// merely until something it depends on was written), or until wait (plus
// up to wait/16 of jitter) runs out. final, when not nil, renders the body
// actually sent (with lease fields).
//
// allowed is the handler's access check: asked first, and again, with
// whether the token still exists, after each wake and before a query that
// waited answers: access taken away while a query waited (its token
// deleted, the policy that let it read a service withdrawn) must not be
// answered with what changed since. A change of tokens or policies wakes
// the query to ask at once.
func (s *Server) blocking(w http.ResponseWriter, r *http.Request, keys []string, allowed func() error, render answer, final func() ([]byte, error)) error {
	if err := allowed(); err != nil {
		return err
	}
	want, wait, err := blockingParams(r)
	if err != nil {
		return err
	}
	p := principalFrom(r.Context())
	mayAnswer := func() error {
		if err := p.current(); err != nil {
			return err
		}
		return allowed()
	}
	blockingQuery := query(r).Has("index") && want > 0
	var waitFor []<-chan struct{}
	release := func() {}
	defer func() { release() }()
	if blockingQuery {
		if p != nil {
			keys = append(slices.Clip(keys), tokensKey, policiesKey)
		}
		waitFor, release = s.st.waitChans(keys)
	}
	stop := s.waitCtx()
	index, body, err := render()
	if err != nil {
		return err
	}
	waited := blockingQuery && want >= index
	if waited {
		if err := s.refuseWhileStale(); err != nil {
			return err
		}
		wait += rand.N(wait/16 + 1)
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(wait + 30*time.Second))
		timer := time.NewTimer(wait)
		defer timer.Stop()
		s.metrics.blocking.Inc()
		defer s.metrics.blocking.Dec()
		first := body
	wait:
		for {
			if err := waitAny(r.Context(), stop, timer.C, waitFor); err != nil {
				if errors.Is(err, errTimeout) || stop.Err() != nil {
					break wait
				}
				return nil // the client left
			}
			if err := mayAnswer(); err != nil {
				return err
			}
			next, releaseNext := s.st.waitChans(keys)
			release()
			waitFor, release = next, releaseNext
			index, body, err = render()
			if err != nil {
				return err
			}
			if !bytes.Equal(withoutIndex(body), withoutIndex(first)) {
				break
			}
		}
	}
	if final != nil {
		if body, err = final(); err != nil {
			return err
		}
	}
	if waited {
		// The store may have stopped (or started again) answering, and
		// access may have been taken away, while the query waited: both
		// as of the answer, not of the request (which wrap and the
		// handler checked).
		s.markStale(w)
		if err := mayAnswer(); err != nil {
			return err
		}
	}
	writeJSON(w, http.StatusOK, index, body)
	return nil
}

// markStale sets StaleHeader on a read's answer while the store does not
// answer, and removes it otherwise.
func (s *Server) markStale(w http.ResponseWriter) {
	if since := s.Stale(); !since.IsZero() {
		w.Header().Set(StaleHeader, since.UTC().Format(time.RFC3339))
	} else {
		w.Header().Del(StaleHeader)
	}
}

var errTimeout = errors.New("timeout")

// withoutIndex strips the leading "index" member that most answers start
// with, so that answers compare by content.
func withoutIndex(body []byte) []byte {
	rest, ok := bytes.CutPrefix(body, []byte(`{"index":`))
	if !ok {
		return body
	}
	if i := bytes.IndexAny(rest, ",}"); i >= 0 {
		return rest[i:]
	}
	return body
}

func waitAny(ctx, stop context.Context, timer <-chan time.Time, chans []<-chan struct{}) error {
	if len(chans) == 1 {
		select {
		case <-chans[0]:
			return nil
		case <-timer:
			return errTimeout
		case <-ctx.Done():
			return ctx.Err()
		case <-stop.Done():
			return stop.Err()
		}
	}
	woke := make(chan struct{})
	var once sync.Once
	done := make(chan struct{})
	defer close(done)
	for _, ch := range chans {
		go func() {
			select {
			case <-ch:
				once.Do(func() { close(woke) })
			case <-done:
			}
		}()
	}
	select {
	case <-woke:
		return nil
	case <-timer:
		return errTimeout
	case <-ctx.Done():
		return ctx.Err()
	case <-stop.Done():
		return stop.Err()
	}
}

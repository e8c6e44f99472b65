package health_test

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/switchboard-go/switchboard/health"
)

var update = flag.Bool("update", false, "rewrite golden files")

// TestRunscopeJSONShape pins /healthcheck to Runscope's field names and
// JSON types (values that vary are normalised).
func TestRunscopeJSONShape(t *testing.T) {
	now := time.Unix(1764237600, 123000000)
	c := health.New()
	c.Hostname = "host001"
	c.Now = func() time.Time { return now }
	c.Add("redis", func(context.Context) (string, error) { return "redis ok", nil })
	c.Add("db", func(context.Context) (string, error) { return "", errors.New("connection refused") })
	rec := httptest.NewRecorder()
	c.ServeHTTP(rec, httptest.NewRequest("GET", "/healthcheck", nil))
	if rec.Code != 500 || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("failing healthcheck = %d %s", rec.Code, rec.Header().Get("Content-Type"))
	}
	var got bytesIndent
	got.indent(t, rec.Body.Bytes())
	golden := filepath.Join("testdata", "healthcheck.golden.json")
	if *update {
		os.WriteFile(golden, got.b, 0o644)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if string(want) != string(got.b) {
		t.Fatalf("healthcheck JSON:\n%s\nwant (%s):\n%s", got.b, golden, want)
	}
	// And the types, field by field, as Runscope's: floats for times.
	var m map[string]any
	json.Unmarshal(rec.Body.Bytes(), &m)
	types := map[string]reflect.Kind{"hostname": reflect.String, "status": reflect.String, "timestamp": reflect.Float64, "results": reflect.Slice}
	for k, kind := range types {
		if reflect.ValueOf(m[k]).Kind() != kind {
			t.Errorf("%s is %T; want %s", k, m[k], kind)
		}
	}
	r0 := m["results"].([]any)[0].(map[string]any)
	for k, kind := range map[string]reflect.Kind{"checker": reflect.String, "output": reflect.String, "passed": reflect.Bool, "timestamp": reflect.Float64, "expires": reflect.Float64} {
		if reflect.ValueOf(r0[k]).Kind() != kind {
			t.Errorf("results[0].%s is %T; want %s", k, r0[k], kind)
		}
	}
}

type bytesIndent struct{ b []byte }

func (bi *bytesIndent) indent(t *testing.T, raw []byte) {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	out, _ := json.MarshalIndent(v, "", "  ")
	bi.b = append(out, '\n')
}

func TestCacheTimes(t *testing.T) {
	now := time.Unix(1000, 0)
	var runs atomic.Int32
	fail := false
	c := health.New()
	c.Now = func() time.Time { return now }
	c.Add("x", func(context.Context) (string, error) {
		runs.Add(1)
		if fail {
			return "", errors.New("down")
		}
		return "up", nil
	})
	ctx := context.Background()
	c.Run(ctx)
	now = now.Add(26 * time.Second)
	c.Run(ctx)
	if runs.Load() != 1 {
		t.Fatalf("a pass was re-run within 27s: %d runs", runs.Load())
	}
	now = now.Add(2 * time.Second)
	fail = true
	rep := c.Run(ctx)
	if runs.Load() != 2 || rep.Passed() {
		t.Fatalf("after 28s: %d runs, passed=%v; want a fresh, failing run", runs.Load(), rep.Passed())
	}
	if got := rep.Results[0].Expires - rep.Results[0].Timestamp; got != 9 {
		t.Fatalf("a failure is cached %vs; want 9", got)
	}
	now = now.Add(8 * time.Second)
	c.Run(ctx)
	now = now.Add(2 * time.Second)
	c.Run(ctx)
	if runs.Load() != 3 {
		t.Fatalf("failure cache: %d runs; want 3", runs.Load())
	}
	// Zero TTLs: no cache.
	nc := &health.Checker{}
	nc.Add("y", func(context.Context) (string, error) { runs.Add(1); return "", nil })
	before := runs.Load()
	nc.Run(ctx)
	nc.Run(ctx)
	if runs.Load()-before != 2 {
		t.Fatal("a Checker with zero TTLs cached")
	}
}

// TestChecksRunConcurrently: each check waits for the other to start; run
// one after the other, the first would time out.
func TestChecksRunConcurrently(t *testing.T) {
	c := &health.Checker{Timeout: 10 * time.Second}
	a, b := make(chan struct{}), make(chan struct{})
	c.Add("a", func(ctx context.Context) (string, error) { close(a); <-b; return "a", nil })
	c.Add("b", func(ctx context.Context) (string, error) { close(b); <-a; return "b", nil })
	if rep := c.Run(context.Background()); !rep.Passed() {
		t.Fatalf("concurrent checks: %+v", rep.Results)
	}
}

func TestTimeoutAndPanic(t *testing.T) {
	c := &health.Checker{Timeout: 50 * time.Millisecond}
	block := make(chan struct{})
	defer close(block)
	c.Add("slow", func(ctx context.Context) (string, error) { <-block; return "", nil })
	c.Add("boom", func(ctx context.Context) (string, error) { panic("oops") })
	rep := c.Run(context.Background())
	if rep.Passed() || !strings.Contains(rep.Results[0].Output, "timed out") || !strings.Contains(rep.Results[1].Output, "panicked: oops") {
		t.Fatalf("results = %+v", rep.Results)
	}
	if err := c.Add("slow", func(context.Context) (string, error) { return "", nil }); err == nil {
		t.Fatal("a name taken twice was accepted")
	}
}

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	mux := http.NewServeMux()
	if c, ok := h.(*health.Checker); ok {
		c.Register(mux)
		h = mux
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	return rec.Code, rec.Body.String()
}

func TestLivezReadyz(t *testing.T) {
	c := &health.Checker{}
	dbUp := true
	c.AddCheck(health.Check{Name: "deadlock", Liveness: true, Func: func(context.Context) (string, error) { return "ok", nil }})
	c.Add("db", func(context.Context) (string, error) {
		if dbUp {
			return "ok", nil
		}
		return "", errors.New("db down")
	})
	tests := []struct {
		path   string
		status int
		body   string
	}{
		{"/livez", 200, "ok"},
		{"/readyz", 200, "ok"},
		{"/readyz?verbose", 200, "[+]ping ok\n[+]deadlock ok\n[+]db ok\nreadyz check passed\n"},
		{"/livez?verbose", 200, "[+]ping ok\n[+]deadlock ok\nlivez check passed\n"},
		{"/readyz/db", 200, "ok"},
		{"/readyz/nope", 404, "readyz: no check named \"nope\""},
		{"/livez/db", 404, "livez: no check named \"db\""},
	}
	for _, tt := range tests {
		if code, body := get(t, c, tt.path); code != tt.status || !strings.Contains(body, tt.body) {
			t.Errorf("GET %s = %d %q; want %d %q", tt.path, code, body, tt.status, tt.body)
		}
	}
	dbUp = false
	if code, body := get(t, c, "/readyz"); code != 500 || !strings.Contains(body, "[-]db failed: db down") {
		t.Errorf("readyz with db down = %d %q", code, body)
	}
	if code, _ := get(t, c, "/livez"); code != 200 {
		t.Errorf("livez with db down = %d; a dependency must not fail liveness", code)
	}
	if code, body := get(t, c, "/readyz?exclude=db"); code != 200 || body != "ok" {
		t.Errorf("readyz?exclude=db = %d %q", code, body)
	}
	dbUp = true
	c.SetDraining(true)
	if code, body := get(t, c, "/readyz"); code != 500 || !strings.Contains(body, "[-]shutdown failed: draining") {
		t.Errorf("readyz while draining = %d %q", code, body)
	}
	if code, _ := get(t, c, "/healthcheck"); code != 500 {
		t.Errorf("healthcheck while draining = %d; want a failure so sidecars stop routing", code)
	}
	if code, _ := get(t, c, "/livez"); code != 200 {
		t.Errorf("livez while draining = %d; draining is not broken", code)
	}
}

// ReadinessAskedAt moves for the probes that fail while draining, and
// for no other: the kit tells from it whether its sidecar would see it
// drain.
func TestReadinessAskedAt(t *testing.T) {
	now := time.Unix(1000, 0)
	c := &health.Checker{Now: func() time.Time { return now }}
	c.Add("db", func(context.Context) (string, error) { return "ok", nil })
	for _, path := range []string{"/livez", "/livez/ping", "/readyz/db", "/readyz?exclude=shutdown"} {
		get(t, c, path)
		if at := c.ReadinessAskedAt(); !at.IsZero() {
			t.Errorf("after GET %s, ReadinessAskedAt = %v; want zero: it cannot fail while draining", path, at)
		}
	}
	for _, path := range []string{"/readyz", "/healthcheck", "/readyz/shutdown"} {
		now = now.Add(time.Second)
		get(t, c, path)
		if at := c.ReadinessAskedAt(); !at.Equal(now) {
			t.Errorf("after GET %s, ReadinessAskedAt = %v; want %v", path, at, now)
		}
	}
}

func TestGRPC(t *testing.T) {
	c := &health.Checker{}
	var up atomic.Bool
	up.Store(true)
	c.Add("db", func(context.Context) (string, error) {
		if up.Load() {
			return "ok", nil
		}
		return "", errors.New("down")
	})
	health.WatchInterval = 20 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, c.GRPC())
	go srv.Serve(ln)
	defer srv.Stop()
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, svc := range []string{"", "db"} {
		res, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || res.Status != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("Check(%q) = %v, %v", svc, res, err)
		}
	}
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("Check(unknown) = %v; want NOT_FOUND", err)
	}
	list, err := hc.List(ctx, &healthpb.HealthListRequest{})
	if err != nil || len(list.Statuses) != 2 {
		t.Fatalf("List = %v, %v", list, err)
	}
	w, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: ""})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := w.Recv(); err != nil || m.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first Watch message = %v, %v", m, err)
	}
	up.Store(false)
	if m, err := w.Recv(); err != nil || m.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("Watch after a failure = %v, %v", m, err)
	}
	uw, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: "nope"})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := uw.Recv(); err != nil || m.Status != healthpb.HealthCheckResponse_SERVICE_UNKNOWN {
		t.Fatalf("Watch(unknown) = %v, %v; want SERVICE_UNKNOWN", m, err)
	}
	_ = io.EOF
}

// A caller that gives up early does not fail the check for the others:
// the check runs to its own timeout, and what is cached is its result.
func TestAnImpatientCallerDoesNotFailTheCheck(t *testing.T) {
	c := &health.Checker{Timeout: 5 * time.Second, SuccessTTL: time.Minute, FailureTTL: time.Minute}
	c.Add("db", func(ctx context.Context) (string, error) {
		select {
		case <-time.After(100 * time.Millisecond):
			return "ok", nil
		case <-ctx.Done():
			return "", ctx.Err()
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	c.Run(ctx)
	if code, body := get(t, c, "/healthcheck"); code != 200 {
		t.Fatalf("after a caller gave up early: %d %s; want 200", code, body)
	}
}

// Every caller whose cached result had expired started the check
// again, even while an earlier run was still going: concurrent probes
// (sidecar, Kubernetes, a load balancer) multiplied the work on the
// dependency, and a check that ignores its context leaked one goroutine,
// stuck for good, per run. One run of a check is in flight at a time.
func TestOneRunOfACheckInFlight(t *testing.T) {
	var started atomic.Int32
	release := make(chan struct{})
	c := &health.Checker{Timeout: 50 * time.Millisecond} // no cache
	c.Add("stuck", func(context.Context) (string, error) {
		started.Add(1)
		<-release // ignores its context
		return "ok", nil
	})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			rep := c.Run(context.Background())
			if rep.Passed() || !strings.Contains(rep.Results[0].Output, "timed out") {
				t.Errorf("a run of a stuck check = %+v; want a timeout", rep.Results)
			}
		})
	}
	wg.Wait()
	for range 3 {
		if rep := c.Run(context.Background()); rep.Passed() || !strings.Contains(rep.Results[0].Output, "timed out") {
			t.Errorf("a run while the stuck one goes on = %+v; want a timeout", rep.Results)
		}
	}
	if n := started.Load(); n != 1 {
		t.Fatalf("the check was started %d times while its first run was stuck; want 1", n)
	}
	close(release)
	deadline := time.Now().Add(5 * time.Second)
	for {
		rep := c.Run(context.Background())
		if rep.Passed() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the stuck run returned: %+v", rep.Results)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := started.Load(); n != 2 {
		t.Fatalf("started %d times; want 2", n)
	}
}

// A Watch stream that never ends keeps grpc.Server.GracefulStop
// waiting for ever; while draining, Watch sends the status and ends.
func TestWatchEndsWhileDrainingSoGracefulStopReturns(t *testing.T) {
	c := &health.Checker{}
	c.Add("db", func(context.Context) (string, error) { return "ok", nil })
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, c.GRPC())
	go srv.Serve(ln)
	defer srv.Stop()
	conn, _ := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	w, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	w.Recv()
	c.SetDraining(true)
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second): // a Watch polls every second
		t.Fatal("GracefulStop hangs on a Watch stream")
	}
}

// A failed report's status is FailedStatus when it is an error status, and
// 500 otherwise: a 2xx would say passing to every check reading it, and
// one outside 100-999 made net/http panic.
func TestFailedStatus(t *testing.T) {
	for set, want := range map[int]int{0: 500, 503: 503, 418: 418, 200: 500, 1000: 500, -1: 500} {
		c := health.New()
		c.FailedStatus = set
		c.Add("db", func(context.Context) (string, error) { return "", errors.New("down") })
		rec := httptest.NewRecorder()
		c.ServeHTTP(rec, httptest.NewRequest("GET", "/healthcheck", nil))
		if rec.Code != want {
			t.Errorf("FailedStatus %d: answered %d; want %d", set, rec.Code, want)
		}
	}
}

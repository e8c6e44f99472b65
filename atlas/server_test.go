package atlas_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/atlas"
	"github.com/switchboard-go/switchboard/atlas/atlastest"
	"github.com/switchboard-go/switchboard/atlas/boltstore"
	"github.com/switchboard-go/switchboard/client"
)

// testAtlas runs an Atlas on a real bbolt file in a temp dir.
type testAtlas struct {
	t     *testing.T
	srv   *atlas.Server
	store *boltstore.Store
	http  *httptest.Server
	dir   string
	token string
}

func start(t *testing.T, insecure bool) *testAtlas {
	t.Helper()
	dir := t.TempDir()
	return startIn(t, dir, insecure)
}

// startIn starts an Atlas on the store in dir; options change its Config.
func startIn(t *testing.T, dir string, insecure bool, options ...func(*atlas.Config)) *testAtlas {
	t.Helper()
	st, err := boltstore.Open(boltstore.Config{Path: filepath.Join(dir, "atlas.db"), SweepInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	cfg := atlas.Config{Store: st, DataDir: dir, Insecure: insecure, OutputInterval: time.Hour}
	for _, o := range options {
		o(&cfg)
	}
	srv, err := atlas.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// As switchboard atlas serves it: HTTPServer on Listener.
	hs := httptest.NewUnstartedServer(nil)
	hs.Config = srv.HTTPServer()
	hs.Listener = atlas.Listener(hs.Listener)
	hs.Start()
	a := &testAtlas{t: t, srv: srv, store: st, http: hs, dir: dir}
	if !insecure {
		b, err := os.ReadFile(filepath.Join(dir, "admin.token"))
		if err != nil {
			t.Fatal(err)
		}
		a.token = strings.TrimSpace(string(b))
	}
	t.Cleanup(a.stop)
	return a
}

func (a *testAtlas) stop() {
	a.http.CloseClientConnections()
	a.http.Close()
	a.srv.Close()
	a.store.Close()
}

type resp struct {
	status int
	header http.Header
	body   []byte
}

func (r resp) decode(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

func (r resp) index(t *testing.T) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(r.header.Get(atlas.IndexHeader), 10, 64)
	if err != nil {
		t.Fatalf("no index header: %v", r.header)
	}
	return n
}

func (a *testAtlas) do(method, path, body string) resp {
	return a.doAs(a.token, method, path, body)
}

func (a *testAtlas) doAs(token, method, path, body string) resp {
	a.t.Helper()
	auth := ""
	if token != "" {
		auth = "Bearer " + token
	}
	return a.doWithHeader(auth, method, path, body)
}

func (a *testAtlas) doWithHeader(auth, method, path, body string) resp {
	a.t.Helper()
	req, err := http.NewRequest(method, a.http.URL+path, strings.NewReader(body))
	if err != nil {
		a.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return resp{res.StatusCode, res.Header, b}
}

// eventStreams returns the event streams Atlas says it has open
// (switchboard_atlas_event_streams in /metrics), "" when it says nothing.
func (a *testAtlas) eventStreams() string {
	for _, line := range strings.Split(string(a.do("GET", "/metrics", "").body), "\n") {
		if v, ok := strings.CutPrefix(line, "switchboard_atlas_event_streams "); ok {
			return v
		}
	}
	return ""
}

func (a *testAtlas) must(method, path, body string) resp {
	a.t.Helper()
	r := a.do(method, path, body)
	if r.status != 200 {
		a.t.Fatalf("%s %s = %d %s; want 200", method, path, r.status, r.body)
	}
	return r
}

func reg(service string, port int, extra string) string {
	return fmt.Sprintf(`{"service":%q,"address":"127.0.0.1","port":%d%s}`, service, port, extra)
}

func TestRegisterAndList(t *testing.T) {
	a := start(t, true)
	r := a.must("PUT", "/v1/instances/identity-h1-5000", reg("identity", 5000, `,"tags":["v2"],"meta":{"version":"1.4.2"},"ttl":"10s"`))
	var in sb.Instance
	r.decode(t, &in)
	if in.Realm != "dev" || in.Status != sb.Passing || !in.Enabled || in.ExpiresAt == nil || in.LastHeartbeat == nil {
		t.Fatalf("registered instance = %+v", in)
	}
	a.must("PUT", "/v1/instances/identity-h2-5000", reg("identity", 5001, `,"status":"warning"`))
	a.must("PUT", "/v1/instances/billing-h1-6000", reg("billing", 6000, `,"realm":"production"`))

	var list sb.ServiceList
	a.must("GET", "/v1/services", "").decode(t, &list)
	want := []sb.ServiceSummary{{Name: "identity", Instances: 2, Passing: 1, Warning: 1}}
	if diff := cmp.Diff(want, list.Services); diff != "" {
		t.Errorf("services (-want +got):\n%s", diff)
	}
	var si sb.ServiceInstances
	a.must("GET", "/v1/services/identity?status=passing", "").decode(t, &si)
	if len(si.Instances) != 1 || si.Instances[0].ID != "identity-h1-5000" || si.Instances[0].ExpiresAt != nil {
		t.Errorf("passing identity = %+v", si.Instances)
	}
	a.must("GET", "/v1/services/identity?tag=v2&leases=true", "").decode(t, &si)
	if len(si.Instances) != 1 || si.Instances[0].ExpiresAt == nil {
		t.Errorf("identity tag v2 with leases = %+v", si.Instances)
	}
	a.must("GET", "/v1/services/nothing", "").decode(t, &si)
	if len(si.Instances) != 0 || si.Service != "nothing" {
		t.Errorf("unknown service = %+v", si)
	}
}

func TestBlockingQueryWakesOnlyForItsOwnAnswer(t *testing.T) {
	a := start(t, true)
	a.must("PUT", "/v1/instances/a-1", reg("a", 5000, ""))
	a.must("PUT", "/v1/instances/a-2", reg("a", 5001, `,"status":"critical"`))
	first := a.must("GET", "/v1/services/a?status=passing", "")
	idx := first.index(t)

	done := make(chan resp, 1)
	go func() {
		done <- a.do("GET", fmt.Sprintf("/v1/services/a?status=passing&index=%d&wait=20s", idx), "")
	}()
	// Changes that do not change this answer: another service, the
	// critical instance's output, a heartbeat that changes nothing.
	a.must("PUT", "/v1/instances/b-1", reg("b", 5002, ""))
	a.must("PUT", "/v1/instances/a-2/status", `{"status":"critical","output":"still down"}`)
	a.must("PUT", "/v1/instances/a-1/status", `{"status":"passing"}`)
	a.must("PUT", "/v1/instances/a-2", reg("a", 5001, `,"status":"critical","tags":["x"]`))
	select {
	case r := <-done:
		t.Fatalf("blocking query returned for a change outside its answer: %s", r.body)
	case <-time.After(300 * time.Millisecond):
	}
	a.must("PUT", "/v1/instances/a-2/status", `{"status":"passing"}`)
	select {
	case r := <-done:
		var si sb.ServiceInstances
		r.decode(t, &si)
		if len(si.Instances) != 2 || r.index(t) <= idx {
			t.Fatalf("woken answer = %s (index %d, was %d)", r.body, r.index(t), idx)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("blocking query did not wake for its own change")
	}
}

// The first write to a new store is newer than the index Atlas answers
// for what holds nothing yet: a query made before it, cached or blocking,
// sees it.
func TestTheFirstWriteIsNewerThanAnEmptyAnswer(t *testing.T) {
	a := start(t, true)
	empty := a.must("GET", "/v1/services/web", "")
	done := make(chan resp, 1)
	go func() {
		done <- a.do("GET", fmt.Sprintf("/v1/services/web?index=%d&wait=20s", empty.index(t)), "")
	}()
	a.must("PUT", "/v1/instances/web-1", reg("web", 5000, ""))
	var woken, now sb.ServiceInstances
	select {
	case r := <-done:
		r.decode(t, &woken)
	case <-time.After(10 * time.Second):
		t.Fatal("a blocking query on the empty answer did not wake for the first write")
	}
	a.must("GET", "/v1/services/web", "").decode(t, &now)
	if len(woken.Instances) != 1 || len(now.Instances) != 1 {
		t.Fatalf("after the first write: woken answer %+v, new answer %+v; want web-1 in both", woken, now)
	}
}

func TestBlockingQueryTimesOut(t *testing.T) {
	a := start(t, true)
	r := a.must("GET", "/v1/services", "")
	r2 := a.must("GET", fmt.Sprintf("/v1/services?index=%d&wait=50ms", r.index(t)), "")
	if r2.index(t) != r.index(t) {
		t.Fatalf("index moved without a change: %d -> %d", r.index(t), r2.index(t))
	}
}

func TestHeartbeatWritesNothingWhenNothingChanged(t *testing.T) {
	a := start(t, true)
	a.must("PUT", "/v1/instances/a-1", reg("a", 5000, ""))
	ctx := context.Background()
	before, _, _ := a.store.Snapshot(ctx)
	for range 20 {
		a.must("PUT", "/v1/instances/a-1/status", `{"status":"passing"}`)
	}
	after, _, _ := a.store.Snapshot(ctx)
	if after != before {
		t.Fatalf("store index moved from %d to %d on heartbeats that changed nothing", before, after)
	}
	a.must("PUT", "/v1/instances/a-1/status", `{"status":"warning","output":"slow"}`)
	after, _, _ = a.store.Snapshot(ctx)
	if after != before+1 {
		t.Fatalf("status change: store index %d -> %d; want one write", before, after)
	}
}

func TestLeaseExpiry(t *testing.T) {
	a := start(t, true)
	a.must("PUT", "/v1/instances/a-1", reg("a", 5000, `,"ttl":"1s"`))
	r := a.must("GET", "/v1/services/a", "")
	r2 := a.must("GET", fmt.Sprintf("/v1/services/a?index=%d&wait=20s", r.index(t)), "")
	var si sb.ServiceInstances
	r2.decode(t, &si)
	if len(si.Instances) != 0 {
		t.Fatalf("after the lease ran out: %s", r2.body)
	}
	if got := a.do("PUT", "/v1/instances/a-1/status", `{"status":"passing"}`); got.status != 404 {
		t.Fatalf("heartbeat of an expired instance = %d; want 404", got.status)
	}
}

func TestEnabledSurvivesReregistration(t *testing.T) {
	a := start(t, true)
	a.must("PUT", "/v1/instances/a-1", reg("a", 5000, ""))
	a.must("PUT", "/v1/instances/a-1/enabled", `{"enabled":false,"reason":"maintenance"}`)
	var in sb.Instance
	a.must("PUT", "/v1/instances/a-1", reg("a", 5000, "")).decode(t, &in)
	if in.Enabled || in.DisabledReason != "maintenance" {
		t.Fatalf("after re-registration: enabled=%v reason=%q", in.Enabled, in.DisabledReason)
	}
	var list sb.ServiceList
	a.must("GET", "/v1/services", "").decode(t, &list)
	if list.Services[0].Disabled != 1 {
		t.Fatalf("disabled count = %+v", list.Services)
	}
	a.must("PUT", "/v1/instances/a-1/enabled", `{"enabled":true}`).decode(t, &in)
	if !in.Enabled {
		t.Fatal("enable did not take")
	}
}

// The switch of an instance whose lease ran out stays (it is drained
// when it comes back), until a DELETE of the id clears it; a DELETE of an
// id with neither is a 404.
func TestDeleteClearsTheSwitchOfAnExpiredInstance(t *testing.T) {
	a := start(t, true)
	a.must("PUT", "/v1/instances/a-1", reg("a", 5000, `,"ttl":"1s"`))
	a.must("PUT", "/v1/instances/a-1/enabled", `{"enabled":false,"reason":"maintenance"}`)
	r := a.must("GET", "/v1/services/a", "")
	a.must("GET", fmt.Sprintf("/v1/services/a?index=%d&wait=20s", r.index(t)), "") // expired
	if got := a.do("GET", "/v1/instances/a-1", ""); got.status != 404 {
		t.Fatalf("GET of the expired instance = %d; want 404", got.status)
	}
	a.must("DELETE", "/v1/instances/a-1", "")
	var in sb.Instance
	a.must("PUT", "/v1/instances/a-1", reg("a", 5000, "")).decode(t, &in)
	if !in.Enabled {
		t.Fatalf("registered again after the DELETE: still disabled (%q)", in.DisabledReason)
	}
	a.must("DELETE", "/v1/instances/a-1", "")
	if got := a.do("DELETE", "/v1/instances/a-1", ""); got.status != 404 {
		t.Fatalf("DELETE of an id with neither instance nor switch = %d; want 404", got.status)
	}
}

func TestRestartKeepsInstancesForATTL(t *testing.T) {
	dir := t.TempDir()
	a := startIn(t, dir, true)
	a.must("PUT", "/v1/instances/a-1", reg("a", 5000, `,"ttl":"1h"`))
	before := a.must("GET", "/v1/services/a", "").index(t)
	a.stop()
	b := startIn(t, dir, true)
	r := b.must("GET", "/v1/instances/a-1", "")
	var in sb.Instance
	r.decode(t, &in)
	if in.ExpiresAt.Before(time.Now().Add(59 * time.Minute)) {
		t.Fatalf("after restart the lease runs out at %v; want a full TTL from the restart", in.ExpiresAt)
	}
	if got := b.must("GET", "/v1/services/a", "").index(t); got < before {
		t.Fatalf("index went backwards across a restart: %d -> %d", before, got)
	}
}

func TestConfigMergeAndSources(t *testing.T) {
	a := start(t, true)
	a.must("PUT", "/v1/config/layer", `{"db":{"dsn":"global","pool":5},"log":"info","feature":{"x":true}}`)
	a.must("PUT", "/v1/config/layer?realm=production", `{"db":{"dsn":"prod"},"log":"warn"}`)
	a.must("PUT", "/v1/config/layer?service=identity", `{"db":{"pool":10},"feature":null}`)
	a.must("PUT", "/v1/config/layer?service=identity&realm=production", `{"db":{"dsn":"prod-identity"}}`)
	var m sb.MergedConfig
	a.must("GET", "/v1/config?realm=production&service=identity", "").decode(t, &m)
	wantCfg := map[string]any{"db": map[string]any{"dsn": "prod-identity", "pool": json.Number("10")}, "log": "warn"}
	if diff := cmp.Diff(wantCfg, m.Config); diff != "" {
		t.Errorf("merged (-want +got):\n%s", diff)
	}
	wantSrc := map[string]string{"db.dsn": "service=identity,realm=production", "db.pool": "service=identity", "log": "realm=production"}
	if diff := cmp.Diff(wantSrc, m.Sources); diff != "" {
		t.Errorf("sources (-want +got):\n%s", diff)
	}
	var layer sb.ConfigLayer
	a.must("GET", "/v1/config/layer?realm=production", "").decode(t, &layer)
	if got := a.do("PUT", fmt.Sprintf("/v1/config/layer?realm=production&cas=%d", layer.Index+100), `{}`); got.status != 409 {
		t.Fatalf("stale cas = %d %s; want 409", got.status, got.body)
	}
	a.must("PUT", fmt.Sprintf("/v1/config/layer?realm=production&cas=%d", layer.Index), `{"log":"debug"}`)
	var layers sb.LayerList
	a.must("GET", "/v1/config/layers", "").decode(t, &layers)
	if len(layers.Layers) != 4 {
		t.Fatalf("layers = %+v", layers)
	}
	a.must("DELETE", "/v1/config/layer?service=identity", "")
	if got := a.do("GET", "/v1/config/layer?service=identity", ""); got.status != 404 {
		t.Fatalf("deleted layer = %d", got.status)
	}
}

func TestPortAllocationIsStable(t *testing.T) {
	a := start(t, true)
	var p1, p2, p3 sb.PortAssignment
	a.must("POST", "/v1/services/identity/port", "").decode(t, &p1)
	a.must("POST", "/v1/services/dashboard/port", "").decode(t, &p2)
	a.must("POST", "/v1/services/identity/port", "").decode(t, &p3)
	if p1.Port != 5000 || p2.Port != 5001 || p3.Port != p1.Port {
		t.Fatalf("ports = %d, %d, %d; want 5000, 5001, 5000", p1.Port, p2.Port, p3.Port)
	}
}

// A port an instance of another service is registered at (without asking
// Atlas for one) is not given: on one host the two would clash. The
// service's own instance's port may be.
func TestPortAllocationSkipsPortsInUse(t *testing.T) {
	a := start(t, true)
	a.must("PUT", "/v1/instances/identity-1", reg("identity", 5000, ""))
	a.must("PUT", "/v1/instances/files-1", reg("files", 5001, ""))
	var p1, p2 sb.PortAssignment
	a.must("POST", "/v1/services/hello/port", "").decode(t, &p1)
	a.must("POST", "/v1/services/files/port", "").decode(t, &p2)
	if p1.Port != 5002 || p2.Port != 5001 {
		t.Fatalf("ports = %d, %d; want hello 5002 (5000 and 5001 in use), files its own 5001", p1.Port, p2.Port)
	}
}

// Every write to an instance answers with the index to wait for, the
// deregistration included.
func TestInstanceWritesAnswerWithTheirIndex(t *testing.T) {
	a := start(t, true)
	i1 := a.must("PUT", "/v1/instances/a-1", reg("a", 5000, "")).index(t)
	i2 := a.must("PUT", "/v1/instances/a-1/status", `{"status":"critical"}`).index(t)
	i3 := a.must("PUT", "/v1/instances/a-1/enabled", `{"enabled":false,"reason":"x"}`).index(t)
	i4 := a.must("DELETE", "/v1/instances/a-1", "").index(t)
	if !(i1 < i2 && i2 < i3 && i3 < i4) {
		t.Fatalf("indexes of the writes %d, %d, %d, %d; want increasing", i1, i2, i3, i4)
	}
	if got := a.must("GET", "/v1/services/a", "").index(t); got != i4 {
		t.Fatalf("the service's index after the deregistration is %d; want %d", got, i4)
	}
}

// A range with every port taken is a conflict with what Atlas holds, not a
// passing unavailability: retrying does not help, widening --ports does.
func TestPortRangeExhausted(t *testing.T) {
	a := startIn(t, t.TempDir(), true, func(c *atlas.Config) { c.PortMin, c.PortMax = 6000, 6000 })
	a.must("POST", "/v1/services/identity/port", "")
	r := a.do("POST", "/v1/services/billing/port", "")
	if r.status != 409 || !strings.Contains(string(r.body), "port: every port in 6000-6000 is taken") {
		t.Fatalf("port from a full range = %d %s; want 409 naming the range", r.status, r.body)
	}
}

func TestWatchStream(t *testing.T) {
	a := start(t, true)
	a.must("PUT", "/v1/instances/a-1", reg("a", 5000, ""))
	req, _ := http.NewRequest("GET", a.http.URL+"/v1/watch?service=*", nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	res, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	events := readEvents(res.Body)
	ev := next(t, events)
	if ev.kind != "snapshot" || !strings.Contains(ev.data, `"service":"a"`) || ev.id == "" {
		t.Fatalf("first event = %+v", ev)
	}
	a.must("PUT", "/v1/instances/b-1", reg("b", 5001, ""))
	ev = next(t, events)
	if ev.kind != "update" || !strings.Contains(ev.data, `"service":"b"`) {
		t.Fatalf("update = %+v", ev)
	}
	// Resume from the snapshot's id: only what changed since, no snapshot.
	cancel()
	req, _ = http.NewRequest("GET", a.http.URL+"/v1/watch?service=*", nil)
	req.Header.Set("Last-Event-ID", ev.id)
	a.must("PUT", "/v1/instances/c-1", reg("c", 5002, ""))
	res2, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res2.Body.Close()
	ev = next(t, readEvents(res2.Body))
	if ev.kind != "update" || !strings.Contains(ev.data, `"service":"c"`) {
		t.Fatalf("resumed event = %+v", ev)
	}
}

// A stream of some services (a sidecar's upstreams) waits on those
// services alone, not on every change in the realm as one of every
// service does; it gets their updates, and ends when its client leaves.
func TestAStreamOfSomeServicesWaitsOnThemAlone(t *testing.T) {
	a := start(t, true)
	watched := []string{"a", "b", "c", "d"} // with keep-alive and ends, past a plain select
	for i, svc := range append(watched, "e") {
		a.must("PUT", fmt.Sprintf("/v1/instances/%s-1", svc), reg(svc, 5000+i, ""))
	}
	waitingOn := func(want ...string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !slices.Equal(a.srv.WaitingOn(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("Atlas waits on %q; want %q", a.srv.WaitingOn(), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	res, cancel := watch(t, a.http.URL+"/v1/watch?service=a&service=b&service=c&service=d")
	events := readEvents(res.Body)
	for range watched {
		if ev := next(t, events); ev.kind != "snapshot" {
			t.Fatalf("event = %+v; want the snapshots first", ev)
		}
	}
	waitingOn("s/dev/a", "s/dev/b", "s/dev/c", "s/dev/d")
	a.must("PUT", "/v1/instances/e-2", reg("e", 5010, ""))
	a.must("PUT", "/v1/instances/d-2", reg("d", 5011, ""))
	if ev := next(t, events); ev.kind != "update" || !strings.Contains(ev.data, `"id":"d-2"`) {
		t.Fatalf("event = %+v; want the update of d, and nothing of e", ev)
	}
	// A watched service that had no instance gets its first.
	fresh, cancelFresh := watch(t, a.http.URL+"/v1/watch?service=a&service=later")
	freshEvents := readEvents(fresh.Body)
	next(t, freshEvents)
	next(t, freshEvents)
	a.must("PUT", "/v1/instances/later-1", reg("later", 5012, ""))
	if ev := next(t, freshEvents); ev.kind != "update" || !strings.Contains(ev.data, `"id":"later-1"`) {
		t.Fatalf("event = %+v; want the first instance of later", ev)
	}
	cancelFresh()
	all, cancelAll := watch(t, a.http.URL+"/v1/watch?service=*")
	next(t, readEvents(all.Body))
	waitingOn("l/dev", "s/dev/a", "s/dev/b", "s/dev/c", "s/dev/d")
	cancelAll()
	cancel()
	waitingOn()
}

// An event larger than what a stream gathers before it writes goes out
// whole, after what the pass gathered before it.
func TestWatchEventLargerThanAChunk(t *testing.T) {
	a := start(t, true)
	const n = 300 // some 300 bytes each: an answer well over 64 KiB
	for i := range n {
		a.must("PUT", fmt.Sprintf("/v1/instances/big-%d", i), reg("big", 5000+i, ""))
	}
	a.must("PUT", "/v1/instances/small-1", reg("small", 6000, ""))
	res, _ := watch(t, a.http.URL+"/v1/watch?service=small&service=big")
	events := readEvents(res.Body)
	for _, want := range []struct {
		service string
		n       int
	}{{"small", 1}, {"big", n}} {
		ev := next(t, events)
		var si sb.ServiceInstances
		if err := json.Unmarshal([]byte(ev.data), &si); err != nil || si.Service != want.service || len(si.Instances) != want.n {
			t.Fatalf("snapshot event of %d bytes: %v, service %q with %d instances; want %s with %d", len(ev.data), err, si.Service, len(si.Instances), want.service, want.n)
		}
		if want.service == "big" && len(ev.data) < 64<<10 {
			t.Fatalf("big's answer is %d bytes; the test needs more than 64 KiB", len(ev.data))
		}
	}
	a.must("PUT", fmt.Sprintf("/v1/instances/big-%d", n), reg("big", 5000+n, ""))
	if ev := next(t, events); ev.kind != "update" || !strings.Contains(ev.data, fmt.Sprintf(`"id":"big-%d"`, n)) || !json.Valid([]byte(ev.data)) {
		t.Fatalf("update of %d bytes, kind %s", len(ev.data), ev.kind)
	}
}

// A client that sends anything after its request (it may not: the
// answer says Connection: close) has its stream ended.
func TestWatchEndsWhenTheClientSendsMore(t *testing.T) {
	a := start(t, true)
	c, err := net.Dial("tcp", strings.TrimPrefix(a.http.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /v1/watch?service=a HTTP/1.1\r\nHost: atlas\r\n\r\n")
	br := bufio.NewReader(c)
	if line, err := br.ReadString('\n'); err != nil || !strings.Contains(line, "200") {
		t.Fatalf("stream answer: %q %v", line, err)
	}
	if got := a.eventStreams(); got != "1" {
		t.Fatalf("event streams open: %s; want 1", got)
	}
	fmt.Fprintf(c, "GET /v1/health HTTP/1.1\r\nHost: atlas\r\n\r\n")
	deadline := time.Now().Add(10 * time.Second)
	for a.eventStreams() != "0" {
		if time.Now().After(deadline) {
			t.Fatal("the stream was still open 10s after its client sent more")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A stream resumed where its client left off, with nothing new since,
// answers at once: its client gives a stream 10 s to answer, and the next
// change or keep-alive can be much later. (It answered with neither: every
// sidecar whose Atlas restarted reconnected every 10 s until a change.)
func TestWatchResumedWithNothingNewAnswersAtOnce(t *testing.T) {
	defer func(d time.Duration) { atlas.KeepAliveInterval = d }(atlas.KeepAliveInterval)
	atlas.KeepAliveInterval = time.Hour
	a := start(t, true)
	r := a.must("PUT", "/v1/instances/a-1", reg("a", 5000, ""))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", a.http.URL+"/v1/watch?service=a", nil)
	req.Header.Set("Last-Event-ID", r.header.Get("Switchboard-Index"))
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("a stream resumed with nothing new did not answer within 10s: %v", err)
	}
	defer res.Body.Close()
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("resumed stream: %d %v", res.StatusCode, res.Header)
	}
	a.must("PUT", "/v1/instances/a-2", reg("a", 5001, ""))
	if ev := next(t, readEvents(res.Body)); ev.kind != "update" || !strings.Contains(ev.data, `"id":"a-2"`) {
		t.Fatalf("first event of the resumed stream = %+v; want the update", ev)
	}
}

// A snapshot of every service larger than what a stream gathers before it
// writes (streamChunk) goes out in pieces: every event arrives whole, in
// order, and only the last carries the id.
func TestWatchSnapshotLargerThanOneWrite(t *testing.T) {
	a := start(t, true)
	const services, each = 40, 15
	for i := range services * each {
		svc := fmt.Sprintf("s%02d", i%services)
		a.must("PUT", fmt.Sprintf("/v1/instances/%s-%d", svc, i), reg(svc, 5000+i, ""))
	}
	res, cancel := watch(t, a.http.URL+"/v1/watch?service=*")
	defer cancel()
	events := readEvents(res.Body)
	size := 0
	for i := range services {
		ev := next(t, events)
		var si sb.ServiceInstances
		if err := json.Unmarshal([]byte(ev.data), &si); err != nil || ev.kind != "snapshot" {
			t.Fatalf("event %d: %s, %v", i, ev.kind, err)
		}
		if want := fmt.Sprintf("s%02d", i); si.Service != want || len(si.Instances) != each {
			t.Fatalf("event %d: service %s with %d instances; want %s with %d", i, si.Service, len(si.Instances), want, each)
		}
		if (ev.id != "") != (i == services-1) {
			t.Fatalf("event %d has id %q; only the last of a snapshot carries one", i, ev.id)
		}
		size += len(ev.data)
	}
	if size < 2*64<<10 {
		t.Fatalf("the snapshot is %d bytes; the test needs more than two writes' worth", size)
	}
}

func TestWatchStreamLargeEventsAndHangUp(t *testing.T) {
	a := start(t, true)
	for i := range 60 { // an answer well over net/http's 4 KiB buffer
		a.must("PUT", fmt.Sprintf("/v1/instances/a-%d", i), reg("a", 5000+i, ""))
	}
	res, cancel := watch(t, a.http.URL+"/v1/watch?service=a")
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "text/event-stream" || len(res.TransferEncoding) != 0 || !res.Close {
		t.Fatalf("stream answer: %d, %v, transfer encoding %v, close %v", res.StatusCode, res.Header, res.TransferEncoding, res.Close)
	}
	events := readEvents(res.Body)
	ev := next(t, events)
	var svc sb.ServiceInstances
	if err := json.Unmarshal([]byte(ev.data), &svc); err != nil || len(svc.Instances) != 60 || len(ev.data) < 8<<10 {
		t.Fatalf("snapshot of %d bytes: %v, %d instances", len(ev.data), err, len(svc.Instances))
	}
	a.must("PUT", "/v1/instances/a-60", reg("a", 5060, ""))
	if ev = next(t, events); ev.kind != "update" || !strings.Contains(ev.data, `"id":"a-60"`) {
		t.Fatalf("update = %.200s", ev.data)
	}
	// The client hangs up: the stream ends on Atlas's side too.
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for a.eventStreams() != "0" {
		if time.Now().After(deadline) {
			t.Fatal("the stream was still open 5s after its client left")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// watch opens an event stream, closed at the end of the test or by cancel.
func watch(t *testing.T, url string) (*http.Response, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { res.Body.Close() })
	return res, cancel
}

type sse struct{ kind, id, data string }

func readEvents(r io.Reader) <-chan sse {
	ch := make(chan sse, 100)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<24)
		var ev sse
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.kind != "" {
					ch <- ev
				}
				ev = sse{}
			case strings.HasPrefix(line, "event: "):
				ev.kind = line[7:]
			case strings.HasPrefix(line, "id: "):
				ev.id = line[4:]
			case strings.HasPrefix(line, "data: "):
				ev.data = line[6:]
			}
		}
	}()
	return ch
}

func next(t *testing.T, ch <-chan sse) sse {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("stream ended")
		}
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no event")
	}
	return sse{}
}

func TestHTTPServerHasTimeouts(t *testing.T) {
	a := start(t, true)
	hs := a.srv.HTTPServer()
	if hs.ReadHeaderTimeout <= 0 || hs.ReadTimeout <= 0 || hs.IdleTimeout <= 0 || hs.MaxHeaderBytes <= 0 {
		t.Fatalf("server timeouts: header %v, read %v, idle %v, max header %d; want all set",
			hs.ReadHeaderTimeout, hs.ReadTimeout, hs.IdleTimeout, hs.MaxHeaderBytes)
	}
}

// TestSlowHeadersAreCut: a client that never finishes its headers is
// disconnected by the server's header timeout.
func TestSlowHeadersAreCut(t *testing.T) {
	a := start(t, true)
	hs := a.srv.HTTPServer()
	hs.ReadHeaderTimeout = 200 * time.Millisecond // the real one is 10s
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go hs.Serve(ln)
	defer hs.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /v1/services HTTP/1.1\r\nHost: x\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("connection was not closed by the server: %v", err)
	}
}

func TestPropagationConfirmsStreams(t *testing.T) {
	a := start(t, true)
	a.must("PUT", "/v1/instances/a-1", reg("a", 5000, ""))
	var p sb.Propagation
	a.must("GET", "/v1/services/a/propagation?index=1&wait=1s", "").decode(t, &p)
	if p.Watchers != 0 || p.Confirmed != 0 {
		t.Fatalf("no streams: %+v", p)
	}
	res, _ := watch(t, a.http.URL+"/v1/watch?service=a")
	events := readEvents(res.Body)
	next(t, events) // the snapshot
	r := a.must("PUT", "/v1/instances/a-1/enabled", `{"enabled":false,"reason":"drain"}`)
	idx := r.index(t)
	a.must("GET", fmt.Sprintf("/v1/services/a/propagation?index=%d&wait=10s", idx), "").decode(t, &p)
	if p.Watchers != 1 || p.Confirmed != 1 || p.Index != idx {
		t.Fatalf("after the stream got the change: %+v", p)
	}
	if ev := next(t, events); !strings.Contains(ev.data, `"enabled":false`) {
		t.Fatalf("the stream's update = %+v", ev)
	}
}

func TestBatchHeartbeats(t *testing.T) {
	a := start(t, true)
	a.must("PUT", "/v1/instances/a-1", reg("a", 5000, ""))
	a.must("PUT", "/v1/instances/a-2", reg("a", 5001, ""))
	before, _, _ := a.store.Snapshot(context.Background())
	var out struct{ Results []sb.BatchResult }
	a.must("PUT", "/v1/heartbeats", `{"heartbeats":[{"id":"a-1","status":"passing"},{"id":"a-2","status":"warning","output":"slow"},{"id":"gone","status":"passing"}]}`).decode(t, &out)
	if len(out.Results) != 3 || out.Results[0].Error != nil || out.Results[1].Error != nil ||
		out.Results[2].Error == nil || out.Results[2].Error.Code != sb.ENotFound {
		t.Fatalf("batch results = %+v", out.Results)
	}
	after, _, _ := a.store.Snapshot(context.Background())
	if after != before+1 {
		t.Fatalf("store index %d -> %d; want one write (a-2's status change), none for a-1", before, after)
	}
	var in sb.Instance
	a.must("GET", "/v1/instances/a-2", "").decode(t, &in)
	if in.Status != sb.Warning || in.Output != "slow" {
		t.Fatalf("a-2 after the batch = %s %q", in.Status, in.Output)
	}
	if r := a.do("PUT", "/v1/heartbeats", `{"heartbeats":[{"id":"a-1","status":"fine"}]}`); r.status != 400 || !strings.Contains(string(r.body), "heartbeats[0].status: must be passing") {
		t.Fatalf("bad batch = %d %s", r.status, r.body)
	}
}

// TestSameInstanceCoversEveryField: sameInstance must look at every field
// watchers see; a field added to Instance and forgotten there would make
// a change invisible to blocking queries.
func TestSameInstanceCoversEveryField(t *testing.T) {
	if n := reflect.TypeOf(sb.Instance{}).NumField(); n != 16 {
		t.Fatalf("Instance has %d fields; sameInstance (atlas/state.go) compares 14 of 16 (not the lease fields): update it, then this count", n)
	}
}

// TestEqualMetaIsSharedSafely: instances with equal meta share one map in
// Atlas's memory; changing one instance's meta leaves the others' alone.
func TestEqualMetaIsSharedSafely(t *testing.T) {
	a := start(t, true)
	for i := range 3 {
		a.must("PUT", fmt.Sprintf("/v1/instances/a-%d", i), reg("a", 5000+i, `,"meta":{"version":"1.0","zone":"x"}`))
	}
	a.must("PUT", "/v1/instances/a-1", reg("a", 5001, `,"meta":{"version":"2.0"}`))
	a.must("PUT", "/v1/instances/a-2", reg("a", 5002, `,"meta":{}`))
	var svc sb.ServiceInstances
	a.must("GET", "/v1/services/a", "").decode(t, &svc)
	got := map[string]map[string]string{}
	for _, in := range svc.Instances {
		got[in.ID] = in.Meta
	}
	want := map[string]map[string]string{
		"a-0": {"version": "1.0", "zone": "x"},
		"a-1": {"version": "2.0"},
		"a-2": {},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("meta (-want +got):\n%s", diff)
	}
}

// A blocking query on one instance answers 404 when the instance goes, and
// the instance's index goes on from there when it is registered again.
func TestBlockingQueryOnADeletedInstance(t *testing.T) {
	a := start(t, true)
	first := a.must("PUT", "/v1/instances/a-1", reg("a", 5000, ""))
	idx := a.must("GET", "/v1/instances/a-1", "").index(t)
	done := make(chan resp, 1)
	go func() {
		done <- a.do("GET", fmt.Sprintf("/v1/instances/a-1?index=%d&wait=20s", idx), "")
	}()
	time.Sleep(100 * time.Millisecond) // the query waits
	a.must("DELETE", "/v1/instances/a-1", "")
	select {
	case r := <-done:
		if r.status != http.StatusNotFound {
			t.Fatalf("blocking query on a deleted instance = %d %s, want 404", r.status, r.body)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("blocking query did not return when its instance was deleted")
	}
	again := a.must("PUT", "/v1/instances/a-1", reg("a", 5000, ""))
	if got := a.must("GET", "/v1/instances/a-1", "").index(t); got <= idx || again.index(t) <= first.index(t) {
		t.Fatalf("index after re-registering = %d, want above %d", got, idx)
	}
}

// TestEventFraming: an event is exactly "event: KIND\nid: N\ndata: JSON\n\n",
// its JSON the service's answer (one line), and an update without an id
// has no id line.
func TestEventFraming(t *testing.T) {
	a := start(t, true)
	a.must("PUT", "/v1/instances/a-1", reg("a", 5000, ""))
	answer := a.must("GET", "/v1/services/a", "")
	res, _ := watch(t, a.http.URL+"/v1/watch?service=a")
	br := bufio.NewReader(res.Body)
	want := "event: snapshot\nid: " + answer.header.Get(atlas.IndexHeader) + "\ndata: " + string(answer.body) + "\n"
	got := make([]byte, len(want))
	if _, err := io.ReadFull(br, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("first event:\n%q\nwant\n%q", got, want)
	}
	if !bytes.HasSuffix(answer.body, []byte("}\n")) || bytes.Count(answer.body, []byte("\n")) != 1 {
		t.Fatalf("answer %q: want one line of JSON", answer.body)
	}
}

// leasesDown is a store whose lease renewals fail as an etcd without
// quorum's do.
type leasesDown struct{ atlas.Store }

func (leasesDown) KeepAlive(context.Context, string) (time.Time, error) {
	return time.Time{}, fmt.Errorf("%w: etcd: renew a lease: no leader", atlas.ErrUnavailable)
}

// A heartbeat the store cannot renew is answered 503, for an instance
// this replica knows and for one it does not (yet): not 404, which tells
// the sidecar to register again.
func TestHeartbeatWhenLeasesCannotBeRenewed(t *testing.T) {
	a := startIn(t, t.TempDir(), true, func(c *atlas.Config) { c.Store = leasesDown{c.Store} })
	a.must("PUT", "/v1/instances/a-1", reg("a", 5000, ""))
	for _, id := range []string{"a-1", "unknown-1"} {
		r := a.do("PUT", "/v1/instances/"+id+"/status", `{"status":"passing"}`)
		if r.status != 503 || !strings.Contains(string(r.body), `"unavailable"`) {
			t.Errorf("heartbeat of %s with leases down = %d %s; want 503 unavailable", id, r.status, r.body)
		}
	}
}

// Blocking queries and event streams leave nothing behind when they end:
// a reader that asks about made-up services, which never change, must not
// grow Atlas's memory for good.
func TestWaitsEndWithTheirQueries(t *testing.T) {
	a := start(t, true)
	idx := a.must("GET", "/v1/services/none", "").index(t)
	for i := range 20 {
		a.must("GET", fmt.Sprintf("/v1/services/made-up-%d?index=%d&wait=10ms", i, idx), "")
		a.must("GET", fmt.Sprintf("/v1/config?service=made-up-%d&index=%d&wait=10ms", i, idx), "")
	}
	// A client that leaves while its query waits.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("%s/v1/services/left?index=%d&wait=1m", a.http.URL, idx), nil)
	if res, err := http.DefaultClient.Do(req); err == nil {
		res.Body.Close()
		t.Fatalf("blocking query answered %d before its client left", res.StatusCode)
	}
	for i := range 5 {
		res, cancel := watch(t, fmt.Sprintf("%s/v1/watch?service=stream-%d", a.http.URL, i))
		next(t, readEvents(res.Body))
		cancel()
	}
	deadline := time.Now().Add(5 * time.Second)
	for a.srv.WaitKeys() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d watch keys still have a wait channel 5s after every query and stream ended; want 0", a.srv.WaitKeys())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// An instance that is gone leaves nothing behind in Atlas's memory:
// instances registered under ever new ids (a host name per deploy) and
// deregistered or expired must not grow it for good.
func TestGoneInstancesLeaveNothingBehind(t *testing.T) {
	a := start(t, true)
	a.must("PUT", "/v1/instances/a-0", reg("a", 5000, ""))
	before := a.srv.ResKeys()
	for i := range 50 {
		id := fmt.Sprintf("a-host%d-5000", i)
		a.must("PUT", "/v1/instances/"+id, reg("a", 5000, ""))
		a.must("DELETE", "/v1/instances/"+id, "")
	}
	if after := a.srv.ResKeys(); after > before {
		t.Fatalf("after 50 instances came and went, Atlas keeps %d indexes, %d before; want no more", after, before)
	}
}

// Queries that differ only in how their tags split answer differently:
// the answers Atlas keeps rendered are told apart by every tag whole.
func TestTagQueriesDoNotShareAnswers(t *testing.T) {
	a := start(t, true)
	a.must("PUT", "/v1/instances/x", reg("a", 5000, `,"tags":["a","b"]`))
	a.must("PUT", "/v1/instances/y", reg("a", 5001, `,"tags":["a\u0000t=b"]`))
	for _, tc := range []struct{ query, want string }{
		{"tag=a&tag=b", "x"},
		{"tag=a%00t%3Db", "y"},
	} {
		var si sb.ServiceInstances
		r := a.must("GET", "/v1/services/a?"+tc.query, "")
		r.decode(t, &si)
		if len(si.Instances) != 1 || si.Instances[0].ID != tc.want {
			t.Errorf("GET /v1/services/a?%s = %s; want %s only", tc.query, r.body, tc.want)
		}
	}
}

// slowWatch is a store whose changes reach Atlas late, as another
// replica's writes reach one over etcd.
type slowWatch struct{ atlas.Store }

func (s slowWatch) Watch(ctx context.Context, after uint64) (<-chan atlas.Change, error) {
	in, err := s.Store.Watch(ctx, after)
	if err != nil {
		return nil, err
	}
	out := make(chan atlas.Change)
	go func() {
		defer close(out)
		for c := range in {
			select {
			case <-time.After(200 * time.Millisecond):
			case <-ctx.Done():
				return
			}
			select {
			case out <- c:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

// A heartbeat that changes the status of an instance another replica has
// just written waits for that write to arrive rather than fail: the
// instance is registered, so the sidecar must not be told to register it
// again.
func TestHeartbeatDuringAnotherReplicasWrite(t *testing.T) {
	a := startIn(t, t.TempDir(), true, func(c *atlas.Config) { c.Store = slowWatch{c.Store} })
	other, err := atlas.New(atlas.Config{Store: a.store, Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(other.Handler())
	t.Cleanup(func() { hs.Close(); other.Close() })
	b := &testAtlas{t: t, srv: other, http: hs}

	a.must("PUT", "/v1/instances/x", reg("a", 5000, ""))
	b.must("PUT", "/v1/instances/x", reg("a", 5000, `,"tags":["v2"]`))
	if r := a.do("PUT", "/v1/instances/x/status", `{"status":"warning"}`); r.status != 200 {
		t.Fatalf("heartbeat while another replica's write is on its way = %d %s; want 200", r.status, r.body)
	}
	var in sb.Instance
	a.must("GET", "/v1/instances/x", "").decode(t, &in)
	if in.Status != sb.Warning || !slices.Equal(in.Tags, []string{"v2"}) {
		t.Fatalf("instance = status %s, tags %v; want warning and the other replica's tags [v2]", in.Status, in.Tags)
	}
	// So does a registration.
	b.must("PUT", "/v1/instances/x", reg("a", 5000, `,"tags":["v3"]`))
	if r := a.do("PUT", "/v1/instances/x", reg("a", 5000, `,"tags":["v4"]`)); r.status != 200 {
		t.Fatalf("registration while another replica's write is on its way = %d %s; want 200", r.status, r.body)
	}
}

// A stream of every service that snapshots again (a gap in the history: a
// store's compaction, a replica cut off for a while) sends, empty, the
// services it showed that have no instance left; it sent only those with
// instances, and the dashboard kept a deleted service for good.
func TestASnapshotAgainSaysWhichServicesAreGone(t *testing.T) {
	a := atlastest.Start(t, true)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := a.Client()
	for _, r := range []struct{ id, service string }{{"cart-1", "cart"}, {"gone-1", "gone"}} {
		if _, err := c.Register(ctx, r.id, sb.Registration{Service: r.service, Address: "10.0.0.1", Port: 5000}); err != nil {
			t.Fatal(err)
		}
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", a.URL+"/v1/watch?service=*", nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	events := make(chan client.Event, 16)
	go client.ReadEvents(res.Body, func(ev client.Event) error { events <- ev; return nil })
	next := func() client.Event {
		t.Helper()
		select {
		case ev := <-events:
			return ev
		case <-time.After(30 * time.Second):
			t.Fatal("no event")
		}
		return client.Event{}
	}
	for range 2 { // the snapshot: cart, gone
		next()
	}
	if err := a.Server.ReloadWithout(ctx, "i/gone-1"); err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for range 2 {
		ev := next()
		if ev.Kind != "snapshot" {
			t.Fatalf("after the reload: %s event; want a snapshot", ev.Kind)
		}
		got[ev.Service.Service] = len(ev.Service.Instances)
	}
	if !reflect.DeepEqual(got, map[string]int{"cart": 1, "gone": 0}) {
		t.Fatalf("the snapshot after the reload had %v; want cart with its instance and gone empty", got)
	}
	// Once sent empty, gone is forgotten: a stream over services that
	// come and go keeps only those there are, and says each went once.
	// (A write first moves the store's index past the stream's.)
	if _, err := c.PutLayer(ctx, sb.LayerKey{Realm: "dev"}, json.RawMessage(`{}`), nil); err != nil {
		t.Fatal(err)
	}
	if err := a.Server.ReloadWithout(ctx, "i/gone-1"); err != nil {
		t.Fatal(err)
	}
	var sent []string
	for ev := (client.Event{}); ev.ID == ""; { // to the snapshot's last event
		ev = next()
		sent = append(sent, ev.Service.Service)
	}
	if !slices.Equal(sent, []string{"cart"}) {
		t.Fatalf("the snapshot after a second reload had %v; want cart alone", sent)
	}
}

// A check output held back by the once-per-interval rule was written by
// Atlas itself when the interval was up, and that write renewed the lease:
// an instance that had stopped heartbeating (crashed) stayed listed for up
// to one more TTL, as Eureka's do. Only a heartbeat renews a lease now,
// and the held-back output waits for one.
func TestAHeldBackOutputRenewsNoLease(t *testing.T) {
	a := startIn(t, t.TempDir(), true, func(c *atlas.Config) { c.OutputInterval = 100 * time.Millisecond })
	a.must("PUT", "/v1/instances/a-1", `{"service":"a","address":"127.0.0.1","port":5000,"ttl":"2s","output":"v1"}`)
	var in sb.Instance
	a.must("PUT", "/v1/instances/a-1/status", `{"status":"passing","output":"v2"}`).decode(t, &in)
	if in.ExpiresAt == nil {
		t.Fatalf("the heartbeat's answer has no expires_at: %+v", in)
	}
	end := *in.ExpiresAt
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		r := a.do("GET", "/v1/instances/a-1", "")
		if r.status == 404 {
			return // expired
		}
		var now sb.Instance
		r.decode(t, &now)
		if now.ExpiresAt != nil && now.ExpiresAt.After(end) {
			t.Fatalf("the lease moved from %s to %s with no heartbeat (last heartbeat %v, output %q)", end, now.ExpiresAt, now.LastHeartbeat, now.Output)
		}
		if time.Now().After(deadline) {
			t.Fatal("after a minute, the instance is still there")
		}
	}
}

// Every GET answer carries Switchboard-Index (the SPEC), a 404 of an
// instance or a config layer too; it had none.
func TestNotFoundCarriesTheIndex(t *testing.T) {
	a := start(t, true)
	a.must("PUT", "/v1/instances/a-1", `{"service":"a","address":"127.0.0.1","port":5000}`)
	for _, path := range []string{"/v1/instances/nosuch", "/v1/config/layer?realm=production"} {
		r := a.do("GET", path, "")
		if r.status != 404 {
			t.Fatalf("GET %s = %d; want 404", path, r.status)
		}
		if n, err := strconv.ParseUint(r.header.Get(atlas.IndexHeader), 10, 64); err != nil || n == 0 {
			t.Errorf("GET %s: Switchboard-Index %q; want the store's index", path, r.header.Get(atlas.IndexHeader))
		}
	}
}

package sidecar

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/atlas"
	"github.com/switchboard-go/switchboard/atlas/atlastest"
	"github.com/switchboard-go/switchboard/atlas/boltstore"
	"github.com/switchboard-go/switchboard/client"
	"github.com/switchboard-go/switchboard/internal/syncbuf"
	"github.com/switchboard-go/switchboard/internal/testnet"
	"github.com/switchboard-go/switchboard/sidecar/proxy"
)

// eventually polls cond every 20 ms until it holds, failing the test with
// what after a generous deadline (the machine is shared and noisy).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after 30s: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Of two Atlas replicas, the first is behind a gateway whose Atlas is
// down: it answers 502 to everything. A sidecar that only routes (nothing
// of its own to announce, so no other call moves it on) must follow its
// services on the second replica, as every other call does.
func TestWatchFailsOverFromAReplicaAnswering502(t *testing.T) {
	a := atlastest.Start(t, true)
	gateway := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "<html>502 Bad Gateway</html>", http.StatusBadGateway)
	}))
	defer gateway.Close()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer backend.Close()
	if _, err := a.Client().Register(context.Background(), "ping-1", sb.Registration{Service: "ping", Address: "127.0.0.1", Port: portOf(backend.Listener.Addr().String())}); err != nil {
		t.Fatal(err)
	}
	s := startSweepingEvery(t, Config{Atlas: StringList{gateway.URL, a.URL}}, time.Hour)
	code := 0
	eventually(t, "calls to ping still fail; want 200 through the second replica", func() bool {
		code = callHost(t, s, "ping.localhost")
		return code == 200
	})
}

// restartableAtlas is a real Atlas (embedded store in dir) on a fixed
// loopback address, that a test stops and starts again: Atlas down for a
// while, or restarted, with its data.
type restartableAtlas struct {
	t    *testing.T
	dir  string
	addr string
	stop func()
}

func newRestartableAtlas(t *testing.T) *restartableAtlas {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	r := &restartableAtlas{t: t, dir: t.TempDir(), addr: addr}
	t.Cleanup(r.down)
	return r
}

func (r *restartableAtlas) URL() string { return "http://" + r.addr }

// up starts Atlas (again) on its address.
func (r *restartableAtlas) up() {
	r.t.Helper()
	if r.stop != nil {
		return
	}
	st, err := boltstore.Open(boltstore.Config{Path: filepath.Join(r.dir, "atlas.db")})
	if err != nil {
		r.t.Fatal(err)
	}
	srv, err := atlas.New(atlas.Config{Store: st, DataDir: r.dir, Insecure: true})
	if err != nil {
		st.Close()
		r.t.Fatal(err)
	}
	var ln net.Listener
	eventually(r.t, "Atlas could not listen on its address again", func() bool {
		ln, err = net.Listen("tcp", r.addr)
		return err == nil
	})
	hs := srv.HTTPServer()
	done := make(chan struct{})
	go func() {
		defer close(done)
		hs.Serve(atlas.Listener(ln))
	}()
	r.stop = func() {
		srv.StopWaiting()
		hs.Close()
		<-done
		srv.Close()
		st.Close()
	}
}

// down stops Atlas: nothing listens on its address.
func (r *restartableAtlas) down() {
	if r.stop != nil {
		r.stop()
		r.stop = nil
	}
}

func (r *restartableAtlas) client() *client.Atlas {
	return &client.Atlas{URLs: []string{r.URL()}}
}

// countingBackend is a local service that answers every request 200 and
// counts them: its checks, here.
func countingBackend(t *testing.T) (port int, checks *atomic.Int64) {
	t.Helper()
	checks = new(atomic.Int64)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { checks.Add(1) }))
	t.Cleanup(srv.Close)
	return portOf(srv.Listener.Addr().String()), checks
}

// While Atlas cannot be reached, registering and heartbeating fail every
// interval: each failure that repeats the last is not logged again (the
// watch's rule), or an outage of an hour writes thousands of lines. That
// Atlas is reached again is said once.
func TestAnnouncingThroughAnAtlasOutageLogsEachFailureOnce(t *testing.T) {
	var out syncbuf.Buffer
	log := slog.New(slog.NewTextHandler(&out, nil))
	at := newRestartableAtlas(t)
	port, checks := countingBackend(t)
	cfg := Config{Atlas: StringList{at.URL()}, Host: "h1", Advertise: "127.0.0.1", Listen: "127.0.0.1:0", Admin: "127.0.0.1:0",
		Services: []ServiceConfig{{Name: "web", Port: port, Check: CheckConfig{Interval: Duration(100 * time.Millisecond), Rise: 1}}}}
	s, err := New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown() })
	count := func(msg string) int { return strings.Count(out.String(), msg) }

	// Down from the start: twenty intervals of failed registrations.
	eventually(t, "the service was not checked 20 times", func() bool { return checks.Load() >= 20 })
	if n := count("register failed"); n != 1 {
		t.Fatalf("after 20 intervals with Atlas down, %d lines say the registration failed; want 1:\n%s", n, out.String())
	}
	// Atlas comes up: the instance registers, and that is said.
	at.up()
	eventually(t, "the instance never registered", func() bool {
		in, err := at.client().Instance(context.Background(), "web-h1-"+strconv.Itoa(port))
		return err == nil && in.Status == sb.Passing
	})
	eventually(t, "no line says Atlas is reached again", func() bool { return count("reached again") == 1 })
	// Atlas goes down again: heartbeats fail, once said.
	at.down()
	from := checks.Load()
	eventually(t, "the service was not checked 20 more times", func() bool { return checks.Load() >= from+20 })
	if n := count("heartbeats failed"); n != 1 {
		t.Fatalf("after 20 intervals with Atlas down again, %d lines say the heartbeats failed; want 1:\n%s", n, out.String())
	}
}

// A state_dir the sidecar cannot write (a disk full, a file system
// remounted read-only) fails every save, once a second while routes
// change: the failure is logged once, not once a second for as long as
// it lasts, and that saving works again is said once.
func TestAStateDirThatCannotBeWrittenIsLoggedOnce(t *testing.T) {
	var out syncbuf.Buffer
	log := slog.New(slog.NewTextHandler(&out, nil))
	blocker := filepath.Join(t.TempDir(), "state")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil { // a file where the directory should be
		t.Fatal(err)
	}
	table := &proxy.Table{Realm: "dev"}
	table.Get("ping").Update([]*sb.Instance{{ID: "ping-1", Address: "127.0.0.1", Port: 5000, Status: sb.Passing, Enabled: true}}, 7)
	f := &stateFile{path: stateFilePath(blocker), log: log}
	for range 5 { // five seconds of changing routes
		f.save(table)
	}
	if n := strings.Count(out.String(), "could not save the last known routes"); n != 1 {
		t.Fatalf("after 5 failed saves, %d lines say the routes could not be saved; want 1:\n%s", n, out.String())
	}
	if err := os.Remove(blocker); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		f.save(table)
	}
	if n := strings.Count(out.String(), "saved again"); n != 1 {
		t.Fatalf("after the state_dir could be written again, %d lines say so; want 1:\n%s", n, out.String())
	}
	restored := &proxy.Table{Realm: "dev"}
	if err := (&stateFile{path: f.path, log: log}).restore(restored); err != nil || restored.Lookup("ping") == nil {
		t.Fatalf("restore after the routes were saved again: %v, ping restored %v", err, restored.Lookup("ping") != nil)
	}
}

// Atlas hung (its host gone, its process stuck: connections taken or
// left unanswered) is Atlas unreachable, not the sidecar failing: the
// sidecar's /healthcheck passes and says so, as it does when Atlas
// refuses connections. Failing it would have every host's probes (a
// liveness check, a load balancer) take out or restart every sidecar at
// once, while they route on the last known instances.
func TestHealthcheckPassesWhileAtlasHangs(t *testing.T) {
	s := startSweepingEvery(t, Config{Atlas: StringList{"http://" + testnet.Hung(t)}}, time.Hour)
	res, err := http.Get("http://" + s.AdminAddr + "/healthcheck")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || !strings.Contains(string(body), "atlas unreachable") {
		t.Fatalf("/healthcheck with Atlas hung = %d %s; want 200 saying Atlas is unreachable", res.StatusCode, body)
	}
	// The same checks in Kubernetes' forms.
	for path, want := range map[string]string{"/livez?verbose": "[+]frontend ok", "/readyz?verbose": "[+]atlas ok"} {
		res, err := http.Get("http://" + s.AdminAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || !strings.Contains(string(body), want) {
			t.Fatalf("%s with Atlas hung = %d %s; want 200 with %q", path, res.StatusCode, body, want)
		}
	}
}

// A sidecar that drains still answered 200 on /readyz and /healthcheck
// until its admin port closed: whatever watched it learnt it was going
// only when its frontend refused connections. They fail from the start
// of the drain (/livez does not: the process is fine).
func TestReadinessFailsWhileTheSidecarDrains(t *testing.T) {
	s := startSweepingEvery(t, Config{Atlas: StringList{"http://" + testnet.Hung(t)}, Host: "h1", Advertise: "127.0.0.1",
		DrainTimeout: Duration(time.Second),
		Services:     []ServiceConfig{{Name: "web", Port: 5001, Check: CheckConfig{None: true}}}}, time.Hour)
	get := func(path string) int {
		res, err := http.Get("http://" + s.AdminAddr + path)
		if err != nil {
			return 0
		}
		res.Body.Close()
		return res.StatusCode
	}
	if st := get("/readyz"); st != 200 {
		t.Fatalf("/readyz before the drain = %d", st)
	}
	done := make(chan error, 1)
	go func() { done <- s.Shutdown() }() // the drain waits for the hung Atlas
	for deadline := time.Now().Add(20 * time.Second); get("/readyz") != 500; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("/readyz did not fail while the sidecar drained")
		}
	}
	if st, lz := get("/healthcheck"), get("/livez"); st != 503 || lz != 200 {
		t.Fatalf("while draining: /healthcheck %d, /livez %d; want 503 and 200", st, lz)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A call in flight when the sidecar stops held its exit for as long as the
// call's own timeout (an hour at most). It now gets drain_timeout, as the
// kit's requests do; then its connection is closed and the sidecar exits.
func TestShutdownCutsOffCallsAfterTheDrainTimeout(t *testing.T) {
	slow, arrived := testnet.HeldHTTP(t)
	dir := t.TempDir()
	routes := `{"realm":"dev","services":[{"service":"slow","realm":"dev","index":7,"instances":[` +
		`{"id":"slow-1","service":"slow","realm":"dev","address":"127.0.0.1","port":` + strconv.Itoa(portOf(strings.TrimPrefix(slow, "http://"))) + `,"status":"passing","enabled":true}]}]}`
	if err := os.WriteFile(filepath.Join(dir, "routes.json"), []byte(routes), 0o600); err != nil {
		t.Fatal(err)
	}
	down := httptest.NewServer(http.NotFoundHandler())
	down.Close() // an address where nothing answers
	s := startSweeping(t, Config{Atlas: StringList{down.URL}, StateDir: dir, DrainTimeout: Duration(100 * time.Millisecond)})
	c, err := net.Dial("tcp", s.ListenAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: slow.localhost\r\nSwitchboard-Timeout: 1h\r\n\r\n")
	select {
	case <-arrived:
	case <-time.After(20 * time.Second):
		t.Fatal("the call never reached the instance")
	}
	done := make(chan error, 1)
	go func() { done <- s.Shutdown() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Shutdown still waiting for a call to an instance that takes an hour, with a drain_timeout of 100ms")
	}
}

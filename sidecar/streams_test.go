package sidecar

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/atlas/atlastest"
	"github.com/switchboard-go/switchboard/internal/syncbuf"
)

// startRegrouping starts a sidecar of cfg that regroups its streams and
// sweeps its table at the intervals given, and stops it when the test
// ends. It logs to log, when one is given.
func startRegrouping(t *testing.T, cfg Config, token string, regroup, sweep time.Duration, log ...*slog.Logger) *Sidecar {
	t.Helper()
	cfg.Listen, cfg.Admin = "127.0.0.1:0", "127.0.0.1:0"
	var logger *slog.Logger
	if len(log) > 0 {
		logger = log[0]
	}
	s, err := New(cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		s.SetToken(token)
	}
	s.regroupEvery, s.sweepEvery = regroup, sweep
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown() })
	return s
}

// streamsAre reports whether s follows its services on shared streams
// and streams of their own as many as given.
func streamsAre(s *Sidecar, shared, own int) bool {
	sh, ow := s.streams.count()
	return sh == shared && ow == own
}

// backendFor starts an HTTP server that answers 200 and returns a function
// that registers an instance of a service on it.
func backendFor(t *testing.T, a *atlastest.Atlas) (register func(id, service string)) {
	t.Helper()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(backend.Close)
	port := portOf(backend.Listener.Addr().String())
	return func(id, service string) {
		t.Helper()
		if _, err := a.Client().Register(context.Background(), id, sb.Registration{Service: service, Address: "127.0.0.1", Port: port}); err != nil {
			t.Fatal(err)
		}
	}
}

// Services that calls ask for start on streams of their own (their first
// answer comes at once), then share one: Atlas holds one stream for the
// sidecar however many services it calls. One called later joins it, and
// changes reach every service on it.
func TestCalledServicesShareOneStream(t *testing.T) {
	a := atlastest.Start(t, true)
	register := backendFor(t, a)
	for _, svc := range []string{"billing", "identity", "search"} {
		register(svc+"-1", svc)
	}
	s := startRegrouping(t, Config{Atlas: StringList{a.URL}}, "", 100*time.Millisecond, time.Hour)
	for _, svc := range []string{"billing", "identity"} {
		if code := callHost(t, s, svc+".localhost"); code != 200 {
			t.Fatalf("a call to %s = %d; want 200", svc, code)
		}
	}
	eventually(t, "billing and identity share one stream", func() bool { return streamsAre(s, 1, 0) && eventStreams(t, a) == 1 })
	if code := callHost(t, s, "search.localhost"); code != 200 {
		t.Fatalf("a call to search = %d; want 200", code)
	}
	eventually(t, "search joins the shared stream", func() bool { return streamsAre(s, 1, 0) && eventStreams(t, a) == 1 })
	for _, want := range []string{`switchboard_sidecar_event_streams{kind="shared"} 1`, `switchboard_sidecar_event_streams{kind="own"} 0`} {
		if !strings.Contains(adminMetrics(t, s), want) {
			t.Errorf("/metrics has no %s", want)
		}
	}
	for _, svc := range []string{"billing", "identity", "search"} {
		register(svc+"-2", svc)
	}
	eventually(t, "the second instance of each reaches the sidecar", func() bool {
		for _, svc := range []string{"billing", "identity", "search"} {
			if len(s.table.Lookup(svc).Endpoints()) != 2 {
				return false
			}
		}
		return true
	})
	for _, svc := range []string{"billing", "identity", "search"} {
		if code := callHost(t, s, svc+".localhost"); code != 200 {
			t.Fatalf("a call to %s = %d; want 200", svc, code)
		}
	}
}

// A service that no call asks for any more leaves the shared stream's
// service with the rest: its pool and its series go, and a change to it
// reaches nothing. Called again, it is followed anew and rejoins the
// shared stream.
func TestASweptServiceLeavesTheSharedStream(t *testing.T) {
	a := atlastest.Start(t, true)
	register := backendFor(t, a)
	register("ping-1", "ping")
	register("pong-1", "pong")
	s := startRegrouping(t, Config{Atlas: StringList{a.URL}}, "", 50*time.Millisecond, 200*time.Millisecond)
	callPing := func() {
		t.Helper()
		if code := callHost(t, s, "ping.localhost"); code != 200 {
			t.Fatalf("a call to ping = %d; want 200", code)
		}
	}
	if code := callHost(t, s, "pong.localhost"); code != 200 {
		t.Fatalf("a call to pong = %d; want 200", code)
	}
	callPing()
	eventually(t, "ping and pong share one stream", func() bool { callPing(); return streamsAre(s, 1, 0) })
	old := s.table.Lookup("pong")
	eventually(t, "pong, not called, is dropped", func() bool { callPing(); return s.table.Lookup("pong") == nil })
	// Its series go once its stream has stopped, just after.
	eventually(t, "/metrics has no series of the dropped service", func() bool {
		return !strings.Contains(adminMetrics(t, s), `service="pong"`)
	})
	register("pong-2", "pong")
	register("ping-2", "ping")
	eventually(t, "the change to ping reaches the sidecar", func() bool {
		callPing()
		return len(s.table.Lookup("ping").Endpoints()) == 2
	})
	if n := len(old.Endpoints()); n != 1 {
		t.Fatalf("the dropped pool of pong has %d endpoints; want the 1 it had", n)
	}
	if code := callHost(t, s, "pong.localhost"); code != 200 {
		t.Fatalf("a call to pong again = %d; want 200", code)
	}
	if n := len(s.table.Lookup("pong").Endpoints()); n != 2 {
		t.Fatalf("pong followed anew has %d endpoints; want 2", n)
	}
	eventually(t, "pong rejoins the shared stream", func() bool {
		callPing()
		callHost(t, s, "pong.localhost")
		return streamsAre(s, 1, 0) && eventStreams(t, a) == 1
	})
}

// The services of the last known routes (state_dir) share one stream
// from the start, as the upstreams do.
func TestRestoredServicesShareOneStreamFromTheStart(t *testing.T) {
	a := atlastest.Start(t, true)
	register := backendFor(t, a)
	dir := t.TempDir()
	var saved []string
	for _, svc := range []string{"billing", "identity", "search"} {
		register(svc+"-1", svc)
		saved = append(saved, fmt.Sprintf(`{"service":%q,"index":1,"instances":[]}`, svc))
	}
	if err := os.WriteFile(stateFilePath(dir), []byte(`{"realm":"dev","services":[`+strings.Join(saved, ",")+`]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startRegrouping(t, Config{Atlas: StringList{a.URL}, StateDir: dir}, "", time.Hour, time.Hour)
	if !streamsAre(s, 1, 0) {
		sh, own := s.streams.count()
		t.Fatalf("the restored services are on %d shared streams and %d of their own; want 1 and 0", sh, own)
	}
	for _, svc := range []string{"billing", "identity", "search"} {
		eventually(t, svc+" routes", func() bool { return callHost(t, s, svc+".localhost") == 200 })
	}
	if n := eventStreams(t, a); n != 1 {
		t.Fatalf("Atlas has %d event streams open for the sidecar; want 1", n)
	}
}

// A service the policy refuses to this host keeps a stream of its own
// while the others share one; once a policy allows it, it joins them.
func TestARefusedServiceJoinsOnceAllowed(t *testing.T) {
	a := atlastest.Start(t, false)
	ctx := context.Background()
	register := backendFor(t, a)
	for _, svc := range []string{"billing", "identity", "secrets"} {
		register(svc+"-1", svc)
	}
	if _, err := a.Client().PutPolicy(ctx, "dev", "web", []string{"billing", "identity"}); err != nil {
		t.Fatal(err)
	}
	tok, err := a.Client().CreateToken(ctx, sb.TokenRequest{Name: "host001", Role: "service", Services: []string{"web"}, Realms: []string{"dev"}})
	if err != nil {
		t.Fatal(err)
	}
	s := startRegrouping(t, Config{Atlas: StringList{a.URL}, Realm: "dev"}, tok.Secret, 100*time.Millisecond, time.Hour)
	if code := callHost(t, s, "secrets.localhost"); code != 403 {
		t.Fatalf("a call to secrets = %d; want 403", code)
	}
	for _, svc := range []string{"billing", "identity"} {
		if code := callHost(t, s, svc+".localhost"); code != 200 {
			t.Fatalf("a call to %s = %d; want 200", svc, code)
		}
	}
	eventually(t, "billing and identity share a stream, secrets is on its own", func() bool { return streamsAre(s, 1, 1) })
	time.Sleep(300 * time.Millisecond) // regroups: secrets stays out
	if !streamsAre(s, 1, 1) || callHost(t, s, "secrets.localhost") != 403 {
		sh, own := s.streams.count()
		t.Fatalf("after some regroups: %d shared streams, %d of their own, secrets = %d; want 1, 1 and 403", sh, own, callHost(t, s, "secrets.localhost"))
	}
	if _, err := a.Client().PutPolicy(ctx, "dev", "web", []string{"billing", "identity", "secrets"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "secrets routes once a policy allows it", func() bool { return callHost(t, s, "secrets.localhost") == 200 })
	eventually(t, "secrets joins the shared stream", func() bool { return streamsAre(s, 1, 0) })
	register("secrets-2", "secrets")
	eventually(t, "a change to secrets reaches the sidecar", func() bool { return len(s.table.Lookup("secrets").Endpoints()) == 2 })
}

// One service more than a stream takes makes two streams of near-equal
// size, not one of 64 and one of one: a stream of one would count as a
// service to regroup, and every regroup would restart every stream.
func TestSixtyFiveServicesAreNotRegroupedForNothing(t *testing.T) {
	a := atlastest.Start(t, true)
	var cfg []UpstreamConfig
	for i := range maxSharedStream + 1 {
		cfg = append(cfg, UpstreamConfig{Name: fmt.Sprintf("u%02d", i)})
	}
	var logs syncbuf.Buffer
	s := startRegrouping(t, Config{Atlas: StringList{a.URL}, Upstreams: cfg}, "", 50*time.Millisecond, time.Hour, slog.New(slog.NewTextHandler(&logs, nil)))
	if !streamsAre(s, 2, 0) {
		sh, own := s.streams.count()
		t.Fatalf("65 upstreams on %d shared streams and %d of their own; want 2 and 0", sh, own)
	}
	eventually(t, "two streams on Atlas", func() bool { return eventStreams(t, a) == 2 })
	time.Sleep(500 * time.Millisecond) // regroups, with nothing to do
	if strings.Contains(logs.String(), "now share event streams") || !streamsAre(s, 2, 0) {
		t.Fatalf("nothing joined, yet streams were regrouped:\n%s", logs.String())
	}
}

// After Atlas restarts, the shared stream resumes with nothing new to
// send: no event comes, yet its services are reachable again, so that a
// service called since still joins it, and one no call asks for is
// still dropped.
func TestRegroupAndSweepGoOnAfterAtlasRestarts(t *testing.T) {
	a := atlastest.Start(t, true)
	register := backendFor(t, a)
	for _, svc := range []string{"billing", "identity", "search", "pong"} {
		register(svc+"-1", svc)
	}
	s := startRegrouping(t, Config{Atlas: StringList{a.URL}, Upstreams: []UpstreamConfig{{Name: "billing"}, {Name: "identity"}}}, "", 50*time.Millisecond, 300*time.Millisecond)
	if code := callHost(t, s, "pong.localhost"); code != 200 {
		t.Fatalf("a call to pong = %d; want 200", code)
	}
	eventually(t, "pong joins the upstreams' stream", func() bool { return streamsAre(s, 1, 0) && eventStreams(t, a) == 1 })
	a.Restart(t, nil)
	eventually(t, "the shared stream is back on Atlas", func() bool { return eventStreams(t, a) == 1 })
	eventually(t, "pong, not called, is dropped", func() bool { return s.table.Lookup("pong") == nil })
	if code := callHost(t, s, "search.localhost"); code != 200 {
		t.Fatalf("a call to search = %d; want 200", code)
	}
	eventually(t, "search joins the shared stream", func() bool {
		callHost(t, s, "search.localhost")
		if !streamsAre(s, 1, 0) {
			return false
		}
		s.streams.mu.Lock()
		defer s.streams.mu.Unlock()
		return s.streams.member[s.table.Lookup("search")] != nil
	})
}

// Dropping a service that shares a stream waits for nothing: the table
// drops one on the request path (a new name at MaxServices), and an event
// of the shared stream may take long to apply (in haproxy mode, the names
// of its instances are resolved).
func TestDroppingASharedServiceWaitsForNoEvent(t *testing.T) {
	a := atlastest.Start(t, true)
	register := backendFor(t, a)
	register("ping-1", "ping")
	register("other-1", "other")
	s := startRegrouping(t, Config{Atlas: StringList{a.URL}}, "", 50*time.Millisecond, time.Hour)
	s.table.MaxPools = 2
	if code := callHost(t, s, "typo.localhost"); code != 503 {
		t.Fatalf("a call to a name with no instance = %d; want 503", code)
	}
	if code := callHost(t, s, "ping.localhost"); code != 200 {
		t.Fatalf("a call to ping = %d; want 200", code)
	}
	eventually(t, "ping and typo share a stream", func() bool { return streamsAre(s, 1, 0) })
	s.streams.mu.Lock()
	var g *group
	for g = range s.streams.groups {
	}
	s.streams.mu.Unlock()
	g.applying.Lock() // an event being applied, for as long as the test needs
	released := false
	release := func() {
		if !released {
			released = true
			g.applying.Unlock()
		}
	}
	defer release()
	called := make(chan int, 1)
	go func() {
		// The table is full: other takes typo's place (empty).
		req, _ := http.NewRequest("GET", "http://"+s.ListenAddr+"/", nil)
		req.Host = "other.localhost"
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			called <- 0
			return
		}
		res.Body.Close()
		called <- res.StatusCode
	}()
	select {
	case code := <-called:
		if code != 200 {
			t.Fatalf("the call that drops typo = %d; want 200", code)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the call that drops typo waits for the shared stream's event")
	}
	if s.table.Lookup("typo") != nil {
		t.Fatal("typo is still in the table")
	}
	release()
	eventually(t, "typo leaves the shared stream", func() bool {
		g.applying.Lock()
		defer g.applying.Unlock()
		s.streams.mu.Lock()
		defer s.streams.mu.Unlock()
		return g.pools["typo"] == nil
	})
}

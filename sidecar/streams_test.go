package sidecar

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/atlas/atlastest"
)

// startRegrouping starts a sidecar of cfg that regroups its streams and
// sweeps its table at the intervals given, and stops it when the test
// ends.
func startRegrouping(t *testing.T, cfg Config, token string, regroup, sweep time.Duration) *Sidecar {
	t.Helper()
	cfg.Listen, cfg.Admin = "127.0.0.1:0", "127.0.0.1:0"
	s, err := New(cfg, nil)
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

// streamCount returns how many streams s holds to Atlas: shared, and of a
// service's own.
func streamCount(s *Sidecar) (shared, own int) {
	m := s.streams
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, o := range m.alone {
		if o.stop != nil {
			own++
		}
	}
	return len(m.groups), own
}

// streamsAre reports whether s follows its services on shared streams
// and streams of their own as many as given.
func streamsAre(s *Sidecar, shared, own int) bool {
	sh, ow := streamCount(s)
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
	if strings.Contains(adminMetrics(t, s), `service="pong"`) {
		t.Fatal("/metrics still has series of the dropped service")
	}
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
		sh, own := streamCount(s)
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
		sh, own := streamCount(s)
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

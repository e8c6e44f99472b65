package sidecar

import (
	"cmp"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/atlas/atlastest"
	"github.com/switchboard-go/switchboard/sidecar/proxy"
)

// startSweeping starts a sidecar of cfg that sweeps every 50 ms, and stops
// it when the test ends. The frontend listens on cfg.Listen, or on a
// loopback port; the admin on a loopback port.
func startSweeping(t *testing.T, cfg Config) *Sidecar {
	t.Helper()
	return startSweepingEvery(t, cfg, 50*time.Millisecond)
}

// startSweepingEvery is startSweeping with the sweep interval given.
func startSweepingEvery(t *testing.T, cfg Config, every time.Duration) *Sidecar {
	t.Helper()
	cfg.Listen, cfg.Admin = cmp.Or(cfg.Listen, "127.0.0.1:0"), "127.0.0.1:0"
	s, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.sweepEvery = every
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown() })
	return s
}

// callHost makes a GET through s's frontend with the Host header host and
// returns the status.
func callHost(t *testing.T, s *Sidecar, host string) int {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+s.ListenAddr+"/", nil)
	req.Host = host
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res.StatusCode
}

// A name called once (a typo in a Host header) is followed only until a
// sweep finds it unused: then its event stream on Atlas is closed and its
// series leave /metrics. A configured upstream stays.
func TestUnusedServicesAreDropped(t *testing.T) {
	a := atlastest.Start(t, true)
	s := startSweeping(t, Config{Atlas: StringList{a.URL}, Upstreams: []UpstreamConfig{{Name: "billing"}}})

	// A service with an instance, called once: its connection pool goes
	// with it.
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer backend.Close()
	port := portOf(backend.Listener.Addr().String())
	if _, err := a.Client().Register(context.Background(), "ping-1", sb.Registration{Service: "ping", Address: "127.0.0.1", Port: port}); err != nil {
		t.Fatal(err)
	}
	before := proxy.OpenBackends()
	if code := callHost(t, s, "ping.localhost"); code != 200 || proxy.OpenBackends() != before+1 {
		t.Fatalf("call to ping = %d with %d connection pools open; want 200 with %d", code, proxy.OpenBackends(), before+1)
	}
	if code := callHost(t, s, "tpyo.localhost"); code != 503 {
		t.Fatalf("call to a service with no instance = %d; want 503", code)
	}
	watchers := func(service string) int {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		p, err := a.Client().Propagation(ctx, "dev", service, 1)
		if err != nil {
			t.Fatal(err)
		}
		return p.Watchers
	}
	deadline := time.Now().Add(10 * time.Second)
	for s.table.Lookup("tpyo") != nil || watchers("tpyo") != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after 10s the unused service is still followed: in the table %v, %d streams on Atlas", s.table.Lookup("tpyo") != nil, watchers("tpyo"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	for s.table.Lookup("ping") != nil || proxy.OpenBackends() != before {
		if time.Now().After(deadline) {
			t.Fatalf("after 10s the unused ping is in the table: %v; %d connection pools open, want %d", s.table.Lookup("ping") != nil, proxy.OpenBackends(), before)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if s.table.Lookup("billing") == nil || watchers("billing") != 1 {
		t.Fatalf("the configured upstream was dropped: in the table %v, %d streams", s.table.Lookup("billing") != nil, watchers("billing"))
	}
	if strings.Contains(adminMetrics(t, s), `service="tpyo"`) {
		t.Fatal("/metrics still has series of the dropped service")
	}
}

// adminMetrics returns s's /metrics.
func adminMetrics(t *testing.T, s *Sidecar) string {
	t.Helper()
	res, err := http.Get("http://" + s.AdminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

// In haproxy mode the sweep asks HAProxy which services it served: a
// service called through HAProxy stays, and once no call comes its backend
// leaves with it. A name called once, with no instance, never gets a
// backend.
func TestHAProxyModeSweepsUnusedServices(t *testing.T) {
	if _, err := exec.LookPath("haproxy"); err != nil {
		t.Fatal("haproxy is not installed: test.sh installs it (apt-get install haproxy)")
	}
	a := atlastest.Start(t, true)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer backend.Close()
	if _, err := a.Client().Register(context.Background(), "ping-1", sb.Registration{Service: "ping", Address: "127.0.0.1", Port: portOf(backend.Listener.Addr().String())}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// Calls come every 50 ms, well within a sweep interval, also under
	// the race detector; a call that follows the one before by more than
	// an interval may find its service swept, by design.
	var s *Sidecar
	for attempt := 1; s == nil; attempt++ {
		// HAProxy binds the frontend's port a moment after it was found
		// free: another test's listener may take it first. Another port
		// is tried then.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		listen := ln.Addr().String()
		ln.Close()
		s, err = New(Config{Atlas: StringList{a.URL}, Proxy: "haproxy", StateDir: dir, Listen: listen, Admin: "127.0.0.1:0"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		s.sweepEvery = 400 * time.Millisecond
		if err := s.Start(); err != nil {
			if attempt == 5 {
				t.Fatalf("%d attempts: %v", attempt, err)
			}
			s = nil
			continue
		}
		t.Cleanup(func() { s.Shutdown() })
	}
	cfg := func() string {
		b, _ := os.ReadFile(filepath.Join(dir, "haproxy", "haproxy.cfg"))
		return string(b)
	}
	if code := callHost(t, s, "tpyo.localhost"); code != 503 {
		t.Fatalf("call to a service with no instance = %d; want 503", code)
	}
	// Called for 4 s, through the fallback first and then through HAProxy:
	// ten sweeps, which keep it.
	for end := time.Now().Add(4 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if code := callHost(t, s, "ping.localhost"); code != 200 {
			t.Fatalf("call to ping = %d", code)
		}
		if s.table.Lookup("ping") == nil {
			t.Fatal("a service HAProxy serves was swept")
		}
	}
	if !strings.Contains(cfg(), "backend be_ping") {
		t.Fatalf("ping has no backend after 4 s of calls:\n%s", cfg())
	}
	if s.table.Lookup("tpyo") != nil || strings.Contains(cfg(), "be_tpyo") {
		t.Fatalf("the name called once is still followed (%v), or got a backend", s.table.Lookup("tpyo") != nil)
	}
	deadline := time.Now().Add(30 * time.Second)
	for s.table.Lookup("ping") != nil || strings.Contains(cfg(), "be_ping") {
		if time.Now().After(deadline) {
			t.Fatalf("30 s after the last call, ping is still followed (%v), or still has a backend:\n%s", s.table.Lookup("ping") != nil, cfg())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Called again: followed again, through the fallback.
	if code := callHost(t, s, "ping.localhost"); code != 200 {
		t.Fatalf("call to ping after it was dropped = %d", code)
	}
}

// startWithAtlasDown starts a sweeping sidecar whose Atlas does not answer,
// restarted from a state file that knows service ping: one instance, which
// answers 200.
func startWithAtlasDown(t *testing.T) *Sidecar {
	t.Helper()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(backend.Close)
	port := portOf(backend.Listener.Addr().String())
	down := httptest.NewServer(http.NotFoundHandler())
	down.Close() // an address where nothing answers
	dir := t.TempDir()
	routes := `{"realm":"dev","services":[{"service":"ping","realm":"dev","index":7,"instances":[` +
		`{"id":"ping-1","service":"ping","realm":"dev","address":"127.0.0.1","port":` + strconv.Itoa(port) + `,"status":"passing","enabled":true}]}]}`
	if err := os.WriteFile(filepath.Join(dir, "routes.json"), []byte(routes), 0o600); err != nil {
		t.Fatal(err)
	}
	return startSweeping(t, Config{Atlas: StringList{down.URL}, StateDir: dir})
}

// While Atlas cannot be reached, a service's last known instances are all
// there is to route to: the sweep keeps them however rarely the service
// is called (static stability), here after a restart from the state file.
func TestSweepKeepsServicesWhileAtlasIsUnreachable(t *testing.T) {
	s := startWithAtlasDown(t)
	time.Sleep(400 * time.Millisecond) // eight sweeps, no call
	if code := callHost(t, s, "ping.localhost"); code != 200 {
		t.Fatalf("a call to ping after sweeps with Atlas down = %d; want 200 from its last known instance", code)
	}
}

// While Atlas is down, a made-up name does not take the place of a
// service's last known instances at the bound of services followed
// (scaled down to 1 here): static stability, as the sweep keeps them.
func TestTheServiceBoundKeepsServicesWhileAtlasIsUnreachable(t *testing.T) {
	s := startWithAtlasDown(t)
	s.table.MaxPools = 1 // MaxServices (1000) scaled down
	time.Sleep(400 * time.Millisecond)
	if code := callHost(t, s, "ping.localhost"); code != 200 {
		t.Fatalf("ping = %d before", code)
	}
	time.Sleep(400 * time.Millisecond) // sweeps: ping not called since
	callHost(t, s, "made-up.localhost")
	if code := callHost(t, s, "ping.localhost"); code != 200 {
		t.Fatalf("with Atlas down, after one call to a made-up name, ping = %d; want 200 from its last known instance", code)
	}
}

package sidecar

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/atlas/atlastest"
)

// eventStreams reads how many event streams Atlas has open from its
// /metrics.
func eventStreams(t *testing.T, a *atlastest.Atlas) int {
	t.Helper()
	req, _ := http.NewRequest("GET", a.URL+"/metrics", nil)
	if a.AdminToken != "" {
		req.Header.Set("Authorization", "Bearer "+a.AdminToken)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "switchboard_atlas_event_streams "); ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("switchboard_atlas_event_streams %q", v)
			}
			return n
		}
	}
	t.Fatal("Atlas's /metrics has no switchboard_atlas_event_streams")
	return 0
}

// The configured upstreams are followed on one event stream: Atlas holds
// one per sidecar for them, not one per service and sidecar. Each routes,
// and a change to one reaches the sidecar on it. A service only a call
// asks for gets a stream of its own.
func TestUpstreamsShareOneEventStream(t *testing.T) {
	a := atlastest.Start(t, true)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer backend.Close()
	port := portOf(backend.Listener.Addr().String())
	register := func(id, service string) {
		t.Helper()
		if _, err := a.Client().Register(context.Background(), id, sb.Registration{Service: service, Address: "127.0.0.1", Port: port}); err != nil {
			t.Fatal(err)
		}
	}
	upstreams := []string{"billing", "identity", "search"}
	var cfg []UpstreamConfig
	for _, u := range upstreams {
		register(u+"-1", u)
		cfg = append(cfg, UpstreamConfig{Name: u})
	}
	s := startSweepingEvery(t, Config{Atlas: StringList{a.URL}, Upstreams: cfg}, time.Hour)
	for _, u := range upstreams {
		eventually(t, u+" routes", func() bool { return callHost(t, s, u+".localhost") == 200 })
	}
	if n := eventStreams(t, a); n != 1 {
		t.Fatalf("Atlas has %d event streams open for a sidecar with %d upstreams; want 1", n, len(upstreams))
	}
	register("identity-2", "identity")
	eventually(t, "the second instance of identity reaches the sidecar", func() bool {
		return len(s.table.Lookup("identity").Endpoints()) == 2
	})
	register("ping-1", "ping")
	if code := callHost(t, s, "ping.localhost"); code != 200 {
		t.Fatalf("a call to ping = %d; want 200", code)
	}
	if n := eventStreams(t, a); n != 2 {
		t.Fatalf("Atlas has %d event streams open once a call asked for ping too; want 2", n)
	}
}

// Atlas refuses the upstreams' shared stream whole when a policy does not
// let the host's token watch one of them. Each then goes on a stream of
// its own: the one allowed routes, the other gets 403, and once a policy
// allows it, it routes too, and the two share one stream again.
func TestAnUpstreamThePolicyRefusesLeavesTheOthersRouting(t *testing.T) {
	a := atlastest.Start(t, false)
	ctx := context.Background()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer backend.Close()
	port := portOf(backend.Listener.Addr().String())
	for _, svc := range []string{"billing", "secrets"} {
		if _, err := a.Client().Register(ctx, svc+"-1", sb.Registration{Service: svc, Address: "127.0.0.1", Port: port}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Client().PutPolicy(ctx, "dev", "web", []string{"billing"}); err != nil {
		t.Fatal(err)
	}
	tok, err := a.Client().CreateToken(ctx, sb.TokenRequest{Name: "host001", Role: "service", Services: []string{"web"}, Realms: []string{"dev"}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Atlas: StringList{a.URL}, Realm: "dev", Listen: "127.0.0.1:0", Admin: "127.0.0.1:0",
		Upstreams: []UpstreamConfig{{Name: "billing"}, {Name: "secrets"}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.SetToken(tok.Secret)
	s.regroupEvery = 100 * time.Millisecond
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown() })
	eventually(t, "billing routes", func() bool { return callHost(t, s, "billing.localhost") == 200 })
	eventually(t, "secrets is refused", func() bool { return callHost(t, s, "secrets.localhost") == 403 })
	if _, err := a.Client().PutPolicy(ctx, "dev", "web", []string{"billing", "secrets"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "secrets routes once the policy allows it", func() bool { return callHost(t, s, "secrets.localhost") == 200 })
	if code := callHost(t, s, "billing.localhost"); code != 200 {
		t.Fatalf("billing = %d; want 200", code)
	}
	eventually(t, "the two upstreams share one stream again", func() bool { return eventStreams(t, a) == 1 })
	register := func(id, service string) {
		t.Helper()
		if _, err := a.Client().Register(ctx, id, sb.Registration{Service: service, Address: "127.0.0.1", Port: port}); err != nil {
			t.Fatal(err)
		}
	}
	register("secrets-2", "secrets")
	register("billing-2", "billing")
	eventually(t, "changes to both reach the sidecar on the shared stream", func() bool {
		return len(s.table.Lookup("secrets").Endpoints()) == 2 && len(s.table.Lookup("billing").Endpoints()) == 2
	})
}

// More upstreams than one stream takes (maxSharedStream) share streams of
// that many, the last one alone on its own: Atlas wakes a stream of more
// for every change in the realm.
func TestManyUpstreamsShareStreamsOf64(t *testing.T) {
	a := atlastest.Start(t, true)
	var cfg []UpstreamConfig
	for i := range maxSharedStream + 1 {
		cfg = append(cfg, UpstreamConfig{Name: fmt.Sprintf("u%02d", i)})
	}
	startSweepingEvery(t, Config{Atlas: StringList{a.URL}, Upstreams: cfg}, time.Hour)
	eventually(t, "two streams on Atlas", func() bool { return eventStreams(t, a) == 2 })
	time.Sleep(200 * time.Millisecond) // no third comes
	if n := eventStreams(t, a); n != 2 {
		t.Fatalf("Atlas has %d event streams open for a sidecar with %d upstreams; want 2", n, len(cfg))
	}
}

// A gateway in front of Atlas that refuses the shared stream's URL (414,
// which the client reads as invalid_argument) leaves the upstreams on
// streams of their own, which it lets through: both route.
func TestAGatewayRefusingTheSharedStreamLeavesEachOnItsOwn(t *testing.T) {
	a := atlastest.Start(t, true)
	target, _ := url.Parse(a.URL)
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.FlushInterval = -1
	gateway := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Count(r.URL.RawQuery, "service=") > 1 {
			http.Error(w, "<html>414 Request-URI Too Large</html>", http.StatusRequestURITooLong)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(gateway.Close) // after the sidecar's Shutdown: its streams go through it
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(backend.Close)
	for _, svc := range []string{"billing", "identity"} {
		if _, err := a.Client().Register(context.Background(), svc+"-1", sb.Registration{Service: svc, Address: "127.0.0.1", Port: portOf(backend.Listener.Addr().String())}); err != nil {
			t.Fatal(err)
		}
	}
	s := startRegrouping(t, Config{Atlas: StringList{gateway.URL}, Upstreams: []UpstreamConfig{{Name: "billing"}, {Name: "identity"}}}, "", 50*time.Millisecond, time.Hour)
	for _, svc := range []string{"billing", "identity"} {
		eventually(t, svc+" routes", func() bool { return callHost(t, s, svc+".localhost") == 200 })
	}
	time.Sleep(300 * time.Millisecond) // several regroup intervals: none is tried
	if n := eventStreams(t, a); n != 2 {
		t.Fatalf("Atlas has %d event streams open; want one per upstream", n)
	}
}

package sidecar

import (
	"bufio"
	"context"
	"net/http"
	"net/http/httptest"
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
	res, err := http.Get(a.URL + "/metrics")
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
// allows it, it routes too.
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
}

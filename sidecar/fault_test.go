package sidecar

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/atlas/atlastest"
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

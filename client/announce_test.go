package client_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"sync"
	"testing"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/atlas/atlastest"
	"github.com/switchboard-go/switchboard/client"
)

// recordedClient starts a real Atlas behind a front that records each
// request as "METHOD path?query" and, with refuseSync, answers ?sync as
// an Atlas older than it does (400); it returns a client of the front and
// what the front has seen so far.
func recordedClient(t *testing.T, refuseSync bool) (*client.Atlas, func() []string) {
	t.Helper()
	a := atlastest.Start(t, true)
	target, err := url.Parse(a.URL)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu       sync.Mutex
		requests []string
	)
	proxy := httputil.NewSingleHostReverseProxy(target)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		requests = append(requests, r.Method+" "+r.URL.Path+"?"+r.URL.RawQuery)
		mu.Unlock()
		if refuseSync && r.URL.Query().Has("sync") {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, `{"error":{"code":"invalid_argument","message":"sync: unknown query parameter (PUT %s takes none)"}}`, r.URL.Path)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	seen := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(requests)
	}
	return &client.Atlas{URLs: []string{front.URL}}, seen
}

// Announce and the heartbeats tell Atlas that the caller makes their
// writes again (?sync=later); Register does not.
func TestAnnounceAndHeartbeatsSaySyncLater(t *testing.T) {
	c, seen := recordedClient(t, false)
	ctx := context.Background()
	reg := sb.Registration{Service: "a", Address: "127.0.0.1", Port: 1000}
	if _, err := c.Register(ctx, "a-1", reg); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Announce(ctx, "a-2", reg); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Heartbeat(ctx, "a-2", sb.Heartbeat{Status: sb.Warning}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Heartbeats(ctx, []sb.BatchHeartbeat{{ID: "a-2", Status: sb.Passing}}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"PUT /v1/instances/a-1?",
		"PUT /v1/instances/a-2?sync=later",
		"PUT /v1/instances/a-2/status?sync=later",
		"PUT /v1/heartbeats?sync=later",
	}
	queries := seen()
	if len(queries) != len(want) {
		t.Fatalf("requests %q; want %q", queries, want)
	}
	for i := range want {
		if queries[i] != want[i] {
			t.Errorf("request %d: %s; want %s", i, queries[i], want[i])
		}
	}
}

// An Atlas older than ?sync=later refuses it as an unknown parameter: the
// client writes without it for a while, so that sidecars may be upgraded
// before Atlas, then tries it again. (The 400 is forced in front of a real
// Atlas.)
func TestAnnounceToAnOlderAtlas(t *testing.T) {
	c, seen := recordedClient(t, true)
	ctx := context.Background()
	if _, err := c.Announce(ctx, "a-1", sb.Registration{Service: "a", Address: "127.0.0.1", Port: 1000}); err != nil {
		t.Fatalf("Announce to an older Atlas: %v", err)
	}
	if _, err := c.Heartbeats(ctx, []sb.BatchHeartbeat{{ID: "a-1", Status: sb.Passing}}); err != nil {
		t.Fatalf("Heartbeats to an older Atlas: %v", err)
	}
	// Once the wait is over, the next write tries ?sync=later again.
	c.EndOldAtlasWait()
	if _, err := c.Heartbeats(ctx, []sb.BatchHeartbeat{{ID: "a-1", Status: sb.Passing}}); err != nil {
		t.Fatalf("Heartbeats to an older Atlas: %v", err)
	}
	want := []string{
		"PUT /v1/instances/a-1?sync=later", "PUT /v1/instances/a-1?",
		"PUT /v1/heartbeats?",
		"PUT /v1/heartbeats?sync=later", "PUT /v1/heartbeats?",
	}
	if queries := seen(); fmt.Sprint(queries) != fmt.Sprint(want) {
		t.Fatalf("requests %q; want %q", queries, want)
	}
}

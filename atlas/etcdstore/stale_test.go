package etcdstore_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/atlas"
	"github.com/switchboard-go/switchboard/internal/etcdtest"
)

// TestAReplicaThatLostEtcdSendsWatchersElsewhere: once a replica no longer
// reaches etcd it can tell no change, so what waits for changes must go to
// a replica that can. A blocking query that was waiting is answered at
// once, marked Switchboard-Stale (it waited out its whole wait, and a
// sidecar's event stream kept its keep-alives going, so neither ever moved
// on); an open event stream ends; new ones and new blocking queries get
// 503. A plain read is still answered from memory, marked stale.
func TestAReplicaThatLostEtcdSendsWatchersElsewhere(t *testing.T) {
	cluster := etcdtest.Start(t, 3)
	a := startReplica(t, cluster.Endpoints()[:1])
	if st, body, _ := do(t, "PUT", a.http.URL+"/v1/instances/x-1", reg("x", 5000, "1h")); st != 200 {
		t.Fatalf("register: %d %s", st, body)
	}
	_, _, hdr := do(t, "GET", a.http.URL+"/v1/services/x", "")
	if hdr.Get(atlas.StaleHeader) != "" {
		t.Fatalf("a read with quorum is marked stale: %v", hdr)
	}
	index := hdr.Get(sb.IndexHeader)
	type answer struct {
		st  int
		hdr http.Header
	}
	answered := make(chan answer, 1)
	go func() {
		st, _, hdr := do(t, "GET", a.http.URL+"/v1/services/x?wait=10m&index="+index, "")
		answered <- answer{st, hdr}
	}()
	ended := readStream(t, a.http.URL+"/v1/watch?service=x")
	// The query is waiting once the server counts it.
	eventually(t, "the blocking query waits", func() bool {
		_, body, _ := do(t, "GET", a.http.URL+"/metrics", "")
		return containsLine(body, "switchboard_atlas_blocking_queries 1")
	})
	cluster.Members[1].Stop()
	cluster.Members[2].Stop()

	ans := <-answered
	if ans.st != 200 || ans.hdr.Get(atlas.StaleHeader) == "" {
		t.Fatalf("blocking query answered after quorum loss: %d %v; want 200 marked %s", ans.st, ans.hdr, atlas.StaleHeader)
	}
	if err := <-ended; err != nil {
		t.Fatalf("the event stream broke (%v); want it ended", err)
	}
	for _, path := range []string{"/v1/watch?service=x", "/v1/services/x?wait=1m&index=" + ans.hdr.Get(sb.IndexHeader)} {
		if st, body, _ := do(t, "GET", a.http.URL+path, ""); st != 503 || !strings.Contains(body, "ask another replica") {
			t.Fatalf("GET %s after quorum loss = %d %s; want 503 sending the client to another replica", path, st, body)
		}
	}
	if st, body, hdr := do(t, "GET", a.http.URL+"/v1/services/x", ""); st != 200 || hdr.Get(atlas.StaleHeader) == "" || !strings.Contains(body, `"id":"x-1"`) {
		t.Fatalf("a plain read after quorum loss = %d %v %s; want the last state, marked stale", st, hdr, body)
	}
	// The health check says why, as the store said it.
	if st, body, _ := do(t, "GET", a.http.URL+"/v1/health", ""); st != 503 || !strings.Contains(body, "reads are stale") || !strings.Contains(body, "etcd: ping") {
		t.Fatalf("/v1/health after quorum loss = %d %s; want 503 naming the store's error", st, body)
	}
}

// readStream opens an event stream and reads it to its end, which it
// sends (nil: ended cleanly); the stream is closed when the test ends.
func readStream(t *testing.T, url string) <-chan error {
	t.Helper()
	res, err := http.Get(url)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("event stream: %v %v", res, err)
	}
	t.Cleanup(func() { res.Body.Close() })
	ended := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, res.Body)
		ended <- err
	}()
	return ended
}

// containsLine reports whether text has line as one of its lines.
func containsLine(text, line string) bool {
	for _, l := range strings.Split(text, "\n") {
		if l == line {
			return true
		}
	}
	return false
}

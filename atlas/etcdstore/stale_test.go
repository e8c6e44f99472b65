package etcdstore_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/atlas"
	"github.com/switchboard-go/switchboard/internal/etcdtest"
)

// TestABlockingQueryAnsweredAfterQuorumLossIsMarkedStale: a blocking
// query that began while etcd answered and is answered after etcd lost
// quorum carries Switchboard-Stale: its answer is from memory that no
// longer follows etcd, as every other read's then is.
func TestABlockingQueryAnsweredAfterQuorumLossIsMarkedStale(t *testing.T) {
	cluster := etcdtest.Start(t, 3)
	a := startReplica(t, cluster.Endpoints()[:1])
	if st, body, _ := do(t, "PUT", a.http.URL+"/v1/instances/x-1", reg("x", 5000, "1h")); st != 200 {
		t.Fatalf("register: %d %s", st, body)
	}
	_, _, hdr := do(t, "GET", a.http.URL+"/v1/services/x", "")
	if hdr.Get(atlas.StaleHeader) != "" {
		t.Fatalf("a read with quorum is marked stale: %v", hdr)
	}
	type answer struct {
		st  int
		hdr http.Header
	}
	answered := make(chan answer, 1)
	go func() {
		st, _, hdr := do(t, "GET", a.http.URL+"/v1/services/x?wait=10m&index="+hdr.Get(sb.IndexHeader), "")
		answered <- answer{st, hdr}
	}()
	// The query is waiting once the server counts it.
	eventually(t, "the blocking query waits", func() bool {
		_, body, _ := do(t, "GET", a.http.URL+"/metrics", "")
		return containsLine(body, "switchboard_atlas_blocking_queries 1")
	})
	cluster.Members[1].Stop()
	cluster.Members[2].Stop()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, _, hdr := do(t, "GET", a.http.URL+"/v1/services/x", "")
		if hdr.Get(atlas.StaleHeader) != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("reads were never marked stale after quorum was lost")
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Answer the waiting query now, as a shutdown does.
	a.srv.StopWaiting()
	ans := <-answered
	if ans.st != 200 || ans.hdr.Get(atlas.StaleHeader) == "" {
		t.Fatalf("blocking query answered after quorum loss: %d %v; want 200 marked %s", ans.st, ans.hdr, atlas.StaleHeader)
	}
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

package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-go/switchboard/internal/etcdtest"
)

// TestSidecarFailsOverBetweenAtlasReplicas: two Atlas processes over a
// three-member etcd cluster; a sidecar lists both; one Atlas is killed:
// routing goes on without a failed request, and a change made through the
// other replica still reaches the sidecar.
func TestSidecarFailsOverBetweenAtlasReplicas(t *testing.T) {
	cluster := etcdtest.Start(t, 3)
	store := "etcd://" + strings.Join(trimScheme(cluster.Endpoints()), ",")
	a := startAtlas(t, t.TempDir(), "--insecure", "--store", store)
	b := startAtlas(t, t.TempDir(), "--insecure", "--store", store)
	p1, p2 := startPy(t, "one"), startPy(t, "two")
	register(t, a.url, "files-1", "files", p1.port)
	s := startSidecar(t, fmt.Sprintf("atlas: [%s, %s]\nupstreams: [{name: files}]\n", a.url, b.url))
	waitFor(t, "the first instance routable", 20*time.Second, func() bool { return len(s.routed("files")) == 1 })
	l := startLoad(s, "files", 4)
	time.Sleep(300 * time.Millisecond)
	a.kill()
	// A change through the surviving replica reaches the sidecar.
	register(t, b.url, "files-2", "files", p2.port)
	took := waitFor(t, "the second instance, registered through B after A died", 30*time.Second, func() bool { return len(s.routed("files")) == 2 })
	time.Sleep(300 * time.Millisecond)
	l.end()
	t.Logf("%d GETs while Atlas A was killed, %d failed; the change through B reached the sidecar in %s; split %v",
		l.ok.Load()+l.failed.Load(), l.failed.Load(), took.Round(time.Millisecond), l.by)
	if l.failed.Load() != 0 {
		t.Fatalf("%d GETs failed: %v", l.failed.Load(), l.errs)
	}
}

func trimScheme(urls []string) []string {
	var out []string
	for _, u := range urls {
		out = append(out, strings.TrimPrefix(u, "http://"))
	}
	return out
}

// TestSidecarLeavesAReplicaThatLostEtcd: replica B reaches etcd through one
// member only, and loses it while the cluster keeps its quorum. B still
// answers (from memory), but can tell no change: the sidecar on B must
// move to A, where a deregistration made meanwhile shows. (It stayed on B,
// routing to the deregistered instance, until B reached etcd again.)
func TestSidecarLeavesAReplicaThatLostEtcd(t *testing.T) {
	cluster := etcdtest.Start(t, 3)
	eps := trimScheme(cluster.Endpoints())
	a := startAtlas(t, t.TempDir(), "--insecure", "--store", "etcd://"+eps[0]+","+eps[1])
	b := startAtlas(t, t.TempDir(), "--insecure", "--store", "etcd://"+eps[2])
	p1, p2 := startPy(t, "one"), startPy(t, "two")
	register(t, a.url, "files-1", "files", p1.port)
	register(t, a.url, "files-2", "files", p2.port)
	s := startSidecar(t, fmt.Sprintf("atlas: [%s, %s]\nupstreams: [{name: files}]\n", b.url, a.url))
	waitFor(t, "both instances routable", 20*time.Second, func() bool { return len(s.routed("files")) == 2 })
	cluster.Members[2].Stop()
	waitFor(t, "B to say it lost etcd", 30*time.Second, func() bool { return strings.Contains(b.log(), "the store does not answer") })
	if st, body, err := call(t.Context(), "DELETE", a.url+"/v1/instances/files-2", ""); err != nil || st != 200 {
		t.Fatalf("deregister through A: %d %s %v", st, body, err)
	}
	took := waitFor(t, "the deregistration through A, while B has lost etcd", 60*time.Second, func() bool { return len(s.routed("files")) == 1 })
	t.Logf("the sidecar left B and saw the change through A %s after it was made", took.Round(time.Millisecond))
}

package etcdstore_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/internal/etcdtest"
)

// TestLeaseFieldsAreTheSameOnEveryReplica: the lease is etcd's, renewed
// through whichever replica a heartbeat reaches; every replica answers
// GET /v1/instances/{id} with the lease's actual end, not one of its own
// making (the embedded store's "one full TTL from this server's start",
// which with etcd is neither true nor the same on two replicas).
func TestLeaseFieldsAreTheSameOnEveryReplica(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	a := startReplica(t, cluster.Endpoints())
	b := startReplica(t, cluster.Endpoints())
	bStarted := time.Now()
	if st, body, _ := do(t, "PUT", a.http.URL+"/v1/instances/x-1", reg("x", 5000, "1h")); st != 200 {
		t.Fatalf("register through A: %d %s", st, body)
	}
	// Long enough after B started that B's own start is not the answer.
	for time.Since(bStarted) < 3*time.Second {
		time.Sleep(100 * time.Millisecond)
	}
	st, body, _ := do(t, "PUT", a.http.URL+"/v1/instances/x-1/status", `{"status":"passing"}`)
	if st != 200 {
		t.Fatalf("heartbeat through A: %d %s", st, body)
	}
	var viaA sb.Instance
	if err := json.Unmarshal([]byte(body), &viaA); err != nil || viaA.ExpiresAt == nil {
		t.Fatalf("heartbeat answer %s: %v", body, err)
	}
	var viaB sb.Instance
	eventually(t, "B knows the instance", func() bool {
		st, body, _ := do(t, "GET", b.http.URL+"/v1/instances/x-1", "")
		return st == 200 && json.Unmarshal([]byte(body), &viaB) == nil
	})
	// etcd counts a lease's time left in whole seconds.
	if viaB.ExpiresAt == nil || viaB.ExpiresAt.Before(viaA.ExpiresAt.Add(-1500*time.Millisecond)) || viaB.ExpiresAt.After(viaA.ExpiresAt.Add(1500*time.Millisecond)) {
		t.Fatalf("expires_at through A %v, through B %v; want the same lease end", viaA.ExpiresAt, viaB.ExpiresAt)
	}
	if viaB.LastHeartbeat == nil {
		t.Fatalf("through B: no last_heartbeat; through A %v", viaA.LastHeartbeat)
	}
	// etcd counts the time left in whole seconds, so the renewal it implies
	// came out as much as a second before the registration.
	for i := range 10 {
		id := fmt.Sprint("y-", i)
		if st, body, _ := do(t, "PUT", a.http.URL+"/v1/instances/"+id, reg("y", 6000+i, "1h")); st != 200 {
			t.Fatalf("register through A: %d %s", st, body)
		}
		var in sb.Instance
		eventually(t, "B knows "+id, func() bool {
			st, body, _ := do(t, "GET", b.http.URL+"/v1/instances/"+id, "")
			return st == 200 && json.Unmarshal([]byte(body), &in) == nil
		})
		if in.LastHeartbeat != nil && in.LastHeartbeat.Before(in.RegisteredAt) {
			t.Fatalf("through B: last_heartbeat %v before registered_at %v", in.LastHeartbeat, in.RegisteredAt)
		}
	}
	// A listing does not ask etcd per instance: B leaves out the lease
	// end it does not know rather than make one up.
	st, body, _ = do(t, "GET", b.http.URL+"/v1/services/x?leases=true", "")
	var list sb.ServiceInstances
	if st != 200 || json.Unmarshal([]byte(body), &list) != nil || len(list.Instances) != 1 {
		t.Fatalf("listing through B: %d %s", st, body)
	}
	if in := list.Instances[0]; in.ExpiresAt != nil || in.LastHeartbeat != nil {
		t.Fatalf("listing through B: expires_at %v, last_heartbeat %v; want both left out, as B saw no heartbeat", in.ExpiresAt, in.LastHeartbeat)
	}
}

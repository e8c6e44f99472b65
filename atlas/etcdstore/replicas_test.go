package etcdstore_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/atlas"
	"github.com/switchboard-go/switchboard/atlas/etcdstore"
	"github.com/switchboard-go/switchboard/client"
	"github.com/switchboard-go/switchboard/internal/etcdtest"
)

// replica is one Atlas over the shared etcd.
type replica struct {
	srv   *atlas.Server
	store *etcdstore.Store
	http  *httptest.Server
	once  sync.Once
}

func startReplica(t *testing.T, endpoints []string) *replica {
	t.Helper()
	return startReplicaWith(t, endpoints, atlas.Config{Insecure: true})
}

// startReplicaWith starts a replica with cfg, its Store set here.
func startReplicaWith(t *testing.T, endpoints []string, cfg atlas.Config) *replica {
	t.Helper()
	st, err := etcdstore.Open(etcdstore.Config{Endpoints: endpoints})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Store = st
	srv, err := atlas.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := &replica{srv: srv, store: st, http: httptest.NewServer(srv.Handler())}
	t.Cleanup(r.kill)
	return r
}

// kill stops the replica as a crash would: its connections drop, and it
// no longer renews anything.
func (r *replica) kill() {
	r.once.Do(func() {
		r.srv.StopWaiting()
		r.http.CloseClientConnections()
		r.http.Close()
		r.srv.Close()
		r.store.Close()
	})
}

func do(t *testing.T, method, url, body string) (int, string, http.Header) {
	t.Helper()
	return doAs(t, method, url, "", body)
}

// doAs is do with a bearer token ("" sends none).
func doAs(t *testing.T, method, url, token, body string) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b), res.Header
}

func reg(service string, port int, ttl string) string {
	return fmt.Sprintf(`{"service":%q,"address":"127.0.0.1","port":%d,"ttl":%q}`, service, port, ttl)
}

// TestTwoReplicasServeOneTruth: a three-member etcd cluster and two Atlas
// replicas: a registration through A wakes a blocking query on B; config
// written through A is read through B; an instance registered through A
// with a short TTL expires after A is killed.
func TestTwoReplicasServeOneTruth(t *testing.T) {
	cluster := etcdtest.Start(t, 3)
	a := startReplica(t, cluster.Endpoints())
	b := startReplica(t, cluster.Endpoints())
	_, _, hdr := do(t, "GET", b.http.URL+"/v1/services/identity", "")
	idx := hdr.Get(sb.IndexHeader)
	woke := make(chan string, 1)
	go func() {
		_, body, _ := do(t, "GET", b.http.URL+"/v1/services/identity?wait=30s&index="+idx, "")
		woke <- body
	}()
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	if st, body, _ := do(t, "PUT", a.http.URL+"/v1/instances/identity-1", reg("identity", 5000, "30s")); st != 200 {
		t.Fatalf("register through A: %d %s", st, body)
	}
	select {
	case body := <-woke:
		if !strings.Contains(body, `"id":"identity-1"`) {
			t.Fatalf("B's blocking query woke with %s", body)
		}
		t.Logf("a registration through A woke a blocking query on B after %s", time.Since(start).Round(time.Millisecond))
	case <-time.After(20 * time.Second):
		t.Fatal("a registration through A did not wake B's blocking query")
	}
	if st, body, _ := do(t, "PUT", a.http.URL+"/v1/config/layer?service=identity", `{"db":{"pool":7}}`); st != 200 {
		t.Fatalf("config through A: %d %s", st, body)
	}
	var m sb.MergedConfig
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		_, body, _ := do(t, "GET", b.http.URL+"/v1/config?service=identity", "")
		json.Unmarshal([]byte(body), &m)
		if m.Sources["db.pool"] == "service=identity" {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if m.Sources["db.pool"] != "service=identity" {
		t.Fatalf("config written through A, read through B: %+v", m)
	}
	// A short lease through A; A dies; the lease is etcd's: it expires.
	if st, body, _ := do(t, "PUT", a.http.URL+"/v1/instances/short-1", reg("short", 5001, "2s")); st != 200 {
		t.Fatalf("register short: %d %s", st, body)
	}
	// A heartbeat may go to any replica.
	if st, body, _ := do(t, "PUT", b.http.URL+"/v1/instances/short-1/status", `{"status":"passing"}`); st != 200 {
		t.Fatalf("heartbeat through B of an instance registered through A: %d %s", st, body)
	}
	a.kill()
	killed := time.Now()
	for time.Since(killed) < 20*time.Second {
		if st, _, _ := do(t, "GET", b.http.URL+"/v1/instances/short-1", ""); st == 404 {
			t.Logf("an instance registered through A (ttl 2s) expired %s after A was killed", time.Since(killed).Round(100*time.Millisecond))
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("an instance registered through a killed replica never expired")
}

// TestEtcdMemberLostDuringWrites: one of three etcd members is stopped in
// the middle of a stream of registrations: every acknowledged write is
// there afterwards, and writes go on.
func TestEtcdMemberLostDuringWrites(t *testing.T) {
	cluster := etcdtest.Start(t, 3)
	a := startReplica(t, cluster.Endpoints())
	var (
		mu    sync.Mutex
		acked []string
		fails int
	)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 100000 && ctx.Err() == nil; n++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("w%d-%d", w, n)
				req, _ := http.NewRequestWithContext(ctx, "PUT", a.http.URL+"/v1/instances/"+id, strings.NewReader(reg("svc", 1000+n%50000, "1h")))
				req.Header.Set("Content-Type", "application/json")
				res, err := http.DefaultClient.Do(req)
				if err != nil {
					continue
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				mu.Lock()
				if res.StatusCode == 200 {
					acked = append(acked, id)
				} else {
					fails++
				}
				mu.Unlock()
			}
		}()
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	for count() < 200 {
		time.Sleep(10 * time.Millisecond)
	}
	cluster.Members[0].Stop()
	lostAt := count()
	for count() < lostAt+200 {
		if ctx.Err() != nil {
			t.Fatalf("writes stopped after a member was lost: %d acknowledged before, %d after", lostAt, count()-lostAt)
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	// Every acknowledged write is in etcd, read through a fresh replica on
	// the members left.
	b := startReplica(t, cluster.Endpoints()[1:])
	mu.Lock()
	defer mu.Unlock()
	for _, id := range acked {
		if st, _, _ := do(t, "GET", b.http.URL+"/v1/instances/"+id, ""); st != 200 {
			t.Fatalf("acknowledged registration %s is missing after a member was lost", id)
		}
	}
	t.Logf("%d registrations acknowledged (%d before the member was lost), %d refused meanwhile, none lost", len(acked), lostAt, fails)
}

// TestQuorumLost: two of three members stopped: writes answer 503 with a
// message, reads are served from memory marked Switchboard-Stale, and
// Atlas's health fails.
func TestQuorumLost(t *testing.T) {
	cluster := etcdtest.Start(t, 3)
	a := startReplica(t, cluster.Endpoints()[:1])
	if st, body, _ := do(t, "PUT", a.http.URL+"/v1/instances/x-1", reg("x", 5000, "1h")); st != 200 {
		t.Fatalf("register: %d %s", st, body)
	}
	cluster.Members[1].Stop()
	cluster.Members[2].Stop()
	st, body, _ := do(t, "PUT", a.http.URL+"/v1/instances/x-2", reg("x", 5001, "1h"))
	if st != 503 || !strings.Contains(body, `"code":"unavailable"`) || !strings.Contains(body, "store is unavailable") {
		t.Fatalf("a write without quorum = %d %s; want 503 unavailable", st, body)
	}
	var hdr http.Header
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		st, body, hdr = do(t, "GET", a.http.URL+"/v1/services/x", "")
		if hdr.Get(atlas.StaleHeader) != "" {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st != 200 || hdr.Get(atlas.StaleHeader) == "" || !strings.Contains(body, `"id":"x-1"`) {
		t.Fatalf("a read without quorum = %d %v %s; want the last state, marked %s", st, hdr, body, atlas.StaleHeader)
	}
	if st, _, _ := do(t, "GET", a.http.URL+"/v1/health", ""); st != 503 {
		t.Fatalf("health without quorum = %d; want 503", st)
	}
	// Kubernetes' forms: not ready, yet alive (nothing a restart mends).
	if st, body, _ := do(t, "GET", a.http.URL+"/readyz", ""); st != 500 || !strings.Contains(body, "[-]store failed") {
		t.Fatalf("readyz without quorum = %d %s; want 500 naming the store", st, body)
	}
	if st, body, _ := do(t, "GET", a.http.URL+"/livez", ""); st != 200 {
		t.Fatalf("livez without quorum = %d %s; want 200", st, body)
	}
}

// TestTwoReplicasShareTokensPoliciesAndPorts: with authentication on, a
// token created through A works on B, a policy written through A is read
// through B, a token deleted through A stops working on B, and a port
// allocated through A is the one B gives.
func TestTwoReplicasShareTokensPoliciesAndPorts(t *testing.T) {
	a, b, admin := twoReplicasWithAuth(t)
	st, body := authDo(t, "POST", a.http.URL+"/v1/tokens", admin, `{"name":"ops","role":"admin"}`)
	if st != 200 {
		t.Fatalf("create token through A: %d %s", st, body)
	}
	var tok sb.Token
	if err := json.Unmarshal([]byte(body), &tok); err != nil || tok.Secret == "" {
		t.Fatalf("token answer %s: %v", body, err)
	}
	eventually(t, "the token works on B", func() bool {
		st, _ := authDo(t, "GET", b.http.URL+"/v1/services", tok.Secret, "")
		return st == 200
	})
	if st, body := authDo(t, "PUT", a.http.URL+"/v1/policies/dashboard?realm=production", tok.Secret, `{"may_call":["identity"]}`); st != 200 {
		t.Fatalf("policy through A: %d %s", st, body)
	}
	eventually(t, "the policy is read through B", func() bool {
		_, body := authDo(t, "GET", b.http.URL+"/v1/policies?realm=production", tok.Secret, "")
		return strings.Contains(body, `"identity"`)
	})
	_, pa := authDo(t, "POST", a.http.URL+"/v1/services/identity/port", tok.Secret, "")
	_, pb := authDo(t, "POST", b.http.URL+"/v1/services/identity/port", tok.Secret, "")
	_, pc := authDo(t, "POST", b.http.URL+"/v1/services/billing/port", tok.Secret, "")
	var p1, p2, p3 sb.PortAssignment
	json.Unmarshal([]byte(pa), &p1)
	json.Unmarshal([]byte(pb), &p2)
	json.Unmarshal([]byte(pc), &p3)
	if p1.Port == 0 || p1.Port != p2.Port || p3.Port == p1.Port || p3.Port == 0 {
		t.Fatalf("ports: identity through A %s, through B %s, billing through B %s", pa, pb, pc)
	}
	if st, body := authDo(t, "DELETE", a.http.URL+"/v1/tokens/"+tok.ID, admin, ""); st != 200 && st != 204 {
		t.Fatalf("delete token through A: %d %s", st, body)
	}
	eventually(t, "the deleted token is refused by B", func() bool {
		st, _ := authDo(t, "GET", b.http.URL+"/v1/services", tok.Secret, "")
		return st == 401
	})
}

// twoReplicasWithAuth starts a three-member cluster and two replicas on it
// with authentication on, and returns them with the admin token.
func twoReplicasWithAuth(t *testing.T) (a, b *replica, admin string) {
	t.Helper()
	cluster := etcdtest.Start(t, 3)
	dir := t.TempDir()
	a = startReplicaWith(t, cluster.Endpoints(), atlas.Config{DataDir: dir})
	b = startReplicaWith(t, cluster.Endpoints(), atlas.Config{DataDir: t.TempDir()})
	return a, b, readToken(t, dir)
}

func readToken(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func authDo(t *testing.T, method, url, token, body string) (int, string) {
	t.Helper()
	st, b, _ := doAs(t, method, url, token, body)
	return st, b
}

func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	pollFor(t, 10*time.Second, what, ok)
}

// TestDrainCountsTheStreamsOfEveryReplica: each replica knows only the
// event streams it serves, so a drain through A, by a client that lists
// both replicas, waits for B's streams too.
func TestDrainCountsTheStreamsOfEveryReplica(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	a := startReplica(t, cluster.Endpoints())
	b := startReplica(t, cluster.Endpoints())
	if st, body, _ := do(t, "PUT", a.http.URL+"/v1/instances/identity-1", reg("identity", 5000, "30s")); st != 200 {
		t.Fatalf("register through A: %d %s", st, body)
	}
	// A stream on B, once it has the instance in its snapshot.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", b.http.URL+"/v1/watch?service=identity", nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	br := bufio.NewReader(res.Body)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("B's stream ended before the instance: %v", err)
		}
		if strings.Contains(line, `"id":"identity-1"`) {
			break
		}
	}
	go io.Copy(io.Discard, br)
	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer dcancel()
	c := &client.Atlas{URLs: []string{a.http.URL, b.http.URL}}
	p, err := c.Drain(dctx, "identity-1", "test")
	if err != nil {
		t.Fatal(err)
	}
	if p.Watchers != 1 || p.Confirmed != 1 {
		t.Fatalf("drain through A with B's stream open: %+v; want 1 watcher, confirmed", p)
	}
	// A replica that cannot be reached is left out.
	b.kill()
	c = &client.Atlas{URLs: []string{a.http.URL, b.http.URL}}
	if p, err := c.Propagation(dctx, "", "identity", p.Index); err != nil || p.Watchers != 0 {
		t.Fatalf("propagation with B gone: %+v, %v; want 0 watchers, no error", p, err)
	}
}

// TestAReplicaFindsWhatAnotherWroteAnInstantAgo: what is written through A
// is acted on through B at once: a token used, an instance disabled and
// deregistered, a config layer and a token deleted. B's memory follows
// etcd a moment behind, and it answered 401 and 404 from it (a
// deregistration was then lost); it now catches up with etcd before it
// says a thing is not there.
func TestAReplicaFindsWhatAnotherWroteAnInstantAgo(t *testing.T) {
	a, b, admin := twoReplicasWithAuth(t)
	for i := range 40 {
		st, body := authDo(t, "POST", a.http.URL+"/v1/tokens", admin, fmt.Sprintf(`{"name":"ops-%d","role":"admin"}`, i))
		var tok sb.Token
		if st != 200 || json.Unmarshal([]byte(body), &tok) != nil {
			t.Fatalf("create token through A: %d %s", st, body)
		}
		id := fmt.Sprintf("x-%d", i)
		steps := []struct{ method, url, body string }{
			{"PUT", a.http.URL + "/v1/instances/" + id, reg("x", 5000+i, "1h")},
			{"PUT", b.http.URL + "/v1/instances/" + id + "/enabled", `{"enabled":false,"reason":"test"}`},
			{"DELETE", b.http.URL + "/v1/instances/" + id, ""},
			{"PUT", a.http.URL + "/v1/config/layer?realm=dev&service=" + id, `{"k":1}`},
			{"DELETE", b.http.URL + "/v1/config/layer?realm=dev&service=" + id, ""},
		}
		for _, s := range steps {
			if st, body := authDo(t, s.method, s.url, tok.Secret, s.body); st != 200 && st != 204 {
				t.Fatalf("round %d: %s %s with a token made through A an instant before = %d %s", i, s.method, s.url, st, body)
			}
		}
	}
	// Deleting is the quickest step to follow a write, so it gets more rounds.
	for i := range 200 {
		st, body := authDo(t, "POST", a.http.URL+"/v1/tokens", admin, fmt.Sprintf(`{"name":"old-%d","role":"reader"}`, i))
		var old sb.Token
		if st != 200 || json.Unmarshal([]byte(body), &old) != nil {
			t.Fatalf("create token through A: %d %s", st, body)
		}
		if st, body := authDo(t, "DELETE", b.http.URL+"/v1/tokens/"+old.ID, admin, ""); st != 200 {
			t.Fatalf("round %d: deleting through B a token made through A an instant before = %d %s; want 200", i, st, body)
		}
	}
	if _, body := authDo(t, "GET", a.http.URL+"/v1/services/x", admin, ""); strings.Contains(body, `"id":"x-`) {
		t.Fatalf("instances deregistered through B are still registered: %s", body)
	}
}

// TestNotFoundWhileOthersWriteToEtcd: etcd's revision moves with writes
// outside Atlas's prefix, which Atlas's watch never sees; catching up to
// it waited out its 3 s and answered 503 where "not found" was right (an
// unknown token, an instance gone), so a sidecar never learnt to
// register again while another tenant of the cluster wrote.
func TestNotFoundWhileOthersWriteToEtcd(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	dir := t.TempDir()
	a := startReplicaWith(t, cluster.Endpoints(), atlas.Config{DataDir: dir})
	admin := readToken(t, dir)
	other, err := etcdstore.Open(etcdstore.Config{Endpoints: cluster.Endpoints(), Prefix: "/other/"})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	for i := range 3 {
		if _, err := other.Txn(context.Background(), []atlas.Op{{Key: fmt.Sprint("k", i), Value: []byte("v")}}); err != nil {
			t.Fatal(err)
		}
		if st, body := authDo(t, "GET", a.http.URL+"/v1/services", "sb.nosuchid.secret", ""); st != 401 {
			t.Fatalf("an unknown token after another tenant's write = %d %s; want 401", st, body)
		}
		if st, body := authDo(t, "DELETE", a.http.URL+"/v1/instances/gone-1", admin, ""); st != 404 {
			t.Fatalf("deregistering an unknown id after another tenant's write = %d %s; want 404", st, body)
		}
	}
}

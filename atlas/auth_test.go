package atlas_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/atlas"
	"github.com/switchboard-go/switchboard/atlas/boltstore"
)

func (a *testAtlas) newToken(t *testing.T, req string) string {
	t.Helper()
	var tok sb.Token
	a.must("POST", "/v1/tokens", req).decode(t, &tok)
	if !strings.HasPrefix(tok.Secret, "sb.") {
		t.Fatalf("token secret = %q", tok.Secret)
	}
	return tok.Secret
}

// tokenID returns the id of the token named name, from the token list.
func (a *testAtlas) tokenID(t *testing.T, name string) string {
	t.Helper()
	var list struct{ Tokens []sb.Token }
	a.must("GET", "/v1/tokens", "").decode(t, &list)
	for _, tok := range list.Tokens {
		if tok.Name == name {
			return tok.ID
		}
	}
	t.Fatalf("no token named %q in %+v", name, list.Tokens)
	return ""
}

func TestAdminTokenFile(t *testing.T) {
	a := start(t, false)
	fi, err := os.Stat(filepath.Join(a.dir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin.token mode = %v; want 0600", fi.Mode().Perm())
	}
	// The store holds only a hash of the secret.
	_, secret, _ := strings.Cut(strings.TrimPrefix(a.token, "sb."), ".")
	db, err := os.ReadFile(filepath.Join(a.dir, "atlas.db"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(db, []byte(secret)) {
		t.Fatal("the store file contains the token secret")
	}
}

func TestBootstrapLogsPathNotSecret(t *testing.T) {
	dir := t.TempDir()
	var logs bytes.Buffer
	st, err := boltstore.Open(boltstore.Config{Path: filepath.Join(dir, "atlas.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	srv, err := atlas.New(atlas.Config{Store: st, DataDir: dir, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	tok, _ := os.ReadFile(filepath.Join(dir, "admin.token"))
	_, secret, _ := strings.Cut(strings.TrimPrefix(strings.TrimSpace(string(tok)), "sb."), ".")
	if !strings.Contains(logs.String(), filepath.Join(dir, "admin.token")) {
		t.Errorf("log does not name the token file: %s", logs.String())
	}
	if secret == "" || strings.Contains(logs.String(), secret) {
		t.Errorf("log holds the secret (or no secret was written): %s", logs.String())
	}
}

func TestAuth(t *testing.T) {
	a := start(t, false)
	reader := a.newToken(t, `{"name":"ops","role":"reader"}`)
	svc := a.newToken(t, `{"name":"identity","role":"service","services":["identity"],"realms":["production"]}`)
	a.must("PUT", "/v1/instances/billing-1", reg("billing", 6000, `,"realm":"production"`))
	a.must("PUT", "/v1/instances/redis-1", reg("redis", 6379, `,"realm":"production"`))
	a.must("PUT", "/v1/instances/dev-identity-1", reg("identity", 5004, `,"realm":"dev"`))
	a.must("PUT", "/v1/policies/identity?realm=production", `{"may_call":["billing"]}`)
	a.must("PUT", "/v1/config/layer?service=identity&realm=production", `{"db":"x"}`)
	tests := []struct {
		name, token, method, path, body string
		status                          int
	}{
		{"no token", "", "GET", "/v1/services", "", 401},
		{"bad scheme", "Basic abc", "GET", "/v1/services", "", 401},
		{"unknown token", "sb.0000000000000000.nope", "GET", "/v1/services", "", 401},
		{"wrong secret", a.token[:len(a.token)-2] + "xx", "GET", "/v1/services", "", 401},
		{"health needs none", "", "GET", "/v1/health", "", 200},
		{"livez needs none", "", "GET", "/livez", "", 200},
		{"readyz needs none", "", "GET", "/readyz?verbose", "", 200},
		{"readyz of the store", "", "GET", "/readyz/store", "", 200},
		{"metrics need a token", "", "GET", "/metrics", "", 401},
		{"reader reads", reader, "GET", "/v1/services?realm=production", "", 200},
		{"reader reads config", reader, "GET", "/v1/config/layers", "", 200},
		{"reader metrics", reader, "GET", "/metrics", "", 200},
		{"reader may not register", reader, "PUT", "/v1/instances/x-1", reg("x", 1, ""), 403},
		{"reader may not set config", reader, "PUT", "/v1/config/layer", `{}`, 403},
		{"reader may not list tokens", reader, "GET", "/v1/tokens", "", 403},
		{"service registers itself", svc, "PUT", "/v1/instances/identity-1", reg("identity", 5000, `,"realm":"production"`), 200},
		{"service heartbeats itself", svc, "PUT", "/v1/instances/identity-1/status", `{"status":"passing"}`, 200},
		{"service may not register another", svc, "PUT", "/v1/instances/billing-2", reg("billing", 6001, `,"realm":"production"`), 403},
		// Registering an id again must not take over another service's instance.
		{"service may not take over another's id", svc, "PUT", "/v1/instances/billing-1", reg("identity", 5002, `,"realm":"production"`), 403},
		{"service may not take over an id in another realm", svc, "PUT", "/v1/instances/dev-identity-1", reg("identity", 5003, `,"realm":"production"`), 403},
		{"service may not use another realm", svc, "PUT", "/v1/instances/identity-2", reg("identity", 5001, `,"realm":"dev"`), 403},
		// An instance of another service is one that is not there: a
		// 403 named its service and realm.
		{"service may not heartbeat another", svc, "PUT", "/v1/instances/billing-1/status", `{"status":"critical"}`, 404},
		{"service may not deregister another", svc, "DELETE", "/v1/instances/billing-1", "", 404},
		{"service reads its own", svc, "GET", "/v1/services/identity?realm=production", "", 200},
		{"service reads what it may call", svc, "GET", "/v1/services/billing?realm=production", "", 200},
		{"service may not read others", svc, "GET", "/v1/services/redis?realm=production", "", 403},
		{"service watches what it may call", svc, "GET", "/v1/services/billing?realm=production", "", 200},
		{"service may not watch others", svc, "GET", "/v1/watch?realm=production&service=redis", "", 403},
		{"service may not watch all", svc, "GET", "/v1/watch?realm=production&service=*", "", 403},
		{"service may not list", svc, "GET", "/v1/services?realm=production", "", 403},
		{"service reads its config", svc, "GET", "/v1/config?service=identity&realm=production", "", 200},
		{"service names the service whose config it reads", svc, "GET", "/v1/config?realm=production", "", 400},
		{"service learns nothing of an unknown id", svc, "GET", "/v1/instances/nope-1", "", 404},
		{"service may not read others' config", svc, "GET", "/v1/config?service=billing&realm=production", "", 403},
		{"service may not read raw layers", svc, "GET", "/v1/config/layer?service=identity&realm=production", "", 403},
		{"service may not flip others", svc, "PUT", "/v1/instances/billing-1/enabled", `{"enabled":false}`, 404},
		{"service may not create tokens", svc, "POST", "/v1/tokens", `{"name":"x","role":"admin"}`, 403},
		{"service may not assign ports", svc, "POST", "/v1/services/identity/port", "", 403},
		{"admin deregisters", a.token, "DELETE", "/v1/instances/identity-1", "", 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r resp
			if strings.HasPrefix(tt.token, "Basic ") {
				r = a.doWithHeader(tt.token, tt.method, tt.path, tt.body)
			} else {
				r = a.doAs(tt.token, tt.method, tt.path, tt.body)
			}
			if r.status != tt.status {
				t.Fatalf("%s %s = %d %s; want %d", tt.method, tt.path, r.status, r.body, tt.status)
			}
			if r.status >= 400 {
				var e struct{ Error sb.Error }
				if json.Unmarshal(r.body, &e) != nil || e.Error.Message == "" {
					t.Fatalf("error body = %s", r.body)
				}
				// A service token learns nothing of other services' ids.
				if tt.token == svc && strings.Contains(tt.path, "billing-1") && strings.Contains(e.Error.Message, "service billing") {
					t.Fatalf("%s %s told a service token whose id billing-1 is: %s", tt.method, tt.path, r.body)
				}
			}
		})
	}
	// A refused read names the service asked for and the token's own (a
	// sidecar that only routes has no service of its own to name in the
	// 403 it gives the caller: it passes this message on).
	dash := a.newToken(t, `{"name":"dash","role":"service","services":["dashboard"],"realms":["production"]}`)
	r := a.doAs(dash, "GET", "/v1/watch?realm=production&service=redis", "")
	var e struct{ Error sb.Error }
	if json.Unmarshal(r.body, &e); r.status != 403 || !strings.Contains(e.Error.Message, "service redis") || !strings.Contains(e.Error.Message, "service dashboard") {
		t.Errorf("watch refused by policy = %d %q; want 403 naming service redis and service dashboard", r.status, e.Error.Message)
	}
	// The instances a service may not take over are as they were.
	for id, want := range map[string]string{"billing-1": "billing/production", "dev-identity-1": "identity/dev"} {
		var in sb.Instance
		a.must("GET", "/v1/instances/"+id, "").decode(t, &in)
		if got := in.Service + "/" + in.Realm; got != want {
			t.Errorf("instance %s is now %s; want %s", id, got, want)
		}
	}
	// A deleted token stops working at once.
	var list struct{ Tokens []sb.Token }
	a.must("GET", "/v1/tokens", "").decode(t, &list)
	for _, tok := range list.Tokens {
		if tok.Secret != "" {
			t.Fatalf("token list shows a secret: %+v", tok)
		}
		if tok.Role == sb.RoleReader {
			a.must("DELETE", "/v1/tokens/"+tok.ID, "")
		}
	}
	if r := a.doAs(reader, "GET", "/v1/services", ""); r.status != 401 {
		t.Fatalf("deleted token = %d; want 401", r.status)
	}
}

// TestRevokedAccessEndsTheStream: an event stream is authorized for as
// long as it lasts, not only when it opens. Deleting its token, or the
// policy that let a service watch another, ends it; the client's next
// connection is then refused.
func TestRevokedAccessEndsTheStream(t *testing.T) {
	a := start(t, false)
	reader := a.newToken(t, `{"name":"ops","role":"reader"}`)
	svc := a.newToken(t, `{"name":"identity","role":"service","services":["identity"],"realms":["dev"]}`)
	a.must("PUT", "/v1/policies/identity", `{"may_call":["billing"]}`)
	a.must("PUT", "/v1/instances/billing-0", reg("billing", 5999, ""))
	readerID := a.tokenID(t, "ops")
	open := func(token, query string) <-chan sse {
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		req, _ := http.NewRequestWithContext(ctx, "GET", a.http.URL+"/v1/watch?"+query, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		res, err := http.DefaultClient.Do(req)
		if err != nil || res.StatusCode != 200 {
			t.Fatalf("watch %s: %v %v", query, err, res)
		}
		t.Cleanup(func() { res.Body.Close() })
		events := readEvents(res.Body)
		next(t, events) // the snapshot
		return events
	}
	ended := func(name string, events <-chan sse) {
		t.Helper()
		timeout := time.After(5 * time.Second)
		for {
			select {
			case ev, ok := <-events:
				if !ok {
					return
				}
				t.Fatalf("%s: stream sent %s after its access was revoked: %.100s", name, ev.kind, ev.data)
			case <-timeout:
				t.Fatalf("%s: stream still open 5s after its access was revoked", name)
			}
		}
	}

	byReader := open(reader, "service=*")
	a.must("DELETE", "/v1/tokens/"+readerID, "")
	a.must("PUT", "/v1/instances/billing-1", reg("billing", 6000, ""))
	ended("deleted token", byReader)

	bySvc := open(svc, "service=billing")
	a.must("PUT", "/v1/policies/identity", `{"may_call":[]}`)
	a.must("PUT", "/v1/instances/billing-2", reg("billing", 6001, ""))
	ended("policy withdrawn", bySvc)
	if r := a.doAs(svc, "GET", "/v1/watch?service=billing", ""); r.status != 403 {
		t.Fatalf("watch after the policy was withdrawn = %d %s; want 403", r.status, r.body)
	}
}

// TestAdminTokenFileOfAGoneStoreStopsAtlas: an admin.token whose store is
// gone (atlas.db emptied, replaced or restored wrong) made Atlas start as a
// new install: an empty registry served as if true, every sidecar's token
// refused from then on, a WARN line the only sign. Atlas now refuses to
// start, saying what happened; with the file deleted too, it starts afresh.
// A store whose admin tokens were all deleted is not taken for a gone one.
func TestAdminTokenFileOfAGoneStoreStopsAtlas(t *testing.T) {
	dir := t.TempDir()
	first := startIn(t, dir, false)
	stale := first.token
	first.stop()
	for _, f := range []string{"atlas.db", "atlas.db.wal"} {
		if err := os.RemoveAll(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	st, err := boltstore.Open(boltstore.Config{Path: filepath.Join(dir, "atlas.db")})
	if err != nil {
		t.Fatal(err)
	}
	_, err = atlas.New(atlas.Config{Store: st, DataDir: dir})
	st.Close()
	if err == nil || !strings.Contains(err.Error(), "the store's data is gone") || !strings.Contains(err.Error(), "delete "+filepath.Join(dir, "admin.token")) {
		t.Fatalf("Atlas on an empty store with an admin.token: %v; want a refusal saying the data is gone", err)
	}
	if err := os.Remove(filepath.Join(dir, "admin.token")); err != nil {
		t.Fatal(err)
	}
	a := startIn(t, dir, false)
	if a.token == stale {
		t.Fatal("admin.token still holds the token of the gone store")
	}
	if r := a.do("GET", "/v1/tokens", ""); r.status != 200 {
		t.Fatalf("GET /v1/tokens with admin.token = %d %s; want 200", r.status, r.body)
	}
	fi, err := os.Stat(filepath.Join(dir, "admin.token"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin.token: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}

	// Every admin token deleted: Atlas starts, and says how to make one.
	var tokens sb.TokenList
	a.must("GET", "/v1/tokens", "").decode(t, &tokens)
	a.must("DELETE", "/v1/tokens/"+tokens.Tokens[0].ID, "")
	a.stop()
	var logs bytes.Buffer
	startIn(t, dir, false, func(c *atlas.Config) { c.Logger = slog.New(slog.NewTextHandler(&logs, nil)) })
	if !strings.Contains(logs.String(), "holds no admin token any more") {
		t.Fatalf("log after every admin token was deleted: %s", logs.String())
	}
}

// waitBlocking waits until n blocking queries wait in a.
func (a *testAtlas) waitBlocking(t *testing.T, n int) {
	t.Helper()
	want := fmt.Sprintf("switchboard_atlas_blocking_queries %d\n", n)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if r := a.must("GET", "/metrics", ""); strings.Contains(string(r.body), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %d blocking queries waiting after 20s", n)
		}
	}
}

// TestRevokedAccessEndsTheBlockingQuery: a blocking query is authorized
// when it answers, not only when it starts. A host whose token was
// deleted (say, stolen) must not get the config an operator changes next
// (say, a rotated password) from a query it left waiting; nor a service
// the instances of one its policy no longer lets it call.
func TestRevokedAccessEndsTheBlockingQuery(t *testing.T) {
	a := start(t, false)
	a.newToken(t, `{"name":"other","role":"reader"}`) // so that the list has more than one
	svc := a.newToken(t, `{"name":"identity","role":"service","services":["identity"],"realms":["dev"]}`)
	caller := a.newToken(t, `{"name":"dashboard","role":"service","services":["dashboard"],"realms":["dev"]}`)
	a.must("PUT", "/v1/config/layer?service=identity", `{"db":{"password":"old"}}`)
	a.must("PUT", "/v1/policies/dashboard", `{"may_call":["billing"]}`)
	a.must("PUT", "/v1/instances/billing-1", reg("billing", 6000, ""))
	svcID := a.tokenID(t, "identity")

	cfgIdx := a.doAs(svc, "GET", "/v1/config?service=identity", "").index(t)
	cfgDone := make(chan resp, 1)
	go func() {
		cfgDone <- a.doAs(svc, "GET", fmt.Sprintf("/v1/config?service=identity&index=%d&wait=5m", cfgIdx), "")
	}()
	a.waitBlocking(t, 1)
	a.must("DELETE", "/v1/tokens/"+svcID, "")
	a.must("PUT", "/v1/config/layer?service=identity", `{"db":{"password":"rotated"}}`)
	if r := <-cfgDone; r.status != 401 || strings.Contains(string(r.body), "rotated") {
		t.Errorf("blocking query of a token deleted while it waited = %d %s; want 401", r.status, r.body)
	}

	svcIdx := a.doAs(caller, "GET", "/v1/services/billing", "").index(t)
	svcDone := make(chan resp, 1)
	go func() {
		svcDone <- a.doAs(caller, "GET", fmt.Sprintf("/v1/services/billing?index=%d&wait=5m", svcIdx), "")
	}()
	a.waitBlocking(t, 1)
	a.must("PUT", "/v1/policies/dashboard", `{"may_call":[]}`)
	a.must("PUT", "/v1/instances/billing-2", reg("billing", 6001, ""))
	if r := <-svcDone; r.status != 403 || strings.Contains(string(r.body), "billing-2") {
		t.Errorf("blocking query of a service whose policy was withdrawn while it waited = %d %s; want 403", r.status, r.body)
	}
}

// TestInstancesAServiceMayNotReadAreNotThere: GET /v1/instances/{id} with
// a service token answers for an instance of a service it may not read as
// for one that does not exist. A 403 naming the service and realm told it
// which ids (SERVICE-HOST-PORT: where every service runs) exist, in which
// realm; and a blocking query on one of its own ids that another service
// took over answered with that service's instance.
func TestInstancesAServiceMayNotReadAreNotThere(t *testing.T) {
	a := start(t, false)
	svc := a.newToken(t, `{"name":"identity","role":"service","services":["identity"],"realms":["dev"]}`)
	a.must("PUT", "/v1/instances/payments-host001-5000", reg("payments", 5000, `,"realm":"production"`))
	a.must("PUT", "/v1/instances/payments-host002-5000", reg("payments", 5000, ""))
	unknown := a.doAs(svc, "GET", "/v1/instances/payments-host009-5000", "")
	if unknown.status != 404 {
		t.Fatalf("GET of an unknown id = %d %s; want 404", unknown.status, unknown.body)
	}
	for _, id := range []string{"payments-host001-5000", "payments-host002-5000"} {
		r := a.doAs(svc, "GET", "/v1/instances/"+id, "")
		want := strings.ReplaceAll(string(unknown.body), "payments-host009-5000", id)
		if r.status != 404 || string(r.body) != want {
			t.Errorf("GET /v1/instances/%s = %d %s; want as for an unknown id: 404 %s", id, r.status, r.body, want)
		}
	}

	a.must("PUT", "/v1/instances/shared-1", reg("identity", 5001, ""))
	idx := a.doAs(svc, "GET", "/v1/instances/shared-1", "").index(t)
	done := make(chan resp, 1)
	go func() {
		done <- a.doAs(svc, "GET", fmt.Sprintf("/v1/instances/shared-1?index=%d&wait=5m", idx), "")
	}()
	a.waitBlocking(t, 1)
	a.must("PUT", "/v1/instances/shared-1", reg("payments", 5001, `,"meta":{"secret":"topology"}`))
	if r := <-done; r.status != 404 || strings.Contains(string(r.body), "topology") {
		t.Errorf("blocking query on an id another service took over = %d %s; want 404", r.status, r.body)
	}
}

// TestAServiceMayNotTakeOverADrainedId: an operator's switch outlives its
// instance's lease, so that an instance drained for maintenance comes
// back drained. Another service's token must not take the id over while
// it is gone (registering it as its own, then deleting or enabling it)
// and so clear the switch: the instance would come back in rotation in
// the middle of its maintenance.
func TestAServiceMayNotTakeOverADrainedId(t *testing.T) {
	a := start(t, false)
	mallory := a.newToken(t, `{"name":"mallory","role":"service","services":["mallory"],"realms":["dev"]}`)
	billing := a.newToken(t, `{"name":"billing","role":"service","services":["billing"],"realms":["dev"]}`)
	a.must("PUT", "/v1/instances/billing-host1-6000", reg("billing", 6000, `,"ttl":"1s"`))
	a.must("PUT", "/v1/instances/billing-host1-6000/enabled", `{"enabled":false,"reason":"maintenance"}`)
	for deadline := time.Now().Add(20 * time.Second); a.do("GET", "/v1/instances/billing-host1-6000", "").status != 404; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the instance did not expire within 20s of its 1s lease")
		}
	}
	if r := a.doAs(mallory, "PUT", "/v1/instances/billing-host1-6000", reg("mallory", 6000, "")); r.status != 403 {
		t.Errorf("another service registers a drained id = %d %s; want 403", r.status, r.body)
	}
	a.doAs(mallory, "PUT", "/v1/instances/billing-host1-6000/enabled", `{"enabled":true}`)
	a.doAs(mallory, "DELETE", "/v1/instances/billing-host1-6000", "")
	// The instance comes back drained, registered with its own token.
	var in sb.Instance
	r := a.doAs(billing, "PUT", "/v1/instances/billing-host1-6000", reg("billing", 6000, ""))
	r.decode(t, &in)
	if r.status != 200 || in.Enabled || in.DisabledReason != "maintenance" {
		t.Fatalf("the drained instance came back = %d %s; want 200, disabled for maintenance", r.status, r.body)
	}
}

// The admin token's secret reaches the disk before the store holds the
// token: a start that stopped between the two (the store written, the file
// not yet in place) leaves admin.token.new, which the next start puts in
// place. (The store was written first, and a crash or a failed file write
// then left an admin token whose secret nobody had.)
func TestAdminTokenOfAnInterruptedFirstStartIsKept(t *testing.T) {
	dir := t.TempDir()
	first := startIn(t, dir, false)
	secret := first.token
	first.stop()
	path := filepath.Join(dir, "admin.token")
	if err := os.Rename(path, path+".new"); err != nil {
		t.Fatal(err)
	}
	a := startIn(t, dir, false)
	if a.token != secret {
		t.Fatalf("admin.token after the interrupted start holds %q; want the token the store holds", a.token)
	}
	if r := a.do("GET", "/v1/tokens", ""); r.status != 200 {
		t.Fatalf("GET /v1/tokens with it = %d %s; want 200", r.status, r.body)
	}
	if _, err := os.Stat(path + ".new"); !os.IsNotExist(err) {
		t.Fatalf("admin.token.new is still there: %v", err)
	}
}

// unanswered is a store whose write of the bootstrap key is made but
// answered as failed, as an etcd write whose deadline ran out may be.
type unanswered struct{ atlas.Store }

func (u unanswered) Txn(ctx context.Context, ops []atlas.Op) (uint64, error) {
	i, err := u.Store.Txn(ctx, ops)
	if err == nil && ops[0].Key == "m/bootstrap" {
		return 0, fmt.Errorf("%w: deadline exceeded", atlas.ErrUnavailable)
	}
	return i, err
}

// A first start whose write of the admin token failed to answer, though it
// was made, keeps admin.token.new: the next start finds the token in the
// store and puts the file in place, rather than leave an admin token whose
// secret nobody has.
func TestAdminTokenOfAnUnansweredBootstrapWriteIsKept(t *testing.T) {
	dir := t.TempDir()
	st, err := boltstore.Open(boltstore.Config{Path: filepath.Join(dir, "atlas.db")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := atlas.New(atlas.Config{Store: unanswered{st}, DataDir: dir}); err == nil {
		t.Fatal("Atlas started though its bootstrap write failed")
	}
	st.Close()
	a := startIn(t, dir, false)
	if r := a.do("GET", "/v1/tokens", ""); r.status != 200 {
		t.Fatalf("GET /v1/tokens with admin.token after the unanswered write = %d %s; want 200", r.status, r.body)
	}
}

// The enabled switch is the operator's (the SPEC): a service token could
// clear one an operator set, or deregister the instance (which cleared it
// too) and register it again, back in rotation. It may set a switch, and
// clear one a service token set (a sidecar's drain); an operator's stays.
func TestAServiceTokenKeepsAnOperatorsSwitch(t *testing.T) {
	a := start(t, false)
	svc := a.newToken(t, `{"name":"identity","role":"service","services":["identity"],"realms":["dev"]}`)
	register := func() {
		t.Helper()
		if r := a.doAs(svc, "PUT", "/v1/instances/identity-1", reg("identity", 5000, "")); r.status != 200 {
			t.Fatalf("register = %d %s", r.status, r.body)
		}
	}
	state := func() sb.Instance {
		t.Helper()
		var in sb.Instance
		a.must("GET", "/v1/instances/identity-1", "").decode(t, &in)
		return in
	}
	register()
	// Its own drain, cleared by itself.
	if r := a.doAs(svc, "PUT", "/v1/instances/identity-1/enabled", `{"enabled":false,"reason":"sidecar on h1 is shutting down"}`); r.status != 200 {
		t.Fatalf("a service token's drain = %d %s", r.status, r.body)
	}
	if r := a.doAs(svc, "PUT", "/v1/instances/identity-1/enabled", `{"enabled":true}`); r.status != 200 || !state().Enabled {
		t.Fatalf("a service token clearing its own drain = %d %s", r.status, r.body)
	}
	// An operator's.
	a.must("PUT", "/v1/instances/identity-1/enabled", `{"enabled":false,"reason":"disk failing"}`)
	if r := a.doAs(svc, "PUT", "/v1/instances/identity-1/enabled", `{"enabled":true}`); r.status != 403 || !strings.Contains(string(r.body), "disabled by an operator") {
		t.Fatalf("a service token clearing an operator's switch = %d %s; want 403", r.status, r.body)
	}
	if r := a.doAs(svc, "PUT", "/v1/instances/identity-1/enabled", `{"enabled":false,"reason":"sidecar on h1 is shutting down"}`); r.status != 200 {
		t.Fatalf("a service token's drain over an operator's switch = %d %s", r.status, r.body)
	}
	if in := state(); in.Enabled || in.DisabledReason != "disk failing" {
		t.Fatalf("after the service token's drain: %+v; want the operator's reason", in)
	}
	if r := a.doAs(svc, "DELETE", "/v1/instances/identity-1", ""); r.status != 200 {
		t.Fatalf("deregister = %d %s", r.status, r.body)
	}
	register()
	if in := state(); in.Enabled || in.DisabledReason != "disk failing" {
		t.Fatalf("deregistered and registered again by the service: %+v; want still disabled for the disk", in)
	}
	// The operator clears it.
	a.must("PUT", "/v1/instances/identity-1/enabled", `{"enabled":true}`)
	if !state().Enabled {
		t.Fatal("the operator's clear did not take")
	}
}

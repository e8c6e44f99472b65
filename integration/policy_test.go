package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLeastAuthority: Atlas with auth on; a host whose token is bound to
// service web may call what web's policy allows, and gets 403 naming both
// services for anything else.
func TestLeastAuthority(t *testing.T) {
	dir := t.TempDir()
	a := startAtlas(t, dir)
	admin := adminToken(t, dir)
	as := func(tok, method, path, body string) (int, []byte) {
		st, b, err := callAs(context.Background(), tok, method, a.url+path, body)
		if err != nil {
			t.Fatal(err)
		}
		return st, b
	}
	if st, _ := as("", "GET", "/v1/services", ""); st != 401 {
		t.Fatalf("no token: %d; want 401", st)
	}
	p1, p2 := startPy(t, "billing", freePort(t)), startPy(t, "secrets", freePort(t))
	for _, r := range []struct {
		id   string
		port int
	}{{"billing-1", p1.port}, {"secrets-1", p2.port}} {
		svc, _, _ := strings.Cut(r.id, "-")
		if st, b := as(admin, "PUT", "/v1/instances/"+r.id, fmt.Sprintf(`{"service":%q,"address":"127.0.0.1","port":%d,"ttl":"1h"}`, svc, r.port)); st != 200 {
			t.Fatalf("register %s: %d %s", r.id, st, b)
		}
	}
	if st, b := as(admin, "PUT", "/v1/policies/web?realm=dev", `{"may_call":["billing"]}`); st != 200 {
		t.Fatalf("policy: %d %s", st, b)
	}
	st, b := as(admin, "POST", "/v1/tokens", `{"name":"host001","role":"service","services":["web"],"realms":["dev"]}`)
	if st != 200 {
		t.Fatalf("token: %d %s", st, b)
	}
	var tok struct{ Secret string }
	json.Unmarshal(b, &tok)
	tokFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokFile, []byte(tok.Secret+"\n"), 0o600)
	web := startPy(t, "web", freePort(t))
	s := startSidecar(t, fmt.Sprintf("atlas: %s\ntoken_file: %s\nhost: host001\nadvertise: 127.0.0.1\nservices:\n  - {name: web, port: %d, check: {http: /who, interval: 300ms}}\n", a.url, tokFile, web.port))
	var status int
	var body string
	waitFor(t, "billing reachable", 20*time.Second, func() bool {
		status, body, _ = s.get("billing", "/who")
		return status == 200
	})
	if body != "billing" {
		t.Fatalf("billing answered %q", body)
	}
	status, body, _ = s.get("secrets", "/who")
	if status != 403 || !strings.Contains(body, "service web may not call service secrets in realm dev") {
		t.Fatalf("secrets = %d %s; want 403 naming both services", status, body)
	}
	// The host's token registered web: its own service.
	waitFor(t, "web registered with the host's token", 20*time.Second, func() bool {
		st, _ := as(admin, "GET", "/v1/instances/web-host001-"+fmt.Sprint(web.port), "")
		return st == 200
	})
}

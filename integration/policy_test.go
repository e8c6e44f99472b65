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
	h := startWebHost(t, "")
	if st, _ := h.as("", "GET", "/v1/services", ""); st != 401 {
		t.Fatalf("no token: %d; want 401", st)
	}
	s := startSidecar(t, h.yaml)
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
		st, _ := h.as(h.admin, "GET", "/v1/instances/web-host001-"+fmt.Sprint(h.web.port), "")
		return st == 200
	})
}

// TestWithdrawnPolicyAndDeletedTokenStopRouting: a policy withdrawn stays
// withdrawn when the sidecar restarts while Atlas is down (the saved
// routes kept the service's instances, and the restarted sidecar routed
// to them again); a deleted token stops the host's calls and fails its
// health check (a 401 was taken for Atlas being down: routing went on).
func TestWithdrawnPolicyAndDeletedTokenStopRouting(t *testing.T) {
	h := startWebHost(t, t.TempDir())
	s := startSidecar(t, h.yaml)
	waitFor(t, "billing reachable", 20*time.Second, func() bool {
		st, _, _ := s.get("billing", "/who")
		return st == 200
	})
	if st, b := h.as(h.admin, "PUT", "/v1/policies/web?realm=dev", `{"may_call":[]}`); st != 200 {
		t.Fatalf("policy: %d %s", st, b)
	}
	waitFor(t, "billing refused", 20*time.Second, func() bool {
		st, _, _ := s.get("billing", "/who")
		return st == 403
	})
	time.Sleep(1500 * time.Millisecond) // the state file is written at most once a second
	h.atlas.kill()
	if err := s.stop(); err != nil {
		t.Fatalf("sidecar stop: %v", err)
	}
	s = startSidecarAt(t, h.yaml, s.listen, s.admin)
	for range 2 { // each waits out the sidecar's 5 s for a first answer of Atlas
		if st, body, _ := s.get("billing", "/who"); st == 200 {
			t.Fatalf("a sidecar restarted while Atlas is down routed to billing, whose policy was withdrawn: %d %s", st, body)
		}
	}

	h.atlas = startAtlas(t, h.dir, "--listen", strings.TrimPrefix(h.atlas.url, "http://"))
	if st, b := h.as(h.admin, "PUT", "/v1/policies/web?realm=dev", `{"may_call":["billing"]}`); st != 200 {
		t.Fatalf("policy: %d %s", st, b)
	}
	waitFor(t, "billing reachable again", 30*time.Second, func() bool {
		st, _, _ := s.get("billing", "/who")
		return st == 200
	})
	if st, b := h.as(h.admin, "DELETE", "/v1/tokens/"+h.tokenID, ""); st != 200 {
		t.Fatalf("token delete: %d %s", st, b)
	}
	waitFor(t, "billing refused for the deleted token", 20*time.Second, func() bool {
		st, body, _ := s.get("billing", "/who")
		return st == 403 && strings.Contains(body, "does not take this sidecar's token")
	})
	st, body, err := call(context.Background(), "GET", "http://"+s.admin+"/healthcheck", "")
	if err != nil || st != 503 || !strings.Contains(string(body), "does not take this sidecar's token") {
		t.Fatalf("healthcheck with a deleted token: %d %s %v; want 503 saying Atlas does not take the token", st, body, err)
	}
}

// webHost is an Atlas with auth on, instances of billing and secrets, a
// policy that lets web call billing, and the yaml of a sidecar for a host
// of web with a token bound to web.
type webHost struct {
	atlas         *proc
	dir, admin    string
	tokenID, yaml string
	web           *pyServer
	as            func(tok, method, path, body string) (int, []byte)
}

// startWebHost starts it; stateDir, when set, is the sidecar's state_dir.
func startWebHost(t *testing.T, stateDir string) *webHost {
	h := &webHost{dir: t.TempDir()}
	h.atlas = startAtlas(t, h.dir)
	h.admin = adminToken(t, h.dir)
	h.as = func(tok, method, path, body string) (int, []byte) {
		st, b, err := callAs(context.Background(), tok, method, h.atlas.url+path, body)
		if err != nil {
			t.Fatal(err)
		}
		return st, b
	}
	p1, p2 := startPy(t, "billing"), startPy(t, "secrets")
	for _, r := range []struct {
		id   string
		port int
	}{{"billing-1", p1.port}, {"secrets-1", p2.port}} {
		svc, _, _ := strings.Cut(r.id, "-")
		if st, b := h.as(h.admin, "PUT", "/v1/instances/"+r.id, fmt.Sprintf(`{"service":%q,"address":"127.0.0.1","port":%d,"ttl":"1h"}`, svc, r.port)); st != 200 {
			t.Fatalf("register %s: %d %s", r.id, st, b)
		}
	}
	if st, b := h.as(h.admin, "PUT", "/v1/policies/web?realm=dev", `{"may_call":["billing"]}`); st != 200 {
		t.Fatalf("policy: %d %s", st, b)
	}
	st, b := h.as(h.admin, "POST", "/v1/tokens", `{"name":"host001","role":"service","services":["web"],"realms":["dev"]}`)
	if st != 200 {
		t.Fatalf("token: %d %s", st, b)
	}
	var tok struct{ ID, Secret string }
	json.Unmarshal(b, &tok)
	h.tokenID = tok.ID
	tokFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokFile, []byte(tok.Secret+"\n"), 0o600)
	h.web = startPy(t, "web")
	h.yaml = fmt.Sprintf("atlas: %s\ntoken_file: %s\nhost: host001\nadvertise: 127.0.0.1\nservices:\n  - {name: web, port: %d, check: {http: /who, interval: 300ms}}\n", h.atlas.url, tokFile, h.web.port)
	if stateDir != "" {
		h.yaml += "state_dir: " + stateDir + "\n"
	}
	return h
}

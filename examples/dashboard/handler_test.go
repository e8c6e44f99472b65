package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/switchboard-go/switchboard/client"
)

func TestHello(t *testing.T) {
	rec := httptest.NewRecorder()
	hello(func() string { return "hi" }).ServeHTTP(rec, httptest.NewRequest("GET", "/hello", nil))
	var got map[string]string
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if rec.Code != 200 || got["service"] != "dashboard" || got["message"] != "hi" {
		t.Fatalf("GET /hello = %d %v", rec.Code, got)
	}
}

// TestOverviewCallsIdentityByName: the dashboard asks for
// service://identity/teams; a stand-in sidecar checks that it names the
// service and answers for it.
func TestOverviewCallsIdentityByName(t *testing.T) {
	sidecar := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Switchboard-Service") != "identity" || r.URL.Path != "/teams" {
			http.Error(w, "wrong call", 400)
			return
		}
		io.WriteString(w, `{"instance":"identity-x","teams":[{"id":"t1"}]}`)
	}))
	defer sidecar.Close()
	c := &http.Client{Transport: &client.Transport{Sidecar: strings.TrimPrefix(sidecar.URL, "http://")}}
	rec := httptest.NewRecorder()
	overview(c).ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"from":"identity-x"`) {
		t.Fatalf("GET / = %d %s", rec.Code, rec.Body)
	}
}

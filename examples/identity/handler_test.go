package main

import (
	"encoding/json"
	"net/http/httptest"
	"testing"
)

func TestHello(t *testing.T) {
	rec := httptest.NewRecorder()
	hello(func() string { return "hi" }).ServeHTTP(rec, httptest.NewRequest("GET", "/hello", nil))
	var got map[string]string
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if rec.Code != 200 || got["service"] != "identity" || got["message"] != "hi" {
		t.Fatalf("GET /hello = %d %v", rec.Code, got)
	}
}

func TestTeams(t *testing.T) {
	rec := httptest.NewRecorder()
	listTeams("identity-test-1").ServeHTTP(rec, httptest.NewRequest("GET", "/teams", nil))
	var got struct {
		Instance string
		Teams    []Team
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if rec.Code != 200 || got.Instance != "identity-test-1" || len(got.Teams) != 2 {
		t.Fatalf("GET /teams = %d %+v", rec.Code, got)
	}
}

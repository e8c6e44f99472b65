package main

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/switchboard-go/switchboard/service"
)

// Team is one team of the identity service.
type Team struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

var teams = []Team{{"t1", "core"}, {"t2", "platform"}}

// routes registers the service's endpoints and checks.
func routes(svc *service.Service) {
	svc.Check("teams", func(ctx context.Context) (string, error) { return "2 teams loaded", nil })
	// The greeting is read at each request: a change in Atlas applies at once.
	svc.Handle("GET /hello", hello(func() string { return svc.Config().String("greeting", "hello") }))
	svc.Handle("GET /teams", listTeams(svc.Instance))
}

// hello answers with a greeting from the service.
func hello(greeting func() string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]string{"service": "identity", "message": greeting()})
	})
}

// listTeams answers with every team, and which instance answered.
func listTeams(instance string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"instance": instance, "teams": teams})
	})
}

package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"

	"github.com/switchboard-go/switchboard/service"
)

// routes registers the service's endpoints and checks.
func routes(svc *service.Service) {
	svc.Check("self", func(ctx context.Context) (string, error) { return "dashboard ok", nil })
	// The greeting is read at each request: a change in Atlas applies at once.
	svc.Handle("GET /hello", hello(func() string { return svc.Config().String("greeting", "hello") }))
	svc.Handle("GET /{$}", overview(svc.Client()))
}

// hello answers with a greeting from the service.
func hello(greeting func() string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]string{"service": "dashboard", "message": greeting()})
	})
}

// overview shows the teams, asked of the identity service by name: it
// never knows where identity runs, the sidecar does.
func overview(c *http.Client) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, _ := http.NewRequestWithContext(r.Context(), http.MethodGet, "service://identity/teams", nil)
		res, err := c.Do(req)
		if err != nil {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadGateway)
			json.NewEncoder(w).Encode(map[string]string{"error": "identity: " + err.Error()})
			return
		}
		defer res.Body.Close()
		var teams struct {
			Instance string            `json:"instance"`
			Teams    []json.RawMessage `json:"teams"`
		}
		body, _ := io.ReadAll(io.LimitReader(res.Body, 1<<20))
		if res.StatusCode != http.StatusOK || json.Unmarshal(body, &teams) != nil {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadGateway)
			json.NewEncoder(w).Encode(map[string]any{"error": "identity answered " + res.Status, "body": string(body)})
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"dashboard": "teams", "from": teams.Instance, "teams": teams.Teams})
	})
}

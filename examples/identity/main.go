// Command identity is the identity service of Runscope's talk, on the
// smart service kit: it knows the teams. Run it with a sidecar announcing
// it (see sidecar.yaml) and call it as service://identity/teams.
package main

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/switchboard-go/switchboard/service"
)

type team struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

var teams = []team{{"t1", "core"}, {"t2", "platform"}}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	svc := service.New("identity")
	svc.Check("teams", func(ctx context.Context) (string, error) { return "2 teams loaded", nil })
	svc.HandleFunc("GET /teams", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"instance": svc.Instance, "teams": teams})
	})
	if err := svc.Run(ctx); err != nil {
		svc.Logger().Error("identity stopped", "err", err)
		os.Exit(1)
	}
}

// Command dashboard is a Switchboard smart service: it serves its API on
// 127.0.0.1:5101, with /healthcheck, /livez, /readyz, /environment and
// /metrics, and finds the services it calls through the local sidecar
// (service://NAME/path).
package main

import (
	"context"
	"os"

	"github.com/switchboard-go/switchboard/service"
)

func main() {
	svc := service.New("dashboard")
	routes(svc)
	// Run serves until SIGTERM or SIGINT, then drains (a second signal
	// ends the process at once).
	if err := svc.Run(context.Background()); err != nil {
		svc.Logger().Error("dashboard stopped", "err", err)
		os.Exit(1)
	}
}

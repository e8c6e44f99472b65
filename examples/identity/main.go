// Command identity is a Switchboard smart service: it serves its API on
// 127.0.0.1:5100, with /healthcheck, /livez, /readyz, /environment and
// /metrics, and finds the services it calls through the local sidecar
// (service://NAME/path).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/switchboard-go/switchboard/service"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	svc := service.New("identity")
	routes(svc)
	if err := svc.Run(ctx); err != nil { // serves until SIGTERM, then drains
		svc.Logger().Error("identity stopped", "err", err)
		os.Exit(1)
	}
}

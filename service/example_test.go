package service_test

import (
	"context"
	"fmt"
	"net/http"
	"os"

	"github.com/switchboard-go/switchboard/service"
)

func Example() {
	svc := service.New("identity") // name, realm, config, logger from env + Atlas
	svc.Check("redis", func(ctx context.Context) (string, error) { return "redis ok", nil })
	svc.HandleFunc("GET /teams", func(w http.ResponseWriter, r *http.Request) {
		// Calls to other services name the service, through the sidecar.
		res, err := svc.Client().Get("service://billing/plans")
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		res.Body.Close()
		fmt.Fprintln(w, `["core", "platform"]`)
	})
	if err := svc.Run(context.Background()); err != nil { // serves until SIGTERM or SIGINT, then drains
		svc.Logger().Error("identity stopped", "err", err)
		os.Exit(1)
	}
}

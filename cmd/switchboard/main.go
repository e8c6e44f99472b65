// Command switchboard is Switchboard in one binary: Atlas, the sidecar, the
// service generator and the API client commands. See the README.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/switchboard-go/switchboard/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cli.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(cli.ExitCode(err, os.Stderr))
}

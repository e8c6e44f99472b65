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
	// The first signal starts a graceful stop (a sidecar's drain may take
	// drain_timeout); once it has, a second one ends the process at once,
	// as a signal does when nothing catches it (a second Ctrl-C).
	context.AfterFunc(ctx, stop)
	err := cli.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(cli.ExitCode(err, os.Stderr))
}

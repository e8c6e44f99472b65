package health_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/switchboard-go/switchboard/health"
)

func ExampleChecker() {
	c := health.New() // Runscope's cache times: 27 s after a pass, 9 s after a failure
	c.Add("redis", func(ctx context.Context) (string, error) { return "redis ok", nil })
	c.Add("billing", func(ctx context.Context) (string, error) { return "", errors.New("billing: 503") })
	rep := c.Run(context.Background())
	fmt.Println(rep.Status)
	for _, r := range rep.Results {
		fmt.Println(r.Checker, r.Passed, r.Output)
	}
	// Output:
	// failure
	// redis true redis ok
	// billing false billing: 503
}

package client_test

import (
	"fmt"
	"io"

	"github.com/switchboard-go/switchboard/client"
)

// A call to another service names the service, never its address: the
// local sidecar (SWITCHBOARD_SIDECAR, default 127.0.0.1:4000) routes it to
// a healthy instance.
func ExampleNew() {
	c := client.New()
	res, err := c.Get("service://identity/teams?x=1")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	fmt.Println(res.Status, len(body))
}

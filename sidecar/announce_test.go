package sidecar

import (
	"context"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/atlas/atlastest"
	"github.com/switchboard-go/switchboard/client"
	"github.com/switchboard-go/switchboard/internal/testnet"
)

// A check that hangs until its (long) timeout delays no heartbeat: both
// the hanging service and its neighbour in the same interval group
// register, and their one-second leases are kept for several seconds,
// the hanging one as critical, "not checked yet".
func TestAHangingCheckDelaysNoHeartbeat(t *testing.T) {
	a := atlastest.Start(t, true)
	healthy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(healthy.Close)
	check := CheckConfig{Interval: Duration(100 * time.Millisecond), Timeout: Duration(time.Minute), Rise: 1}
	startSweeping(t, Config{Atlas: StringList{a.URL}, Host: "h1", Services: []ServiceConfig{
		{Name: "stuck", Port: portOf(testnet.Hung(t)), Check: check},
		{Name: "fine", Port: portOf(healthy.Listener.Addr().String()), Check: check},
	}})

	c := a.Client()
	want := map[string]sb.Status{"stuck": sb.Critical, "fine": sb.Passing}
	statuses := func() map[string]sb.Status {
		got := map[string]sb.Status{}
		for name := range want {
			list, err := c.Service(context.Background(), "", name, client.ServiceOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for _, in := range list.Instances {
				got[name] = in.Status
			}
		}
		return got
	}
	deadline := time.Now().Add(20 * time.Second)
	for !maps.Equal(statuses(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("instances never registered as %v: %v", want, statuses())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Three leases later, both are still there: their heartbeats went on.
	time.Sleep(3 * time.Second)
	if got := statuses(); !maps.Equal(got, want) {
		t.Fatalf("after three leases: %v, want %v", got, want)
	}
}

// portOf returns the port of a host:port address.
func portOf(addr string) int {
	_, port, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(port)
	return n
}

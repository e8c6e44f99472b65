package proxy

import (
	"net"
	"strconv"
	"testing"
	"time"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/balance"
	"github.com/switchboard-go/switchboard/internal/testnet"
)

// A retry that reaches an instance late in its caller's timeout gives that
// instance only what is left: it is not hung for having had 300 ms.
func TestRetryLateInACallerTimeoutEjectsNoInstance(t *testing.T) {
	f := newFrontend(t) // first: its cleanup, which waits for the held call, comes last
	hungURL, held := testnet.HeldHTTP(t)
	slowURL := testnet.DropsAfter(t, 900*time.Millisecond)
	inst := func(id, url string) *sb.Instance {
		host, port, _ := net.SplitHostPort(url[len("http://"):])
		p, _ := strconv.Atoi(port)
		return &sb.Instance{ID: id, Address: host, Port: p, Status: sb.Passing, Enabled: true}
	}
	pool := f.table.Get("a")
	pool.Update([]*sb.Instance{inst("hung", hungURL)}, 1)
	// One call held at the hung instance, so that every call picks the
	// slow one first.
	go f.do("GET", "a", "/held", "")
	<-held
	pool.Update([]*sb.Instance{inst("slow", slowURL), inst("hung", hungURL)}, 2)
	for range balance.EjectAfter {
		f.do("GET", "a", "/ok", "") // slow answers: its failures start over
		if res, body := f.do("GET", "a", "/", "", TimeoutHeader, "1200ms"); res.StatusCode != 504 {
			t.Fatalf("= %d %s; want 504", res.StatusCode, body)
		}
	}
	for _, e := range pool.Endpoints() {
		if ej, _ := e.Ejected(time.Now()); ej {
			t.Fatalf("instance %s ejected: each call left it about 300 ms of a 1.2 s timeout", e.ID)
		}
	}
}

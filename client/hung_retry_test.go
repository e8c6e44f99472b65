package client_test

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/balance"
	"github.com/switchboard-go/switchboard/client"
	"github.com/switchboard-go/switchboard/internal/testnet"
)

// A retry that reaches an instance late in its caller's deadline gives that
// instance only what is left: it is not hung for having had 300 ms.
func TestDirectRetryLateInACallerDeadlineEjectsNoInstance(t *testing.T) {
	hungURL, held := testnet.HeldHTTP(t)
	slowURL := testnet.DropsAfter(t, 900*time.Millisecond)
	a := directSetup(t, hungURL)
	tr := &client.Transport{Sidecar: "none", Atlas: a}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	// One call held at the hung instance, so that every call picks the
	// slow one first.
	go func() {
		if res, err := c.Get("service://files/held"); err == nil {
			res.Body.Close()
		}
	}()
	<-held
	host, port, _ := net.SplitHostPort(strings.TrimPrefix(slowURL, "http://"))
	p, _ := strconv.Atoi(port)
	if _, err := a.Register(t.Context(), "files-slow", sb.Registration{Service: "files", Address: host, Port: p}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; {
		req, _ := http.NewRequest("GET", "service://files/ok", nil)
		req.Header.Set(client.TimeoutHeader, "100ms") // too short to count against the hung one
		res, err := c.Do(req)
		if err == nil {
			res.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the slow instance never answered: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for range balance.EjectAfter {
		if res, err := c.Get("service://files/ok"); err == nil { // its failures start over
			res.Body.Close()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 1200*time.Millisecond)
		req, _ := http.NewRequestWithContext(ctx, "GET", "service://files/x", nil)
		if res, err := c.Do(req); err == nil {
			res.Body.Close()
			t.Fatalf("= %d; want no answer", res.StatusCode)
		}
		cancel()
	}
	if n := tr.Ejected("files"); n != 0 {
		t.Fatalf("%d instances ejected: each call left the hung one about 300 ms of a 1.2 s deadline", n)
	}
}

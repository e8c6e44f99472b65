package client_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/atlas/atlastest"
	"github.com/switchboard-go/switchboard/client"
	"github.com/switchboard-go/switchboard/internal/testnet"
)

// A call whose first replica hangs reaches the second within the caller's
// deadline: each replica gets a share of it.
func TestCallMovesOnFromAHungReplica(t *testing.T) {
	a := atlastest.Start(t, true)
	c := &client.Atlas{URLs: []string{"http://" + testnet.Hung(t), a.URL}}
	for range 2 { // the second starts at the replica that answered
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := c.Register(ctx, "web-1", sb.Registration{Service: "web", Address: "127.0.0.1", Port: 5001})
		cancel()
		if err != nil {
			t.Fatalf("register with the first replica hung: %v", err)
		}
	}
}

// The event stream moves on from a replica that takes the connection and
// never answers, and ends a stream that goes quiet (Atlas sends a comment
// every 15 s), so that Follow fails over to the next replica.
func TestWatchMovesOnFromHungAndQuietReplicas(t *testing.T) {
	defer client.SetTimeouts(10*time.Second, 300*time.Millisecond, 300*time.Millisecond)()
	// Answers 200 with the stream's headers, then never sends anything.
	quiet := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go quiet.Serve(ln)
	defer quiet.Close()
	quietURL := "http://" + ln.Addr().String()

	c := &client.Atlas{URLs: []string{quietURL}}
	start := time.Now()
	_, err = c.Watch(context.Background(), "dev", []string{"web"}, "", func(client.Event) error { return nil })
	if !errors.Is(err, &sb.Error{Code: sb.EUnavailable}) && !strings.Contains(err.Error(), "sent nothing") {
		t.Fatalf("a stream that went quiet ended with %v; want unavailable, sent nothing", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the quiet stream ended after %v", took)
	}

	a := atlastest.Start(t, true)
	if _, err := a.Client().Register(context.Background(), "web-1", sb.Registration{Service: "web", Address: "127.0.0.1", Port: 5001}); err != nil {
		t.Fatal(err)
	}
	c = &client.Atlas{URLs: []string{"http://" + testnet.Hung(t), quietURL, a.URL}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	got := make(chan int, 1)
	go c.Follow(ctx, "dev", []string{"web"}, func(ev client.Event) {
		select {
		case got <- len(ev.Service.Instances):
		default:
		}
	}, func(error, time.Duration) {})
	select {
	case n := <-got:
		if n != 1 {
			t.Fatalf("the event from the live replica has %d instances; want 1", n)
		}
	case <-ctx.Done():
		t.Fatal("Follow did not reach the live replica past a hung and a quiet one within 20s")
	}
}

package client_test

import (
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
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

// A POST that reached a replica that then did not answer was sent to the
// next replica too: a token created twice, one secret never shown. It
// fails, and the next call starts at the next replica.
func TestPostIsNotSentToASecondReplica(t *testing.T) {
	a := atlastest.Start(t, true)
	c := &client.Atlas{URLs: []string{"http://" + testnet.Hung(t), a.URL}}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := c.CreateToken(ctx, sb.TokenRequest{Name: "oncall", Role: sb.RoleReader}); err == nil {
		t.Fatal("CreateToken through a replica that never answered succeeded; the second replica did it")
	}
	if l, err := c.Tokens(context.Background()); err != nil || len(l) != 0 {
		t.Fatalf("tokens on the second replica = %v, %v; want none", l, err)
	}
	if _, err := c.CreateToken(context.Background(), sb.TokenRequest{Name: "oncall", Role: sb.RoleReader}); err != nil {
		t.Fatalf("the next CreateToken, which starts at the replica that answers: %v", err)
	}
}

// A DELETE that a replica carried out and then failed to answer (its
// gateway answered 502) went on to the next replica, which found nothing to
// delete: the deregistration that worked was reported not_found.
func TestDeleteCarriedOutByAFailedReplicaSucceeds(t *testing.T) {
	a := atlastest.Start(t, true)
	ctx := context.Background()
	direct := &client.Atlas{URLs: []string{a.URL}}
	if _, err := direct.Register(ctx, "web-1", sb.Registration{Service: "web", Address: "127.0.0.1", Port: 5001}); err != nil {
		t.Fatal(err)
	}
	c := &client.Atlas{URLs: []string{lossyGateway(t, a.URL), a.URL}}
	if err := c.Deregister(ctx, "web-1"); err != nil {
		t.Fatalf("Deregister through a replica that did it and lost the answer: %v; want nil", err)
	}
	if _, err := direct.Instance(ctx, "web-1"); sb.ErrorCode(err) != sb.ENotFound {
		t.Fatalf("the instance after Deregister: %v; want not_found", err)
	}
	if err := direct.Deregister(ctx, "web-1"); sb.ErrorCode(err) != sb.ENotFound {
		t.Fatalf("Deregister of an unknown id with nothing ambiguous: %v; want not_found", err)
	}
}

// lossyGateway returns the URL of a gateway to the Atlas at target that
// passes every call on and loses every answer: it answers 502.
func lossyGateway(t *testing.T, target string) string {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	gw := httputil.NewSingleHostReverseProxy(u)
	gw.ModifyResponse = func(*http.Response) error { return errors.New("the answer is lost") }
	gw.ErrorLog = log.New(io.Discard, "", 0)
	gateway := httptest.NewServer(gw)
	t.Cleanup(gateway.Close)
	return gateway.URL
}

// A POST that a replica carried out before its gateway answered 502 was
// sent to the next replica too: two tokens made, one secret never shown.
func TestPostAnswered502IsNotSentToASecondReplica(t *testing.T) {
	a := atlastest.Start(t, true)
	c := &client.Atlas{URLs: []string{lossyGateway(t, a.URL), a.URL}}
	if _, err := c.CreateToken(context.Background(), sb.TokenRequest{Name: "oncall", Role: sb.RoleReader}); err == nil {
		t.Fatal("CreateToken through a replica that lost its answer succeeded; the second replica made one too")
	}
	direct := &client.Atlas{URLs: []string{a.URL}}
	if l, err := direct.Tokens(context.Background()); err != nil || len(l) != 1 {
		t.Fatalf("tokens = %v, %v; want the one the first replica made", l, err)
	}
}

// A conditional write that a replica carried out before its gateway
// answered 502 went on to the next replica, which refused it (the layer
// had moved past cas, by that very write): a write that worked was
// reported as someone else's change. It succeeds when the layer holds what
// was written, and is still a conflict when it does not.
func TestConditionalWriteCarriedOutByAFailedReplicaSucceeds(t *testing.T) {
	a := atlastest.Start(t, true)
	ctx := context.Background()
	c := &client.Atlas{URLs: []string{lossyGateway(t, a.URL), a.URL}}
	k, zero := sb.LayerKey{Service: "identity"}, uint64(0)
	l, err := c.PutLayer(ctx, k, []byte(`{"greeting": "hi", "n": 1}`), &zero)
	if err != nil {
		t.Fatalf("PutLayer(cas=0) through a replica that saved it and lost the answer: %v; want nil", err)
	}
	if !strings.Contains(string(l.Config), "hi") || l.Index == 0 {
		t.Fatalf("PutLayer answered %+v; want the layer saved", l)
	}
	// Someone else's layer is there: the same write is a conflict.
	if _, err := c.PutLayer(ctx, sb.LayerKey{Service: "identity"}, []byte(`{"greeting": "hello"}`), &zero); sb.ErrorCode(err) != sb.EConflict {
		t.Fatalf("PutLayer(cas=0) of another value over a layer: %v; want conflict", err)
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

// A replica that takes the connection and never answers does not keep
// Propagation from returning when the caller set no deadline: as with one
// replica listed, each gets the wait it was asked for and a margin.
func TestPropagationMovesOnFromAHungReplica(t *testing.T) {
	defer client.SetTimeouts(100*time.Millisecond, time.Second, time.Second)()
	a := atlastest.Start(t, true)
	c := &client.Atlas{URLs: []string{"http://" + testnet.Hung(t), a.URL}}
	done := make(chan error, 1)
	go func() {
		_, err := c.Propagation(context.Background(), "", "identity", 1)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Propagation with one replica hung: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Propagation with one replica hung and no deadline still waits after 20s (10s of wait asked)")
	}
}

// A replica that answers with an error was reached: its streams were not
// counted, so Propagation says so rather than return the other replicas'
// sum as if it were every watcher. Only a replica that cannot be reached
// is left out.
func TestPropagationReportsAReplicaThatRefused(t *testing.T) {
	a := atlastest.Start(t, true)
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusInternalServerError)
		w.Write([]byte(`{"error":{"code":"internal","message":"internal error"}}`))
	}))
	defer bad.Close()
	c := &client.Atlas{URLs: []string{a.URL, bad.URL}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p, err := c.Propagation(ctx, "", "identity", 1)
	if sb.ErrorCode(err) != sb.EInternal {
		t.Fatalf("Propagation = %+v, %v; want the internal error of the replica that answered with it", p, err)
	}
}

// Follow's waits before reconnecting were exactly 100 ms, 200 ms, 400 ms...:
// every sidecar that lost Atlas at the same instant (a restart) came back
// at the same instants, each asking for a snapshot. Each wait is now drawn
// from half to one and a half times its step.
func TestFollowSpreadsItsReconnects(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + ln.Addr().String()
	ln.Close()
	c := &client.Atlas{URLs: []string{refused}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	waits := make(chan time.Duration, 8)
	go c.Follow(ctx, "dev", []string{"web"}, func(client.Event) {}, func(_ error, retryIn time.Duration) {
		select {
		case waits <- retryIn:
		default:
		}
	})
	step, same := 100*time.Millisecond, 0
	for i := range 4 {
		w := <-waits
		if w < step/2 || w >= step*3/2 {
			t.Fatalf("wait %d: %v; want %v to %v", i, w, step/2, step*3/2)
		}
		if w == step {
			same++
		}
		step *= 2
	}
	if same == 4 {
		t.Fatal("every wait was exactly its step: no spread")
	}
}

package sidecar

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	sb "github.com/switchboard-go/switchboard"
)

// checker runs one kind of check against one local service.
type checker interface {
	check(ctx context.Context) (sb.Status, string)
	close()
}

// newChecker returns the checker a CheckConfig asks for, aimed at addr.
// grpcConnectParams makes a gRPC check's connection reconnect at least
// once an interval (gRPC's own backoff grows to two minutes).
func grpcConnectParams(interval time.Duration) grpc.ConnectParams {
	return grpc.ConnectParams{Backoff: backoff.Config{
		BaseDelay:  min(interval, time.Second),
		Multiplier: backoff.DefaultConfig.Multiplier,
		Jitter:     backoff.DefaultConfig.Jitter,
		MaxDelay:   interval,
	}}
}

func newChecker(c CheckConfig, addr string) (checker, error) {
	switch {
	case c.None:
		return noneCheck{}, nil
	case c.TCP:
		return tcpCheck{addr: addr}, nil
	case c.GRPC != nil:
		// gRPC reconnects on its own schedule, backing off up to two
		// minutes, and fails checks at once in between: a service back up
		// would stay critical long after it answers. Reconnecting at least
		// once an interval makes every check a fresh verdict.
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithConnectParams(grpcConnectParams(durOr(c.Interval, 2*time.Second))))
		if err != nil {
			return nil, fmt.Errorf("grpc check of %s: %w", addr, err)
		}
		return &grpcCheck{conn: conn, service: *c.GRPC}, nil
	}
	path := "/healthcheck"
	if c.HTTP != nil {
		path = *c.HTTP
	}
	return &httpCheck{url: "http://" + addr + path, client: &http.Client{
		Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 1, IdleConnTimeout: time.Minute},
		// A check follows no redirect: a 3xx is not healthy.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}, nil
}

type noneCheck struct{}

func (noneCheck) check(context.Context) (sb.Status, string) {
	return sb.Passing, "not checked (check: none)"
}
func (noneCheck) close() {}

type tcpCheck struct{ addr string }

func (t tcpCheck) check(ctx context.Context) (sb.Status, string) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		return sb.Critical, fmt.Sprintf("tcp %s: %v", t.addr, err)
	}
	c.Close()
	return sb.Passing, "tcp " + t.addr + " accepts connections"
}
func (tcpCheck) close() {}

type grpcCheck struct {
	conn    *grpc.ClientConn
	service string
}

func (g *grpcCheck) check(ctx context.Context) (sb.Status, string) {
	res, err := healthpb.NewHealthClient(g.conn).Check(ctx, &healthpb.HealthCheckRequest{Service: g.service})
	if err != nil {
		return sb.Critical, fmt.Sprintf("grpc health %q: %v", g.service, err)
	}
	if res.Status != healthpb.HealthCheckResponse_SERVING {
		return sb.Critical, fmt.Sprintf("grpc health %q: %s", g.service, res.Status)
	}
	return sb.Passing, fmt.Sprintf("grpc health %q: SERVING", g.service)
}
func (g *grpcCheck) close() { g.conn.Close() }

type httpCheck struct {
	url    string
	client *http.Client
}

// check GETs the URL: 2xx is passing, 429 warning, anything else (or no
// answer in time) critical. A Runscope healthcheck JSON body's outputs
// become the output.
func (h *httpCheck) check(ctx context.Context) (sb.Status, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.url, nil)
	if err != nil {
		return sb.Critical, err.Error()
	}
	req.Header.Set("User-Agent", "switchboard-sidecar")
	res, err := h.client.Do(req)
	if err != nil {
		return sb.Critical, fmt.Sprintf("GET %s: %v", h.url, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	if err != nil {
		// The answer started but did not end in time (or broke off): a
		// timeout, whatever the status said.
		return sb.Critical, fmt.Sprintf("GET %s: %s, then reading the body: %v", h.url, res.Status, err)
	}
	out := healthOutput(body)
	if out == "" {
		out = fmt.Sprintf("GET %s: %s", h.url, res.Status)
	}
	switch {
	case res.StatusCode >= 200 && res.StatusCode < 300:
		return sb.Passing, out
	case res.StatusCode == http.StatusTooManyRequests:
		return sb.Warning, out
	}
	return sb.Critical, out
}

func (h *httpCheck) close() { h.client.CloseIdleConnections() }

// healthOutput reads a Runscope-style healthcheck body into one output:
// "checker: output" per result, failures first marked FAIL. Any other body
// gives "".
func healthOutput(body []byte) string {
	var rep struct {
		Status  string `json:"status"`
		Results []struct {
			Checker string          `json:"checker"`
			Output  json.RawMessage `json:"output"`
			Passed  bool            `json:"passed"`
		} `json:"results"`
	}
	if json.Unmarshal(body, &rep) != nil || rep.Status == "" {
		return ""
	}
	// Failures first, so that the 4 KiB Atlas keeps of an output holds
	// them; otherwise the body's order.
	var failed, passed []string
	for _, r := range rep.Results {
		var s string
		if json.Unmarshal(r.Output, &s) != nil {
			s = string(r.Output)
		}
		if r.Passed {
			passed = append(passed, fmt.Sprintf("ok %s: %s", r.Checker, s))
		} else {
			failed = append(failed, fmt.Sprintf("FAIL %s: %s", r.Checker, s))
		}
	}
	lines := append(failed, passed...)
	if len(lines) == 0 {
		return "healthcheck " + rep.Status + " (no checks)"
	}
	return strings.Join(lines, "\n")
}

// riseFall applies rise and fall to check results: a critical instance
// needs Rise good results in a row to come back; a healthy one Fall
// critical results in a row to go critical. Passing and warning switch at
// once.
//
// An instance that flaps (results in and out of critical flapLimit times
// among its last flapWindow checks: a check that depends on a shared
// resource, a service that crashes every minute) needs flapRise times as
// many good results to come back, so that it stays out of rotation until it
// is steady rather than take calls, and write a change to Atlas and send it
// to every sidecar, every few checks (Nagios's flap detection; Consul's
// users have asked for it since 2017, hashicorp/consul#2890).
type riseFall struct {
	rise, fall int
	status     sb.Status
	good, bad  int
	// moved records, for each of the last flapWindow checks (a ring,
	// indexed by checks % flapWindow), whether its result went in or out
	// of critical from the one before.
	moved        [flapWindow]bool
	checks       int
	lastCritical bool // the last result was critical
}

const (
	flapWindow = 20
	flapLimit  = 4
	flapRise   = 5
)

// flapping reports whether the results went in or out of critical
// flapLimit times or more in the last flapWindow checks.
func (r *riseFall) flapping() bool {
	n := 0
	for _, m := range r.moved {
		if m {
			n++
		}
	}
	return n >= flapLimit
}

// need is how many good results in a row a critical instance needs now.
func (r *riseFall) need() int {
	if r.flapping() {
		return r.rise * flapRise
	}
	return r.rise
}

func (r *riseFall) observe(s sb.Status) sb.Status {
	critical := s == sb.Critical
	r.moved[r.checks%flapWindow] = r.checks > 0 && critical != r.lastCritical
	r.checks++
	r.lastCritical = critical
	if critical {
		r.good = 0
		r.bad++
		if r.status != sb.Critical && r.bad >= r.fall {
			r.status = sb.Critical
		}
	} else {
		r.bad = 0
		r.good++
		if r.status != sb.Critical || r.good >= r.need() {
			r.status = s
		}
	}
	return r.status
}

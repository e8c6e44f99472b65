package sidecar

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/atlas/atlastest"
	"github.com/switchboard-go/switchboard/client"
	"github.com/switchboard-go/switchboard/internal/syncbuf"
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
	startSweeping(t, Config{Atlas: StringList{a.URL}, Host: "h1", Advertise: "127.0.0.1", Services: []ServiceConfig{
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

// A sidecar killed between its drain's disable and its deregistration left
// the switch, which outlives the lease: the restarted sidecar registered
// its instance again, and it stayed out of rotation for good. The switch
// it set itself is cleared at registration; an operator's stays.
func TestRegistrationClearsTheSwitchADrainLeft(t *testing.T) {
	a := atlastest.Start(t, true)
	c := a.Client()
	ctx := context.Background()
	for _, sw := range []struct {
		name   string
		port   int
		reason string
	}{{"drained", 5001, "sidecar on h1 is shutting down"}, {"maintained", 5002, "kernel upgrade"}} {
		id := fmt.Sprintf("%s-h1-%d", sw.name, sw.port)
		if _, err := c.Register(ctx, id, sb.Registration{Service: sw.name, Address: "127.0.0.1", Port: sw.port}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.SetEnabled(ctx, id, false, sw.reason); err != nil {
			t.Fatal(err)
		}
	}
	none := CheckConfig{None: true, Interval: Duration(100 * time.Millisecond)}
	startSweeping(t, Config{Atlas: StringList{a.URL}, Host: "h1", Advertise: "127.0.0.1", Services: []ServiceConfig{
		{Name: "drained", Port: 5001, Check: none},
		{Name: "maintained", Port: 5002, Check: none},
	}})
	deadline := time.Now().Add(20 * time.Second)
	for {
		drained, err1 := c.Instance(ctx, "drained-h1-5001")
		maintained, err2 := c.Instance(ctx, "maintained-h1-5002")
		if err1 == nil && err2 == nil && drained.Enabled && strings.HasPrefix(maintained.Output, "not checked") {
			if maintained.Enabled || maintained.DisabledReason != "kernel upgrade" {
				t.Fatalf("the operator's switch was cleared: enabled %v, reason %q", maintained.Enabled, maintained.DisabledReason)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("within 20s: drained %+v %v; maintained %+v %v", drained, err1, maintained, err2)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// portOf returns the port of a host:port address.
func portOf(addr string) int {
	_, port, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(port)
	return n
}

// The check dials the address announced, not loopback: a service that
// listens on 127.0.0.1 only, announced at another address, is critical
// (as Nerve has it), not passing while callers get "connection refused".
func TestTheCheckDialsTheAnnouncedAddress(t *testing.T) {
	a := atlastest.Start(t, true)
	local := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(local.Close)
	port := portOf(local.Listener.Addr().String())
	root := "/"
	check := CheckConfig{HTTP: &root, Interval: Duration(100 * time.Millisecond), Rise: 1}
	startSweeping(t, Config{Atlas: StringList{a.URL}, Host: "h1", Advertise: "127.0.0.2", Services: []ServiceConfig{
		{Name: "elsewhere", Port: port, Check: check},
		{Name: "here", Port: port, Address: "127.0.0.1", Check: check},
	}})
	c := a.Client()
	deadline := time.Now().Add(20 * time.Second)
	for {
		elsewhere, err1 := c.Instance(context.Background(), "elsewhere-h1-"+strconv.Itoa(port))
		here, err2 := c.Instance(context.Background(), "here-h1-"+strconv.Itoa(port))
		if err1 == nil && err2 == nil && here.Status == sb.Passing && elsewhere.Output != "not checked yet" {
			if elsewhere.Status != sb.Critical || elsewhere.Address != "127.0.0.2" || !strings.Contains(elsewhere.Output, "127.0.0.2:"+strconv.Itoa(port)) {
				t.Fatalf("a service listening on 127.0.0.1, announced at 127.0.0.2: %s %q at %s; want critical, the check naming 127.0.0.2", elsewhere.Status, elsewhere.Output, elsewhere.Address)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not registered and checked within 20s: %v %v / %v %v", elsewhere, err1, here, err2)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A check that fails from the first says so at warn level (switchboard dev
// logs warnings only), though the status, critical from the start, does
// not change; a later fall to critical is a warning too.
func TestFailingChecksAreWarnings(t *testing.T) {
	var out syncbuf.Buffer
	log := slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var down atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			w.WriteHeader(500)
		}
	}))
	t.Cleanup(srv.Close)
	dead := portOf(testnet.Hung(t)) // accepts, never answers: times out
	root := "/"
	check := CheckConfig{HTTP: &root, Timeout: Duration(50 * time.Millisecond), Rise: 1, Fall: 1}
	a, err := newAnnouncer(ServiceConfig{Name: "never", Port: dead, Check: check}, "h1", "127.0.0.1", "dev", nil, log)
	if err != nil {
		t.Fatal(err)
	}
	a.checkOnce(context.Background())
	if !strings.Contains(out.String(), "the first check failed") {
		t.Fatalf("a first failing check logged no warning: %q", out.String())
	}
	check.Timeout = Duration(10 * time.Second) // a busy machine's answers are slow
	b, err := newAnnouncer(ServiceConfig{Name: "flaky", Port: portOf(srv.Listener.Addr().String()), Check: check}, "h1", "127.0.0.1", "dev", nil, log)
	if err != nil {
		t.Fatal(err)
	}
	b.checkOnce(context.Background()) // passing: info, not shown
	down.Store(true)
	b.checkOnce(context.Background())
	if !strings.Contains(out.String(), "id=flaky-h1-") || !strings.Contains(out.String(), "to=critical") {
		t.Fatalf("a fall to critical logged no warning: %q", out.String())
	}
}

// A gRPC check reconnects at least once an interval: with gRPC's own
// backoff (up to two minutes between tries, failing every check at once in
// between), a service back up stayed critical long after it answered. The
// reviewer measured 2.9 s after a 12 s outage with the default.
func TestGRPCCheckReconnectsWithinAnInterval(t *testing.T) {
	for _, interval := range []time.Duration{100 * time.Millisecond, 2 * time.Second, time.Minute} {
		b := grpcConnectParams(interval).Backoff
		if b.MaxDelay != interval || b.BaseDelay > interval || b.BaseDelay <= 0 || b.Multiplier < 1 {
			t.Errorf("interval %v: backoff %+v; want at most the interval between tries", interval, b)
		}
	}
}

// A check whose answer starts (200 and its headers) but whose body
// does not arrive within the timeout timed out, and a timeout is critical;
// it was passing, the cut read ignored.
func TestHTTPCheckThatTimesOutInTheBodyIsCritical(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(200)
		w.Write([]byte(`{"status": "succ`))
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	ck, err := newChecker(CheckConfig{}, srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer ck.close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	st, out := ck.check(ctx)
	if st != sb.Critical || !strings.Contains(out, "deadline exceeded") {
		t.Fatalf("check of an answer whose body hangs = %s %q; want critical, saying it timed out", st, out)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the check took %v; its timeout is 200ms", d)
	}
}

// HealthOutput promised failures first, but kept the body's order:
// a failing check listed after many passing ones was cut off by the 4 KiB
// limit on an instance's output, leaving "ok" lines only.
func TestHealthOutputPutsFailuresFirst(t *testing.T) {
	var results []string
	for i := range 60 {
		results = append(results, fmt.Sprintf(`{"checker": "check%02d", "output": "%s", "passed": true}`, i, strings.Repeat("fine ", 20)))
	}
	results = append(results, `{"checker": "db", "output": "connection refused", "passed": false}`)
	body := `{"hostname": "h", "status": "failure", "results": [` + strings.Join(results, ",") + `]}`
	out := sb.TruncateOutput(healthOutput([]byte(body)))
	if !strings.HasPrefix(out, "FAIL db: connection refused\n") {
		t.Fatalf("healthOutput = %.120q...; want the failure first", out)
	}
	if got, want := healthOutput([]byte(`{"status":"success","results":[{"checker":"b","output":"ok","passed":true},{"checker":"a","output":"ok","passed":true}]}`)), "ok b: ok\nok a: ok"; got != want {
		t.Fatalf("healthOutput of passes = %q; want %q (the body's order)", got, want)
	}
}

// A sidecar killed (or crashed) and started again registered its
// instances critical, as new: each went out of rotation for rise ×
// interval although it never stopped passing. The new sidecar now carries
// on with the status Atlas has for an instance registered at the same
// address; an instance Atlas does not have rises as before.
func TestARestartedSidecarCarriesOnTheStatusAtlasHas(t *testing.T) {
	a := atlastest.Start(t, true)
	c := a.Client()
	ctx := context.Background()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer backend.Close()
	port := portOf(strings.TrimPrefix(backend.URL, "http://"))
	left := fmt.Sprintf("web-h1-%d", port)
	if _, err := c.Register(ctx, left, sb.Registration{Service: "web", Address: "127.0.0.1", Port: port, Output: "the sidecar before"}); err != nil {
		t.Fatal(err)
	}
	path := "/"
	check := CheckConfig{HTTP: &path, Interval: Duration(time.Second), Rise: 3}
	startSweeping(t, Config{Atlas: StringList{a.URL}, Host: "h1", Advertise: "127.0.0.1", Services: []ServiceConfig{
		{Name: "web", Port: port, Check: check},
		{Name: "fresh", Port: port, Check: check},
	}})
	fresh := fmt.Sprintf("fresh-h1-%d", port)
	var seen []string
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		w, err1 := c.Instance(ctx, left)
		f, err2 := c.Instance(ctx, fresh)
		if err1 == nil && w.Output != "the sidecar before" && err2 == nil {
			// The sidecar's first registrations, one check in of three.
			if w.Status != sb.Passing || f.Status != sb.Critical {
				t.Fatalf("first status from the restarted sidecar: %s (%q), and %s for an instance Atlas did not have; want passing carried on, and critical", w.Status, w.Output, f.Status)
			}
			return
		}
		if err1 != nil {
			seen = append(seen, err1.Error())
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sidecar did not register within 20 s: %v; %v", w, seen)
		}
	}
}

// Outputs near the size an HTTP check reads, which JSON may make six times
// longer, took a host's heartbeats over Atlas's limit on a request's body:
// Atlas refused them all, every instance on the host lost its lease, the
// healthy ones too, and none registered again. Outputs are cut to Atlas's
// limit, and a group's heartbeats go in as many requests as they need.
func TestBigOutputsKeepEveryHeartbeat(t *testing.T) {
	a := atlastest.Start(t, true)
	body := `{"status":"failure","results":[{"checker":"db","passed":false,"output":"` + strings.Repeat("<", 60<<10) + `"}]}`
	big := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(big.Close)
	fine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(fine.Close)
	// A lease of 3 s: enough for 49 checks and a request of 1 MiB a
	// second under the race detector.
	check := CheckConfig{Interval: Duration(time.Second), Rise: 1}
	svcs := []ServiceConfig{{Name: "fine", Port: portOf(fine.Listener.Addr().String()), Check: check}}
	// 48 outputs of 4 KiB, each 24 KiB in JSON: more than Atlas takes in one request.
	for i := range 48 {
		svcs = append(svcs, ServiceConfig{Name: fmt.Sprintf("big%02d", i), Port: portOf(big.Listener.Addr().String()), Check: check})
	}
	startSweeping(t, Config{Atlas: StringList{a.URL}, Host: "h1", Advertise: "127.0.0.1", Services: svcs})

	c := a.Client()
	// renewed reports whether the service's instance took a heartbeat
	// later than its first lease ran (3 × interval after its
	// registration). Refused heartbeats never renew one; an instance gone
	// for a stall of the machine is registered again (a heartbeat gets
	// not_found), and renewed after that.
	renewed := func(name string) bool {
		list, err := c.Service(context.Background(), "", name, client.ServiceOptions{Leases: true})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Instances) == 0 {
			return false
		}
		in := list.Instances[0]
		if len(in.Output) > sb.MaxOutputBytes {
			t.Fatalf("%s: output of %d bytes", name, len(in.Output))
		}
		return in.LastHeartbeat != nil && in.LastHeartbeat.Sub(in.RegisteredAt) > 3*time.Duration(check.Interval)
	}
	for _, name := range []string{"fine", "big00", "big47"} {
		eventually(t, name+" renewed its first lease", func() bool { return renewed(name) })
	}
}

// A rising instance's note follows its output within Atlas's limit, the
// output cut on a rune's start.
func TestWithNote(t *testing.T) {
	note := " (rising: 1 of 3 good checks)"
	for _, out := range []string{"ok", strings.Repeat("é", sb.MaxOutputBytes/2), strings.Repeat("a", sb.MaxOutputBytes), strings.Repeat("\x80", sb.MaxOutputBytes)} {
		got := withNote(out, note)
		// Not valid UTF-8 in, not valid out; but never cut to nothing.
		if !strings.HasSuffix(got, note) || len(got) > sb.MaxOutputBytes || utf8.ValidString(out) && !utf8.ValidString(got) ||
			!strings.HasPrefix(out, strings.TrimSuffix(got, note)) || len(got) < min(len(out)+len(note), sb.MaxOutputBytes-utf8.UTFMax) {
			t.Errorf("withNote(%d bytes): %d bytes, ending %q", len(out), len(got), got[max(0, len(got)-40):])
		}
	}
}

// A sidecar stopped while an operator had one of its instances disabled
// (maintenance: the host is about to reboot) deregistered it, which cleared
// the switch, or drained it, which put the sidecar's reason in the
// operator's place: the instance came back in rotation with the host. It
// is left to expire instead, which keeps the switch; the others drain and
// deregister as before.
func TestDrainKeepsAnOperatorsSwitch(t *testing.T) {
	a := atlastest.Start(t, true)
	c := a.Client()
	ctx := context.Background()
	// A lease of 6 s: the shutdown and the reads after it fit in it.
	none := CheckConfig{None: true, Interval: Duration(2 * time.Second)}
	cfg := Config{Atlas: StringList{a.URL}, Host: "h1", Advertise: "127.0.0.1", DrainTimeout: Duration(time.Second),
		Services: []ServiceConfig{{Name: "web", Port: 5001, Check: none}, {Name: "upkeep", Port: 5002, Check: none}}}
	s1 := startSweeping(t, cfg)
	registered := func(id string) bool { _, err := c.Instance(ctx, id); return err == nil }
	eventually(t, "both registered", func() bool { return registered("web-h1-5001") && registered("upkeep-h1-5002") })
	if _, err := c.SetEnabled(ctx, "upkeep-h1-5002", false, "kernel upgrade"); err != nil {
		t.Fatal(err)
	}
	s1.Shutdown()
	if registered("web-h1-5001") {
		t.Fatal("web-h1-5001 is still registered after the drain")
	}
	in, err := c.Instance(ctx, "upkeep-h1-5002")
	if err != nil || in.Enabled || in.DisabledReason != "kernel upgrade" {
		t.Fatalf("upkeep-h1-5002 after the drain: %+v, %v; want it left, disabled for the kernel upgrade", in, err)
	}
	eventually(t, "upkeep-h1-5002's lease runs out", func() bool { return !registered("upkeep-h1-5002") })

	startSweeping(t, cfg) // the host is back
	eventually(t, "upkeep-h1-5002 registered again", func() bool { return registered("upkeep-h1-5002") })
	if in, err := c.Instance(ctx, "upkeep-h1-5002"); err != nil || in.Enabled || in.DisabledReason != "kernel upgrade" {
		t.Fatalf("upkeep-h1-5002 after the restart: %+v, %v; want it still disabled for the kernel upgrade", in, err)
	}
}

// With two Atlas addresses and a short interval, the first hanging (its
// host gone, its process stuck) cost each instance its lease once: a
// heartbeat gave it half of a 2 s budget, and reached the second address
// after the 1 s lease had run out. A heartbeat's budget ends with the
// lease it renews.
func TestAHungAtlasCostsNoLease(t *testing.T) {
	a := atlastest.Start(t, true)
	target, err := url.Parse(a.URL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	var hung atomic.Bool
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hung.Load() {
			// Its context ends with the connection once the body is read.
			io.Copy(io.Discard, r.Body)
			<-r.Context().Done()
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		// The sidecar's event stream, proxied, is still open.
		front.CloseClientConnections()
		front.Close()
	})
	var logs syncbuf.Buffer
	s, err := New(Config{Atlas: StringList{front.URL, a.URL}, Host: "h1", Advertise: "127.0.0.1", DrainTimeout: Duration(time.Second),
		Listen: "127.0.0.1:0", Admin: "127.0.0.1:0", Services: []ServiceConfig{
			{Name: "svc", Port: 5001, Check: CheckConfig{None: true, Interval: Duration(200 * time.Millisecond)}},
		}}, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown() })
	c := a.Client()
	ctx := context.Background()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := c.Instance(ctx, "svc-h1-5001"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("instance never registered: %s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	hung.Store(true)
	// Five leases.
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if _, err := c.Instance(ctx, "svc-h1-5001"); err != nil {
			t.Fatalf("instance gone while the first Atlas hung: %v\n%s", err, logs.String())
		}
	}
	if strings.Contains(logs.String(), "registering again") {
		t.Fatalf("the instance lost its lease while the first Atlas hung:\n%s", logs.String())
	}
}

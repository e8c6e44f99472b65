package haproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/balance"
)

func unusedAddr(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func endpoints(t *testing.T, urls ...string) []*balance.Endpoint {
	return namedEndpoints("i", urls...)
}

// backends starts n backends, backend i answering "i<i>", and returns
// their URLs.
func backends(t *testing.T, n int) []string {
	var urls []string
	for i := range n {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "i", i) }))
		t.Cleanup(srv.Close)
		urls = append(urls, srv.URL)
	}
	return urls
}

// namedEndpoints are instances PREFIX0, PREFIX1, ... at urls.
func namedEndpoints(prefix string, urls ...string) []*balance.Endpoint {
	p := balance.NewPool("x", "dev")
	var ins []*sb.Instance
	for i, u := range urls {
		host, port, _ := net.SplitHostPort(strings.TrimPrefix(u, "http://"))
		n, _ := strconv.Atoi(port)
		ins = append(ins, &sb.Instance{ID: fmt.Sprint(prefix, i), Address: host, Port: n, Status: sb.Passing, Enabled: true})
	}
	p.Update(ins, 1)
	return p.Endpoints()
}

func get(addr, service string) (int, string) {
	req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
	req.Header.Set("Switchboard-Service", service)
	res, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func waitGet(t *testing.T, addr, service string, want int) string {
	t.Helper()
	var body string
	if poll(func() bool {
		var st int
		st, body = get(addr, service)
		return st == want
	}) {
		return body
	}
	t.Fatalf("GET through HAProxy never answered %d: %s", want, body)
	return ""
}

// poll calls ok every 20 ms until it returns true, and reports whether it
// did within 30 s, however long each call takes: a wedged HAProxy fails a
// test in seconds rather than holding it through hundreds of timeouts.
func poll(ok func() bool) bool {
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if ok() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// startDriver starts a Driver on the real haproxy, reloading as soon as
// asked (MinReloadInterval 0 until the test ends), and returns it with the
// address it listens on.
func startDriver(t *testing.T) (*Driver, string) {
	t.Helper()
	return startDriverIn(t, t.TempDir())
}

// startDriverIn is startDriver with Dir set to dir.
func startDriverIn(t *testing.T, dir string) (*Driver, string) {
	t.Helper()
	old := MinReloadInterval
	MinReloadInterval = 0
	t.Cleanup(func() { MinReloadInterval = old })
	for attempt := 1; ; attempt++ {
		// HAProxy binds the address a moment after it was found free:
		// another test's socket may take it first. Another is tried then.
		listen := unusedAddr(t)
		d := &Driver{Dir: dir, Listen: listen, Fallback: unusedAddr(t), Realm: "dev", Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))}
		err := d.Start()
		if err == nil {
			t.Cleanup(func() { d.Close() })
			return d, listen
		}
		if attempt == 5 {
			t.Fatalf("%d attempts: %v", attempt, err)
		}
		t.Logf("HAProxy did not start on %s (%v); trying another address", listen, err)
	}
}

// A relative Dir (state_dir: ./state in a sidecar.yaml in the working
// directory) made HAProxy refuse the config: it reads a socket path
// without a leading / as an address.
func TestARelativeDirIsMadeAbsolute(t *testing.T) {
	t.Chdir(t.TempDir())
	d, listen := startDriverIn(t, "state/haproxy")
	d.Update("files", false, endpoints(t, backends(t, 1)[0]))
	if body := waitGet(t, listen, "files", 200); body != "i0" {
		t.Fatalf("through HAProxy: %q", body)
	}
}

// TestDriverRestartsHAProxyAndKeepsRefusedConfigsAside runs the real
// haproxy: it is restarted after kill -9 with the current membership, and
// a config `haproxy -c` refuses is kept aside while the running one stays.
func TestDriverRestartsHAProxyAndKeepsRefusedConfigsAside(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") }))
	defer backend.Close()
	d, listen := startDriver(t)
	d.Update("files", false, endpoints(t, backend.URL))
	if body := waitGet(t, listen, "files", 200); body != "hello" {
		t.Fatalf("through HAProxy: %q", body)
	}
	// kill -9 of the master: the driver starts a new one, same routes.
	d.mu.Lock()
	pid := d.cmd.Process.Pid
	d.mu.Unlock()
	syscall.Kill(pid, syscall.SIGKILL)
	if !poll(func() bool { return d.Restarts() == 1 }) {
		t.Fatal("HAProxy was not restarted after it died")
	}
	if body := waitGet(t, listen, "files", 200); body != "hello" {
		t.Fatalf("after the restart: %q", body)
	}
	// An L4 upstream with no listen address makes a config haproxy -c
	// refuses: it is kept aside, and routing goes on.
	before, _ := os.ReadFile(filepath.Join(d.Dir, "haproxy.cfg"))
	reloads := d.Reloads()
	d.Update("ghost", true, endpoints(t, backend.URL))
	if d.RefusedConfigs() == 0 {
		t.Fatal("a broken config was not refused")
	}
	if _, err := os.Stat(filepath.Join(d.Dir, "haproxy.cfg.rejected")); err != nil {
		t.Fatalf("the refused config was not kept aside: %v", err)
	}
	after, _ := os.ReadFile(filepath.Join(d.Dir, "haproxy.cfg"))
	if string(after) != string(before) || d.Reloads() != reloads {
		t.Fatal("a refused config replaced the running one")
	}
	if st, body := get(listen, "files"); st != 200 || body != "hello" {
		t.Fatalf("after a refused config: %d %q", st, body)
	}
	// Why, in HAProxy's words (haproxy -c -q said nothing).
	d.mu.Lock()
	spec := d.specLocked()
	err := d.writeCheckedLocked(spec)
	d.mu.Unlock()
	if err == nil || !strings.Contains(err.Error(), "Fatal errors found in configuration") || strings.Contains(err.Error(), "[ALERT]") {
		t.Fatalf("refusing the config again: %v; want HAProxy's alerts, without their prefix", err)
	}
	// A refused config is refused again: it is not retried until the
	// next change (a failed load is: TestAFailedReloadIsCountedAndTriedAgain).
	if reloadPending(d) {
		t.Fatal("a refused config is to be tried again")
	}
}

// reloadPending reports whether the driver has a reload (or a retry of
// one) waiting for its time.
func reloadPending(d *Driver) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.reloadDue != nil
}

// A Switchboard-Service header naming two services went to the backend of
// whichever HAProxy's config lists first; the built-in proxy refuses
// "a, b" (400). Such a request now goes to the built-in proxy, which
// decides as in built-in mode (here, an address where nothing listens:
// 503).
func TestTwoServiceNamesAreNotRouted(t *testing.T) {
	d, listen := startDriver(t)
	d.Update("files", false, endpoints(t, backends(t, 1)...))
	waitGet(t, listen, "files", 200)
	for _, header := range [][]string{{"files, other"}, {"other, files"}, {"files", "files"}} {
		req, _ := http.NewRequest("GET", "http://"+listen+"/", nil)
		req.Header["Switchboard-Service"] = header
		res, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode == 200 {
			t.Errorf("Switchboard-Service %q reached a backend: %d %q; want the built-in proxy's refusal", header, res.StatusCode, b)
		}
	}
}

// A config that passes haproxy -c but does not load (an L4 listen address
// another process holds) left HAProxy on its old worker while the driver
// took the new config as running: the failure was only logged, and the
// next change sent runtime commands for backends HAProxy did not have. It
// is counted, and the next change reloads again; so does a retry a little
// later without a change, for the next change may be hours away.
func TestAFailedReloadIsCountedAndTriedAgain(t *testing.T) {
	for _, next := range []string{"change", "retry"} {
		t.Run(next, func(t *testing.T) {
			urls := backends(t, 2)
			taken, err := net.Listen("tcp", "127.0.0.1:0") // no SO_REUSEPORT: HAProxy cannot share it
			if err != nil {
				t.Fatal(err)
			}
			addr := taken.Addr().String()
			d, _ := startDriver(t)
			d.mu.Lock()
			d.TCP = map[string]string{"redis": addr}
			d.mu.Unlock()
			d.Update("redis", true, namedEndpoints("a", urls[0]))
			if d.FailedReloads() != 1 {
				t.Fatalf("FailedReloads = %d after a reload that could not bind %s; want 1", d.FailedReloads(), addr)
			}
			taken.Close()
			if next == "change" {
				d.Update("redis", true, namedEndpoints("a", urls...))
				if d.FailedReloads() != 1 {
					t.Fatalf("FailedReloads = %d once %s is free; want still 1", d.FailedReloads(), addr)
				}
			}
			waitL4(t, addr)
		})
	}
}

// waitL4 waits for an L4 upstream at addr to answer through HAProxy with
// one of the test backends' bodies.
func waitL4(t *testing.T, addr string) {
	t.Helper()
	var body string
	// No connection is kept: HAProxy's Close would wait for it.
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	if !poll(func() bool {
		res, err := c.Get("http://" + addr + "/")
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		body = string(b)
		return strings.HasPrefix(body, "i")
	}) {
		t.Fatalf("the L4 upstream never answered through HAProxy once its address was free (last %q)", body)
	}
}

// A service may be named sidecar: its backend does not collide with the
// fallback to the built-in proxy (haproxy -c refused the config, and every
// config after it).
func TestServiceNamedSidecar(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") }))
	defer backend.Close()
	d, listen := startDriver(t)
	d.Update("sidecar", false, endpoints(t, backend.URL))
	if body := waitGet(t, listen, "sidecar", 200); body != "hello" || d.RefusedConfigs() != 0 {
		t.Fatalf("through HAProxy: %q, %d configs refused", body, d.RefusedConfigs())
	}
}

// While a backend waits for the reload that gives it more slots (rate
// limited, or refused), the slots HAProxy has still follow: an instance
// removed leaves rotation at once.
func TestRemovedInstanceLeavesBeforeTheReload(t *testing.T) {
	urls := backends(t, 10)
	d, listen := startDriver(t)
	d.Update("billing", false, endpoints(t, urls[:4]...)) // i0..i3 in 8 slots
	waitGet(t, listen, "billing", 200)
	MinReloadInterval = time.Hour
	// i0 goes; six more come: 9 instances need 32 slots, so a reload
	// that is an hour away.
	eps := endpoints(t, urls...)
	d.Update("billing", false, eps[1:])
	for range 100 {
		if st, body := get(listen, "billing"); st != 200 || body == "i0" {
			t.Fatalf("after i0 was removed: %d %q", st, body)
		}
	}
}

// The same when the reload fails (HAProxy keeps the old worker): the
// driver counted the reload's slots as loaded before the new worker came,
// so the old worker was never told that i0 had gone, and routed to it
// until the next reload that worked.
func TestRemovedInstanceLeavesWhenTheReloadFails(t *testing.T) {
	urls := backends(t, 10)
	d, listen := startDriver(t)
	eps := endpoints(t, urls...)
	d.Update("billing", false, eps[:2]) // i0, i1 in 8 slots
	waitGet(t, listen, "billing", 200)
	send := reloadSignal
	reloadSignal = func(*os.Process) error {
		go d.heard("[WARNING]  (1) : Loading failure!")
		return nil
	}
	d.Update("billing", false, eps[1:]) // i0 goes, 8 more come: a reload to 32 slots, which fails
	reloadSignal = send
	if n := d.FailedReloads(); n != 1 {
		t.Fatalf("failed reloads: %d; want 1", n)
	}
	for range 60 {
		if st, body := get(listen, "billing"); st != 200 || body == "i0" {
			t.Fatalf("after i0 was removed and the reload failed: %d %q", st, body)
		}
	}
}

// A request to an instance that has left outlasted its slot's rest: the
// slot went to a new instance, the request's connection to the old one
// came back to the slot's idle pool, and HAProxy sent the new instance's
// requests to the old one on it. A slot with a session open is not
// rested, however long ago its instance left.
func TestASlotWithARequestInFlightIsNotGivenAway(t *testing.T) {
	rest := SlotRest
	SlotRest = time.Second
	t.Cleanup(func() { SlotRest = rest })
	a := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(3 * time.Second)
		}
		io.WriteString(w, "A")
	}))
	t.Cleanup(a.Close)
	b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "B") }))
	t.Cleanup(b.Close)
	d, listen := startDriver(t)
	d.Update("files", false, namedEndpoints("a", a.URL))
	waitGet(t, listen, "files", 200)
	slow := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest("GET", "http://"+listen+"/slow", nil)
		req.Header.Set("Switchboard-Service", "files")
		res, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
		if err == nil {
			_, err = io.ReadAll(res.Body)
			res.Body.Close()
		}
		slow <- err
	}()
	time.Sleep(500 * time.Millisecond) // the slow request is on a's connection
	d.Update("files", false, nil)      // a leaves
	time.Sleep(1500 * time.Millisecond)
	d.Update("files", false, namedEndpoints("b", b.URL)) // past SlotRest, the request still running
	if err := <-slow; err != nil {
		t.Fatalf("the request to a: %v", err)
	}
	for range 40 {
		if st, body := get(listen, "files"); st != 200 || body != "B" {
			t.Fatalf("after b came: %d %q; want every answer from b", st, body)
		}
	}
	// Once a look at the counters (the sidecar's, every second) has found
	// a's slot without a session for quietFor, it is rested: the next
	// instance at a new address takes it.
	if _, err := d.Outcomes(context.Background()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(quietFor + 100*time.Millisecond)
	c := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "C") }))
	t.Cleanup(c.Close)
	d.Update("files", false, append(namedEndpoints("b", b.URL), namedEndpoints("c", c.URL)...))
	d.mu.Lock()
	slot0 := d.backends["http/files"].ids[0]
	d.mu.Unlock()
	if slot0 != "c0" {
		t.Fatalf("a's quiet slot holds %q; want c0, the new instance", slot0)
	}
}

// Four instances replaced by four at new addresses, twice within
// SlotRest (a rollout, then its rollback): the instance count never
// changes, so no reload, and the resting slots are taken rather than leave
// the service without a server until a reload.
func TestInstancesReplacedTwiceQuicklyStayRoutable(t *testing.T) {
	urls := backends(t, 12)
	d, listen := startDriver(t)
	d.Update("billing", false, namedEndpoints("a", urls[0:4]...))
	waitGet(t, listen, "billing", 200)
	MinReloadInterval = 2 * time.Second // the default
	reloads := d.Reloads()
	d.Update("billing", false, namedEndpoints("b", urls[4:8]...)) // rollout
	waitGet(t, listen, "billing", 200)
	d.Update("billing", false, namedEndpoints("c", urls[8:12]...)) // next rollout
	failed, last := 0, 0
	for range 20 {
		if st, _ := get(listen, "billing"); st != 200 {
			failed++
			last = st
		}
	}
	if d.Reloads() != reloads || reloadPending(d) || failed > 0 {
		t.Fatalf("4 instances replaced by 4 twice: %d of 20 GETs right after failed (last status %d); %d reload(s) done, one pending: %v; want no failure, no reload", failed, last, d.Reloads()-reloads, reloadPending(d))
	}
}

// A service with no instance gets no backend, and so no reload: a typo in
// a Host header stays with the sidecar's own frontend. A backend removed
// leaves at the next reload. Called names the services HAProxy served.
func TestBackendsComeWithInstancesAndLeaveWhenRemoved(t *testing.T) {
	d, listen := startDriver(t)
	reloads := d.Reloads()
	d.Update("typo", false, nil)
	if d.Reloads() != reloads {
		t.Fatal("a service with no instance reloaded HAProxy")
	}
	urls := backends(t, 1)
	d.Update("files", false, endpoints(t, urls...))
	d.Update("idle", false, namedEndpoints("j", urls...))
	if body := waitGet(t, listen, "files", 200); body != "i0" {
		t.Fatalf("through HAProxy: %q", body)
	}
	called, err := d.Called(t.Context(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(called) != 1 || called[0] != "files" {
		t.Fatalf("Called = %q, want [files]", called)
	}
	d.Remove("files")
	cfg, _ := os.ReadFile(filepath.Join(d.Dir, "haproxy.cfg"))
	if strings.Contains(string(cfg), "be_files") || !strings.Contains(string(cfg), "be_idle") {
		t.Fatalf("after Remove(files), haproxy.cfg:\n%s", cfg)
	}
	// The fallback (nothing listens there in this test) has the call now.
	waitGet(t, listen, "files", 503)
}

// A service HAProxy served is still named by Called after a reload: the
// sidecar's sweep must not take it for unused because the worker that
// served it was replaced (a reload starts every counter again).
func TestCalledSurvivesAReload(t *testing.T) {
	d, listen := startDriver(t)
	urls := backends(t, 1)
	d.Update("files", false, endpoints(t, urls...))
	if body := waitGet(t, listen, "files", 200); body != "i0" {
		t.Fatalf("through HAProxy: %q", body)
	}
	reloads := d.Reloads()
	// Another service appears: HAProxy reloads (at most one per 2 s).
	d.Update("other", false, namedEndpoints("j", urls...))
	for deadline := time.Now().Add(10 * time.Second); d.Reloads() == reloads; {
		if time.Now().After(deadline) {
			t.Fatal("no reload")
		}
		time.Sleep(50 * time.Millisecond)
	}
	waitGet(t, listen, "other", 200)
	called, err := d.Called(t.Context(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(called, "files") {
		t.Fatalf("Called(1m) = %q after a reload, want files in it: it was served seconds ago", called)
	}
}

// A service removed while its reload waits (the rate limit), then asked for
// again before that reload: HAProxy still has its backend, with the slot
// count the new one starts with, so no reload comes. The instances must
// still follow: one that left gets no more traffic, one that came gets it.
func TestBackendRemovedAndBackBeforeTheReloadFollows(t *testing.T) {
	urls := backends(t, 2)
	d, listen := startDriver(t)
	d.Update("billing", false, namedEndpoints("a", urls[0]))
	if body := waitGet(t, listen, "billing", 200); body != "i0" {
		t.Fatalf("through HAProxy: %q", body)
	}
	MinReloadInterval = time.Hour
	d.Remove("billing")
	// Asked for again: its only instance is now another one.
	d.Update("billing", false, namedEndpoints("b", urls[1]))
	var body string
	if !poll(func() bool {
		var st int
		st, body = get(listen, "billing")
		return st == 200 && body == "i1"
	}) {
		t.Fatalf("after billing's instance was replaced: HAProxy answered %q; want i1", body)
	}
	for range 20 {
		if st, body := get(listen, "billing"); st != 200 || body != "i1" {
			t.Fatalf("the instance that left still answers: %d %q", st, body)
		}
	}
}

// An instance's DNS name was resolved with no time bound under the
// driver's lock: a hung resolver held every other service's update with
// it. And a name that failed to resolve once left its instances out, while
// HAProxy could go on with the address it had.
func TestInstanceNamesResolveAsideAndKeepTheirLastAddress(t *testing.T) {
	urls := backends(t, 2)
	var (
		mu      sync.Mutex
		answer  = "127.0.0.1"
		hang    = make(chan struct{})
		hanging = make(chan struct{}, 1)
	)
	old := lookupIP
	lookupIP = func(ctx context.Context, host string) ([]net.IPAddr, error) {
		switch host {
		case "hung.test":
			hanging <- struct{}{}
			<-hang // as a resolver that ignores its deadline
			return nil, errors.New("no answer")
		case "web.test":
			mu.Lock()
			defer mu.Unlock()
			if answer == "" {
				return nil, &net.DNSError{Err: "server misbehaving", Name: host, IsTemporary: true}
			}
			return []net.IPAddr{{IP: net.ParseIP(answer)}}, nil
		}
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	t.Cleanup(func() { lookupIP = old })
	d, listen := startDriver(t)
	named := func(prefix, host string, u string) []*balance.Endpoint {
		_, port, _ := net.SplitHostPort(strings.TrimPrefix(u, "http://"))
		return namedEndpoints(prefix, "http://"+net.JoinHostPort(host, port))
	}

	go d.Update("slow", false, named("s", "hung.test", urls[0]))
	<-hanging
	updated := make(chan struct{})
	go func() {
		d.Update("web", false, named("w", "web.test", urls[1]))
		close(updated)
	}()
	if !poll(func() bool {
		select {
		case <-updated:
			return true
		default:
			return false
		}
	}) {
		t.Fatal("a service's update waited for another's hung DNS resolution")
	}
	close(hang)
	if body := waitGet(t, listen, "web", 200); body != "i1" {
		t.Fatalf("web.test's instance through HAProxy: %q", body)
	}

	// The resolver fails now: web.test keeps its address.
	mu.Lock()
	answer = ""
	mu.Unlock()
	d.Update("web", false, named("w", "web.test", urls[1]))
	for range 20 {
		if st, body := get(listen, "web"); st != 200 || body != "i1" {
			t.Fatalf("after the resolver failed: %d %q; want web.test's last address to stay", st, body)
		}
	}
}

// A failed reload retried on a timer made HAProxy pause its listeners at
// each try (about 2 s, "Paused frontend http-in"), refusing every new
// connection to every service, again and again while an L4 listen address
// stayed taken. The retry waits until the address can be bound.
func TestARetriedReloadWaitsForItsAddress(t *testing.T) {
	urls := backends(t, 1)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	d, listen := startDriver(t)
	d.Update("web", false, namedEndpoints("w", urls[0]))
	waitGet(t, listen, "web", 200)
	d.mu.Lock()
	d.TCP = map[string]string{"redis": taken.Addr().String()}
	d.mu.Unlock()
	d.Update("redis", true, namedEndpoints("a", urls[0]))
	if d.FailedReloads() != 1 {
		t.Fatalf("FailedReloads = %d; want 1", d.FailedReloads())
	}
	// New connections to a service that works, once HAProxy has resumed
	// after the failure, through the first two retries (2 s and 6 s
	// after it).
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	if !poll(func() bool {
		res, err := c.Get("http://" + listen + "/")
		if err == nil {
			res.Body.Close()
		}
		return err == nil
	}) {
		t.Fatal("HAProxy never took connections again after the failed reload")
	}
	refused := 0
	for start := time.Now(); time.Since(start) < 8*time.Second; time.Sleep(20 * time.Millisecond) {
		req, _ := http.NewRequest("GET", "http://"+listen+"/", nil)
		req.Header.Set("Switchboard-Service", "web")
		res, err := c.Do(req)
		if err != nil {
			refused++
			continue
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	if refused > 0 || d.FailedReloads() != 1 {
		t.Fatalf("%d new connections to a working service failed, %d reloads failed, while an L4 address stayed taken; want none and 1", refused, d.FailedReloads())
	}
	taken.Close()
	waitL4(t, taken.Addr().String())
}

// A haproxy -c that could not run to its verdict (it could not start, or
// timed out on a busy host) was counted as a refused config, which is not
// retried: the new routes waited for the next change.
func TestACheckThatDidNotRunIsRetried(t *testing.T) {
	d, listen := startDriver(t)
	d.mu.Lock()
	bin := d.Binary
	d.Binary = filepath.Join(t.TempDir(), "no-haproxy-here")
	d.mu.Unlock()
	d.Update("files", false, endpoints(t, backends(t, 1)...))
	if n := d.RefusedConfigs(); n != 0 {
		t.Fatalf("RefusedConfigs = %d after a check that could not start; want 0", n)
	}
	d.mu.Lock()
	d.Binary = bin
	d.mu.Unlock()
	if body := waitGet(t, listen, "files", 200); body != "i0" {
		t.Fatalf("through HAProxy after the retry: %q", body)
	}
}

// switchboard.lua is written with each config: one removed since the start (a
// cleaned directory) would have every later config refused, and HAProxy
// not restart after it died.
func TestLuaRemovedIsWrittenAgain(t *testing.T) {
	if lua, _ := features("haproxy"); !lua {
		t.Fatal("Debian's haproxy has Lua (haproxy -vv lists +LUA)")
	}
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") }))
	defer backend.Close()
	d, listen := startDriver(t)
	lua := filepath.Join(d.Dir, luaFile)
	if err := os.Remove(lua); err != nil {
		t.Fatal(err)
	}
	reloads := d.Reloads()
	d.Update("files", false, endpoints(t, backend.URL)) // a new backend: a reload
	if body := waitGet(t, listen, "files", 200); body != "hello" {
		t.Fatalf("through HAProxy: %q", body)
	}
	if d.RefusedConfigs() != 0 || d.Reloads() == reloads {
		t.Fatalf("after %s was removed: %d configs refused, %d reloads; want 0 and 1 more", luaFile, d.RefusedConfigs(), d.Reloads()-reloads)
	}
	if b, err := os.ReadFile(lua); err != nil || string(b) != luaActions {
		t.Fatalf("%s not written again: %v", luaFile, err)
	}
}

// Outcomes counts, per instance, what HAProxy's server slots answered and
// failed since the last look: answers under 500, 5xx from the instance,
// and connections to an instance that failed (a request HAProxy then sent
// elsewhere). A worker's first look counts nothing.
func TestOutcomesCountAnswersAndFailures(t *testing.T) {
	good := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer good.Close()
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", 500) }))
	defer bad.Close()
	dead := "http://" + unusedAddr(t) // refuses connections
	d, listen := startDriver(t)
	d.Update("files", false, endpoints(t, good.URL, bad.URL, dead))
	waitGet(t, listen, "files", 200)
	ctx := context.Background()
	if _, err := d.Outcomes(ctx); err != nil { // the baseline
		t.Fatal(err)
	}
	codes := map[int]int{}
	for range 60 {
		st, _ := get(listen, "files")
		codes[st]++
	}
	got, err := d.Outcomes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	o := got["files"]
	if codes[200]+codes[500] != 60 {
		t.Fatalf("answers: %v; want 200s and 500s only", codes)
	}
	if o["i0"] != (Outcomes{Answered: uint64(codes[200])}) || o["i1"] != (Outcomes{Failed: uint64(codes[500])}) {
		t.Errorf("Outcomes: good %+v, bad %+v; want %d answered and %d failed", o["i0"], o["i1"], codes[200], codes[500])
	}
	if o["i2"].Failed == 0 || o["i2"].Answered != 0 {
		t.Errorf("Outcomes: the instance that refuses connections: %+v; want failures only", o["i2"])
	}
	// Nothing new since: nothing counted.
	if again, err := d.Outcomes(ctx); err != nil || len(again) != 0 {
		t.Errorf("a second look with no request between: %v, %v; want nothing", again, err)
	}
}

// Gather serves HAProxy's own metrics of its backends (its Prometheus
// exporter), parsed, for the sidecar's /metrics.
func TestGatherReadsHAProxysMetrics(t *testing.T) {
	if _, exporter := features("haproxy"); !exporter {
		t.Fatal("Debian's haproxy has the Prometheus exporter (haproxy -vv lists prometheus-exporter)")
	}
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") }))
	defer backend.Close()
	d, listen := startDriver(t)
	d.Update("files", false, endpoints(t, backend.URL))
	waitGet(t, listen, "files", 200)
	for range 9 {
		if st, _ := get(listen, "files"); st != 200 {
			t.Fatalf("GET through HAProxy: %d", st)
		}
	}
	fams, err := d.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var answered float64
	for _, f := range fams {
		if f.GetName() != "haproxy_backend_http_responses_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["proxy"] == "be_files" && labels["code"] == "2xx" {
				answered = m.GetCounter().GetValue()
			}
		}
	}
	if answered < 10 {
		t.Fatalf("haproxy_backend_http_responses_total{proxy=be_files,code=2xx} = %v of %d families; want 10 or more", answered, len(fams))
	}
}

// A reload starts HAProxy's counters again, with the slots as they are:
// what the new worker serves from its start is counted at the next look,
// so that reloads (one per new service, up to one per MinReloadInterval)
// do not hold ejection up.
func TestOutcomesCountAcrossAReload(t *testing.T) {
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", 500) }))
	defer bad.Close()
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer other.Close()
	d, listen := startDriver(t)
	d.Update("files", false, endpoints(t, bad.URL))
	waitGet(t, listen, "files", 500)
	ctx := context.Background()
	if _, err := d.Outcomes(ctx); err != nil { // the baseline
		t.Fatal(err)
	}
	reloads := d.Reloads()
	d.Update("other", false, endpoints(t, other.URL)) // a new backend: a reload
	waitGet(t, listen, "other", 200)
	if d.Reloads() == reloads {
		t.Fatal("no reload")
	}
	for range 7 {
		if st, _ := get(listen, "files"); st != 500 {
			t.Fatalf("files: %d; want its 500", st)
		}
	}
	got, err := d.Outcomes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if o := got["files"]["i0"]; o.Failed != 7 || o.Answered != 0 {
		t.Fatalf("after the reload: files %+v; want the 7 failures the new worker saw", o)
	}
}

// After a reload that failed, HAProxy's master executes itself again, and
// a reload signal that comes meanwhile is lost: the driver waited 10 s for
// a worker that never came, and counted a failed reload. It sends the
// signal again when the master does not say it took it.
func TestALostReloadSignalIsSentAgain(t *testing.T) {
	d, listen := startDriver(t)
	var calls atomic.Int32
	send := reloadSignal
	reloadSignal = func(p *os.Process) error {
		if calls.Add(1) == 1 {
			return nil // lost
		}
		return send(p)
	}
	t.Cleanup(func() { reloadSignal = send })
	d.Update("files", false, endpoints(t, backends(t, 1)...))
	if calls.Load() != 2 || d.FailedReloads() != 0 {
		t.Fatalf("%d signals, %d failed reloads; want the lost signal sent again and the reload done", calls.Load(), d.FailedReloads())
	}
	waitGet(t, listen, "files", 200)
}

// freeSlot takes a slot that rested and has had no session open for
// quietFor; of slots still resting, a quiet one before one that is not.
func TestFreeSlotTakesQuietSlots(t *testing.T) {
	now := time.Now()
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	for _, tc := range []struct {
		name         string
		freed, quiet []time.Time
		want         int
	}{
		{"rested and quiet", []time.Time{ago(time.Minute), ago(time.Minute)}, []time.Time{{}, ago(3 * time.Second)}, 1},
		{"rested, never seen quiet", []time.Time{ago(time.Minute)}, []time.Time{{}}, 0},
		{"resting: the quiet one", []time.Time{ago(time.Minute), ago(4 * time.Second)}, []time.Time{{}, ago(3 * time.Second)}, 1},
		{"none quiet: the longest rested", []time.Time{ago(2 * time.Second), ago(time.Minute)}, []time.Time{{}, {}}, 1},
	} {
		b := &backendState{ids: make([]string, len(tc.freed)), freed: tc.freed, quiet: tc.quiet, last: make([]string, len(tc.freed))}
		for i := range b.last {
			b.last[i] = fmt.Sprint("10.0.0.1:", 5000+i)
		}
		if got := b.freeSlot("10.0.0.2:5000", now); got != tc.want {
			t.Errorf("%s: slot %d; want %d", tc.name, got, tc.want)
		}
	}
}

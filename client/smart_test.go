package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/atlas/atlastest"
	"github.com/switchboard-go/switchboard/balance"
	"github.com/switchboard-go/switchboard/client"
	"github.com/switchboard-go/switchboard/internal/testnet"
	"github.com/switchboard-go/switchboard/sidecar"
)

func TestServiceURLGoesToTheSidecar(t *testing.T) {
	var got atomic.Value
	sidecar := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Store(r.Header.Get("Switchboard-Service") + " " + r.Method + " " + r.URL.RequestURI() + " " + r.Host)
		io.WriteString(w, "ok")
	}))
	defer sidecar.Close()
	c := &http.Client{Transport: &client.Transport{Sidecar: strings.TrimPrefix(sidecar.URL, "http://")}}
	res, err := c.Get("service://identity/teams?x=1")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if want := "identity GET /teams?x=1 identity.localhost"; got.Load() != want {
		t.Fatalf("sidecar saw %q; want %q", got.Load(), want)
	}
	// Plain URLs pass through.
	res, err = c.Get(sidecar.URL + "/plain")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if got.Load() != " GET /plain "+strings.TrimPrefix(sidecar.URL, "http://") {
		t.Fatalf("plain URL: sidecar saw %q", got.Load())
	}
	for _, bad := range []string{"service://Bad/x", "service://a:80/x", "service://u@a/x", "service:///x"} {
		if _, err := c.Get(bad); err == nil || !strings.Contains(err.Error(), "service:// URL") {
			t.Errorf("Get(%q) = %v; want an error naming the URL rule", bad, err)
		}
	}
}

// directSetup runs an Atlas and registers backends for service "files".
func directSetup(t *testing.T, backends ...string) *client.Atlas {
	t.Helper()
	a := atlastest.Start(t, true).Client()
	for i, b := range backends {
		host, port, _ := net.SplitHostPort(strings.TrimPrefix(b, "http://"))
		p, _ := strconv.Atoi(port)
		if _, err := a.Register(t.Context(), fmt.Sprint("files-", i), sb.Registration{Service: "files", Address: host, Port: p}); err != nil {
			t.Fatal(err)
		}
	}
	return a
}

func named(t *testing.T, name string) string {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %s", name, r.Method, b)
	}))
	t.Cleanup(s.Close)
	return s.URL
}

func deadURL(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return "http://" + ln.Addr().String()
}

func TestDirectBalancesAndRetries(t *testing.T) {
	a := directSetup(t, named(t, "a"), named(t, "b"), deadURL(t))
	tr := &client.Transport{Sidecar: "none", Atlas: a}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	seen := map[string]int{}
	for range 100 {
		res, err := c.Post("service://files/x", "text/plain", strings.NewReader("hi"))
		if err != nil {
			t.Fatalf("POST with a dead instance among live ones: %v", err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		name, rest, _ := strings.Cut(string(b), " ")
		if rest != "POST hi" {
			t.Fatalf("answer %q", b)
		}
		seen[name]++
	}
	if seen["a"] < 20 || seen["b"] < 20 {
		t.Fatalf("split %v; want both live instances used", seen)
	}
	if _, err := c.Get("service://nobody/x"); err == nil || !strings.Contains(err.Error(), "service nobody in realm dev has no routable instance") {
		t.Fatalf("unknown service: %v", err)
	}
}

// noSidecar returns a Transport with nothing at the default sidecar
// address and no SWITCHBOARD_SIDECAR, for service "files" with one
// instance, named "a".
func noSidecar(t *testing.T) *client.Transport {
	restore := client.SetDefaultSidecar(strings.TrimPrefix(deadURL(t), "http://"))
	t.Cleanup(restore)
	t.Setenv("SWITCHBOARD_SIDECAR", "")
	tr := &client.Transport{Atlas: directSetup(t, named(t, "a"))}
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

func TestNoSidecarFallsBackToDirect(t *testing.T) {
	tr := noSidecar(t)
	res, err := (&http.Client{Transport: tr}).Get("service://files/")
	if err != nil {
		t.Fatalf("with no sidecar running: %v", err)
	}
	res.Body.Close()
}

func FuzzParseServiceURL(f *testing.F) {
	for _, s := range []string{"service://identity/teams?x=1", "service://a", "service://A/x", "service://a:1/", "service://%41/", "service://a.b/x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		u, err := url.Parse(raw)
		if err != nil {
			return
		}
		name, err := client.ParseServiceURL(u)
		if err != nil {
			return
		}
		if sb.ValidateName("service", name) != nil || u.Port() != "" || u.User != nil {
			t.Fatalf("ParseServiceURL(%q) = %q: accepted a URL it should refuse", raw, name)
		}
	})
}

func FuzzReadEvents(f *testing.F) {
	f.Add("event: snapshot\nid: 3\ndata: {\"index\":3,\"service\":\"a\",\"realm\":\"dev\",\"instances\":[]}\n\n: keep-alive\n\n")
	f.Add("event: update\ndata: {\"index\":1}\ndata: \n\nevent: x\n\n")
	f.Add("id: 9\n\ndata: nope\n\n")
	f.Fuzz(func(t *testing.T, stream string) {
		n := 0
		err := client.ReadEvents(strings.NewReader(stream), func(ev client.Event) error {
			n++
			if ev.Kind == "" || ev.Service == nil {
				t.Fatalf("event without kind or data: %+v", ev)
			}
			return nil
		})
		if err != nil && n > strings.Count(stream, "\n\n") {
			t.Fatalf("more events than blocks: %d", n)
		}
	})
}

// A caller's own deadline says nothing of the instance it was waiting
// for: calls that time out on a slow instance do not eject it.
func TestCallerDeadlinesEjectNoInstance(t *testing.T) {
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(200 * time.Millisecond):
		}
		fmt.Fprint(w, "slow")
	}))
	t.Cleanup(slow.Close)
	a := directSetup(t, named(t, "fast"), slow.URL)
	tr := &client.Transport{Sidecar: "none", Atlas: a}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	get := func(timeout time.Duration) string {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", "service://files/x", nil)
		res, err := c.Do(req)
		if err != nil {
			return ""
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return string(b)
	}
	// About half go to the slow instance and time out: far more than the
	// failures in a row that would eject it.
	for range 6 * balance.EjectAfter {
		get(20 * time.Millisecond)
	}
	for range 20 {
		if get(10*time.Second) == "slow" {
			return
		}
	}
	t.Fatal("20 calls and none reached the slow instance: it was ejected by its callers' deadlines")
}

// A caller's deadline of sb.HungAfter or more that runs out with no answer
// counts against the instance, as the sidecar counts it: an instance that
// took calls and never answered was never ejected, whatever its callers
// waited.
func TestCallerDeadlinesOfASecondEjectAHungInstance(t *testing.T) {
	hung := func() string {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
		t.Cleanup(s.Close)
		return s.URL
	}
	a := directSetup(t, hung(), hung())
	tr := &client.Transport{Sidecar: "none", Atlas: a}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	var wg sync.WaitGroup
	for range 2 * balance.EjectAfter { // at once: one instance gets EjectAfter at least
		wg.Go(func() {
			// A little more: the try begins after the call does.
			ctx, cancel := context.WithTimeout(context.Background(), sb.HungAfter+200*time.Millisecond)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "GET", "service://files/x", nil)
			if res, err := c.Do(req); err == nil {
				res.Body.Close()
				t.Errorf("a call to hung instances answered %d", res.StatusCode)
			}
		})
	}
	wg.Wait()
	if n := tr.Ejected("files"); n != 1 {
		t.Fatalf("%d instances ejected after %d calls waited %s or more with no answer; want 1 (at most half)", n, 2*balance.EjectAfter, sb.HungAfter)
	}
}

// With nothing at the default sidecar address, a POST whose body is a file
// (no GetBody) goes direct with its body whole: the failed dial to the
// sidecar used to close it first.
func TestNoSidecarSendsAFileBodyDirect(t *testing.T) {
	tr := noSidecar(t)
	path := filepath.Join(t.TempDir(), "body")
	os.WriteFile(path, []byte("hello"), 0o644)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("POST", "service://files/x", f)
	res, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatalf("POST of a file with no sidecar running: %v", err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if string(b) != "a POST hello" {
		t.Fatalf("answer %q", b)
	}
}

// A Transport that made a direct call and is then dropped stops following
// Atlas once it is collected: before, each kept a Follow loop and an event
// stream for ever.
func TestADroppedTransportStopsFollowingAtlas(t *testing.T) {
	a := directSetup(t, named(t, "a"))
	get := func() {
		c := &http.Client{Transport: &client.Transport{Sidecar: "none", Atlas: a}}
		res, err := c.Get("service://files/x")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	get()
	time.Sleep(200 * time.Millisecond)
	before := runtime.NumGoroutine()
	for range 10 {
		get()
	}
	var after int
	for range 20 {
		runtime.GC()
		time.Sleep(100 * time.Millisecond)
		after = runtime.NumGoroutine()
		if after <= before+2 {
			return
		}
	}
	t.Fatalf("10 dropped Transports: goroutines %d -> %d (each keeps a Follow loop and an event stream to Atlas)", before, after)
}

// A block with no event type (not Atlas's, a proxy's say) is dropped with
// its data, rather than have its data run into the next event's.
func TestReadEventsDropsBlocksWithoutAType(t *testing.T) {
	stream := "data: {\"not\": \"atlas\"}\n\nevent: update\nid: 7\ndata: {\"index\": 7,\ndata:  \"service\": \"files\"}\n\n"
	var got []client.Event
	err := client.ReadEvents(strings.NewReader(stream), func(ev client.Event) error {
		got = append(got, ev)
		return nil
	})
	if err != nil || len(got) != 1 || got[0].Kind != "update" || got[0].ID != "7" || got[0].Service.Service != "files" {
		t.Fatalf("ReadEvents = %+v, %v; want the update of files alone", got, err)
	}
}

// hungInstance is an instance that takes requests and never answers
// (until the test ends).
func hungInstance(t *testing.T) string {
	stop := make(chan struct{})
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	}))
	t.Cleanup(s.Close)
	t.Cleanup(func() { close(stop) })
	return s.URL
}

// within runs f and fails the test when it has not returned by a
// generous deadline: f is expected to end far sooner.
func within(t *testing.T, what string, f func() error) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- f() }()
	select {
	case err := <-errc:
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: still waiting after 30s", what)
		return nil
	}
}

// Without a sidecar the client keeps the sidecar's timeouts: a
// Switchboard-Timeout, else 30 s. Before, a call to an instance that never
// answered waited for ever.
func TestDirectHonoursTimeouts(t *testing.T) {
	a := directSetup(t, hungInstance(t))
	tr := &client.Transport{Sidecar: "none", Atlas: a}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	get := func(header string) error {
		req, _ := http.NewRequest("GET", "service://files/x", nil)
		if header != "" {
			req.Header.Set("Switchboard-Timeout", header)
		}
		res, err := c.Do(req)
		if err == nil {
			res.Body.Close()
		}
		return err
	}
	err := within(t, "GET with Switchboard-Timeout: 100ms of a hung instance", func() error { return get("100ms") })
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "no answer within 100ms") {
		t.Fatalf("GET with Switchboard-Timeout: 100ms of a hung instance = %v; want no answer within 100ms", err)
	}
	defer client.SetDefaultTimeout(100 * time.Millisecond)()
	err = within(t, "GET of a hung instance with the default timeout", func() error { return get("") })
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "no answer within 100ms") {
		t.Fatalf("GET of a hung instance with the default timeout = %v; want no answer within 100ms", err)
	}
	if err := get("soon"); err == nil || !strings.Contains(err.Error(), "Switchboard-Timeout: must be a duration") {
		t.Fatalf("GET with Switchboard-Timeout: soon = %v; want the header's rule", err)
	}
}

// A caller's deadline further than the sidecar's longest timeout (1 h)
// still goes through the sidecar: before, it became a Switchboard-Timeout
// the sidecar refused with 400.
func TestFarDeadlineThroughTheSidecar(t *testing.T) {
	a := directSetup(t, named(t, "a"))
	s, err := sidecar.New(sidecar.Config{Atlas: sidecar.StringList{a.URLs[0]}, Listen: "127.0.0.1:0", Admin: "127.0.0.1:0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown() })
	c := &http.Client{Transport: &client.Transport{Sidecar: s.ListenAddr}}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Hour)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "service://files/x", nil)
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || string(b) != "a GET " {
		t.Fatalf("GET with a 2h deadline through the sidecar = %d %q; want 200 from the instance", res.StatusCode, b)
	}
}

// With no sidecar, a call Atlas will not say where to send (no token, or
// one that may not watch the service) fails with Atlas's refusal: before,
// each call waited 5 s and said Atlas had not answered.
func TestDirectSaysAtlasRefusedIt(t *testing.T) {
	a := atlastest.Start(t, false)
	admin := a.Client()
	host, port, _ := net.SplitHostPort(strings.TrimPrefix(named(t, "a"), "http://"))
	p, _ := strconv.Atoi(port)
	if _, err := admin.Register(t.Context(), "files-0", sb.Registration{Service: "files", Address: host, Port: p}); err != nil {
		t.Fatal(err)
	}
	svc, err := admin.CreateToken(t.Context(), sb.TokenRequest{Name: "web", Role: sb.RoleService, Services: []string{"web"}, Realms: []string{"dev"}})
	if err != nil {
		t.Fatal(err)
	}
	var tr *client.Transport
	for _, tc := range []struct{ token, code string }{{"", sb.EUnauthenticated}, {svc.Secret, sb.EPermissionDenied}} {
		tr = &client.Transport{Sidecar: "none", Atlas: &client.Atlas{URLs: []string{a.URL}, Token: tc.token}}
		defer tr.CloseIdleConnections()
		_, err := (&http.Client{Transport: tr}).Get("service://files/x")
		if sb.ErrorCode(err) != tc.code || !strings.Contains(err.Error(), "service files in realm dev") {
			t.Errorf("GET with token %.6q that may not watch files = %v; want %s naming the service", tc.token, err, tc.code)
		}
	}
	// Once a policy allows it, the same client's calls go through (the
	// stream's snapshot lifts the refusal).
	if _, err := admin.PutPolicy(t.Context(), "dev", "web", []string{"files"}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		res, err := (&http.Client{Transport: tr}).Get("service://files/x")
		if err == nil {
			res.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET once a policy allows it: %v", err)
		}
	}
}

// A stream Atlas refused (a policy removed while it ran) resumed from its
// last event once the policy was back, and so got nothing until the
// service next changed: the sidecar kept refusing calls a policy allowed
// again. After a refusal, Follow starts over with a snapshot.
func TestFollowAfterARefusalStartsWithASnapshot(t *testing.T) {
	a := atlastest.Start(t, false)
	admin := a.Client()
	// A lease longer than the test: the service must not change under it.
	if _, err := admin.Register(t.Context(), "files-0", sb.Registration{Service: "files", Address: "127.0.0.1", Port: 1, TTL: sb.Duration(sb.MaxTTL)}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.PutPolicy(t.Context(), "dev", "web", []string{"files"}); err != nil {
		t.Fatal(err)
	}
	svc, err := admin.CreateToken(t.Context(), sb.TokenRequest{Name: "web", Role: sb.RoleService, Services: []string{"web"}, Realms: []string{"dev"}})
	if err != nil {
		t.Fatal(err)
	}
	var events, refusals atomic.Int32
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	web := &client.Atlas{URLs: []string{a.URL}, Token: svc.Secret}
	go web.Follow(ctx, "dev", []string{"files"}, func(client.Event) { events.Add(1) }, func(err error, _ time.Duration) {
		if sb.ErrorCode(err) == sb.EPermissionDenied {
			refusals.Add(1)
		}
	})
	waitUntil(t, "first snapshot", func() bool { return events.Load() == 1 })
	if _, err := admin.PutPolicy(t.Context(), "dev", "web", []string{"other"}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "refusal once the policy is gone", func() bool { return refusals.Load() > 0 })
	if _, err := admin.PutPolicy(t.Context(), "dev", "web", []string{"files"}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "snapshot once the policy is back", func() bool { return events.Load() == 2 })
}

// With no sidecar, a service no call has asked for in a while stops being
// followed when another is called for the first time: before, every name
// ever called (typos, names from input) kept an event stream on Atlas for
// the Transport's life.
func TestDirectDropsServicesNoCallAskedFor(t *testing.T) {
	defer client.SetUnusedFor(time.Nanosecond)()
	a := directSetup(t, named(t, "a"))
	tr := &client.Transport{Sidecar: "none", Atlas: a}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	watchers := func(service string) int {
		p, err := a.Propagation(t.Context(), "dev", service, 0)
		if err != nil {
			t.Fatal(err)
		}
		return p.Watchers
	}
	get := func(service string) {
		res, err := c.Get("service://" + service + "/x")
		if err == nil {
			res.Body.Close()
		}
	}
	get("typo")
	if n := watchers("typo"); n != 1 {
		t.Fatalf("after a call to typo, %d event streams watch it; want 1", n)
	}
	get("files")
	for deadline := time.Now().Add(30 * time.Second); watchers("typo") != 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("typo, called once long ago, still has %d event streams watching it", watchers("typo"))
		}
	}
	// It is followed again when called again.
	get("typo")
	if n := watchers("typo"); n != 1 {
		t.Fatalf("after a new call to typo, %d event streams watch it; want 1", n)
	}
}

// FuzzRedactURL: an Atlas URL as errors and logs show it has no password
// but the mask, and CheckURL's refusal says no more than it does of the
// URL as shown.
func FuzzRedactURL(f *testing.F) {
	for _, s := range []string{"http://ops:hunter2@10.0.0.2:4400", "http://10.0.0.2:4400", "https://u@h", "http://a@b:c@h/", "http://u:p%zz@h", "ftp://u:secret@h/x", "u:secret@h"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		u, err := url.Parse(raw)
		if err != nil || u.User == nil {
			return
		}
		p, ok := u.User.Password()
		if !ok || p == "" {
			return
		}
		// What the URL shows without any password may hold p's text, and
		// so may the mask with its separator (a password ":").
		bare := *u
		bare.User = url.User(u.User.Username())
		shown := client.RedactURL(raw)
		unmasked := strings.Replace(shown, ":xxxxx@", "@", 1)
		if strings.Contains(unmasked, p) && !strings.Contains(bare.String(), p) {
			t.Fatalf("RedactURL(%q) = %q, showing the password %q", raw, shown, p)
		}
		if err := client.CheckURL(raw); err != nil {
			if err2 := client.CheckURL(shown); err2 == nil || err2.Error() != err.Error() {
				t.Fatalf("CheckURL(%q) = %q; of the URL as shown (%q), %v", raw, err, shown, err2)
			}
		}
	})
}

// OnOpen tells a stream that works again from one that does not: a stream
// resumed after Atlas restarted, with nothing new to send, brings no
// event, yet Atlas answered it.
func TestFollowSaysWhenTheStreamOpens(t *testing.T) {
	a := atlastest.Start(t, true)
	if _, err := a.Client().Register(t.Context(), "files-0", sb.Registration{Service: "files", Address: "127.0.0.1", Port: 1, TTL: sb.Duration(sb.MaxTTL)}); err != nil {
		t.Fatal(err)
	}
	var events, opens, errs atomic.Int32
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.Client().Follow(ctx, "dev", []string{"files"}, func(client.Event) { events.Add(1) },
			func(error, time.Duration) { errs.Add(1) },
			client.OnOpen(func() {
				if events.Load() != int32(opens.Load()) {
					t.Errorf("OnOpen after %d events and %d opens: it must come before the stream's first event", events.Load(), opens.Load())
				}
				opens.Add(1)
			}))
	}()
	waitUntil(t, "first snapshot", func() bool { return opens.Load() == 1 && events.Load() == 1 })
	a.Restart(t, nil)
	waitUntil(t, "the stream open again", func() bool { return opens.Load() == 2 && errs.Load() >= 1 })
	if n := events.Load(); n != 1 {
		t.Fatalf("%d events; want the first snapshot alone (the stream resumed)", n)
	}
	cancel()
	<-done
}

// waitUntil waits up to 30 s for ok, checking every 20 ms.
func waitUntil(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !ok(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 30s", what)
		}
	}
}

// A 200 that is no event stream (a gateway's page) is not Atlas answering:
// Follow reports Atlas unavailable, and OnOpen is not called.
func TestFollowTakesNoPageForAStream(t *testing.T) {
	page := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		io.WriteString(w, "<html>Please log in</html>")
	}))
	defer page.Close()
	var opens atomic.Int32
	errs := make(chan error, 1)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		(&client.Atlas{URLs: []string{page.URL}}).Follow(ctx, "dev", []string{"files"}, func(client.Event) {},
			func(err error, _ time.Duration) {
				select {
				case errs <- err:
				default:
				}
			}, client.OnOpen(func() { opens.Add(1) }))
	}()
	select {
	case err := <-errs:
		if sb.ErrorCode(err) != sb.EUnavailable || !strings.Contains(err.Error(), "not an event stream") {
			t.Fatalf("Follow of a page: %v; want unavailable, not an event stream", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Follow of a page reported nothing in 30s")
	}
	cancel()
	<-done
	if n := opens.Load(); n != 0 {
		t.Fatalf("OnOpen called %d times for a page", n)
	}
}

// Called directly, an upgraded connection (101) could not be written to:
// its body was wrapped in a type that only reads, where net/http hands
// over an io.ReadWriteCloser, which WebSocket clients look for.
func TestDirectUpgradeIsWritable(t *testing.T) {
	echo := httptest.NewServer(http.HandlerFunc(testnet.EchoUpgrade))
	t.Cleanup(echo.Close)
	tr := &client.Transport{Sidecar: "none", Atlas: directSetup(t, echo.URL)}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest("GET", "service://files/ws", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "echo")
	res, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	conn, ok := res.Body.(io.ReadWriteCloser)
	if res.StatusCode != http.StatusSwitchingProtocols || !ok {
		t.Fatalf("status %d, body %T; want 101 and a connection to write to", res.StatusCode, res.Body)
	}
	defer conn.Close()
	io.WriteString(conn, "hello\n")
	got := make([]byte, 6)
	if _, err := io.ReadFull(conn, got); err != nil || string(got) != "hello\n" {
		t.Fatalf("echo = %q, %v", got, err)
	}
}

// A sidecar address that is not host:port (a URL, say) failed every call
// with a DNS error naming a host "http"; it is refused by name.
func TestBadSidecarAddressIsSaid(t *testing.T) {
	for _, tc := range []struct{ field, env, sidecar string }{
		{"Transport.Sidecar", "", "http://127.0.0.1:4000"},
		{"SWITCHBOARD_SIDECAR", "http://127.0.0.1:4000", ""},
		{"SWITCHBOARD_SIDECAR", "127.0.0.1", ""},
	} {
		t.Setenv("SWITCHBOARD_SIDECAR", tc.env)
		_, err := (&http.Client{Transport: &client.Transport{Sidecar: tc.sidecar}}).Get("service://files/x")
		want := tc.field + ": must be the sidecar's host:port, such as 127.0.0.1:4000, or none"
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s %q: %v; want %q", tc.field, tc.env+tc.sidecar, err, want)
		}
	}
}

package service_test

import (
	"bufio"
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/atlas/atlastest"
	"github.com/switchboard-go/switchboard/internal/syncbuf"
	"github.com/switchboard-go/switchboard/internal/testnet"
	"github.com/switchboard-go/switchboard/service"
)

// run starts a service built by build with Atlas unreachable, and returns
// its base URL and a stop function that returns Run's error.
func run(t *testing.T, build func(*service.Service)) (string, *syncbuf.Buffer, func() error) {
	t.Helper()
	logs := &syncbuf.Buffer{}
	restore := service.SetLogOutput(logs)
	t.Cleanup(restore)
	t.Setenv("SWITCHBOARD_LISTEN", "127.0.0.1:0")
	t.Setenv("SWITCHBOARD_ATLAS", "http://127.0.0.1:1")
	t.Setenv("SWITCHBOARD_CONFIG_DB__PASSWORD", "hunter2")
	t.Setenv("SWITCHBOARD_CONFIG_LOG", "debug")
	t.Setenv("SWITCHBOARD_CONFIG_DRAIN_TIMEOUT", "1s")
	t.Setenv("API_SECRET", "s3cr3t")
	svc := service.New("identity")
	build(svc)
	base, stop := serve(t, svc)
	return base, logs, stop
}

// serve runs svc until the test ends, and returns its base URL and a stop
// function that returns Run's error.
func serve(t *testing.T, svc *service.Service) (string, func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- svc.Run(ctx) }()
	actx, acancel := context.WithTimeout(ctx, 10*time.Second)
	defer acancel()
	addr, err := svc.Addr(actx)
	if err != nil {
		cancel()
		t.Fatalf("service did not listen: %v / %v", err, <-errc)
	}
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		return <-errc
	}
	t.Cleanup(func() { stop() })
	return "http://" + addr, stop
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func TestStandardEndpoints(t *testing.T) {
	redisUp := true
	var mu sync.Mutex
	base, logs, stop := run(t, func(s *service.Service) {
		s.Check("redis", func(context.Context) (string, error) {
			mu.Lock()
			defer mu.Unlock()
			if !redisUp {
				return "", errors.New("redis down")
			}
			return "redis ok", nil
		})
		s.HandleFunc("GET /teams", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "teams") })
		s.HandleFunc("GET /boom", func(w http.ResponseWriter, r *http.Request) { panic("kaboom") })
	})
	if code, body := get(t, base+"/teams"); code != 200 || body != "teams" {
		t.Fatalf("/teams = %d %q", code, body)
	}
	code, body := get(t, base+"/healthcheck")
	var rep struct {
		Status  string
		Results []struct {
			Checker string
			Passed  bool
		}
	}
	json.Unmarshal([]byte(body), &rep)
	if code != 200 || rep.Status != "success" || len(rep.Results) != 1 || rep.Results[0].Checker != "redis" {
		t.Fatalf("/healthcheck = %d %s", code, body)
	}
	for _, p := range []string{"/livez", "/readyz"} {
		if code, body := get(t, base+p); code != 200 || body != "ok" {
			t.Fatalf("%s = %d %q", p, code, body)
		}
	}
	if code, body := get(t, base+"/boom"); code != 500 || !strings.Contains(body, `"code":"internal"`) {
		t.Fatalf("/boom = %d %q", code, body)
	}
	if !strings.Contains(logs.String(), `"panic":"kaboom"`) || !strings.Contains(logs.String(), "service_test.go") {
		t.Fatalf("the panic and its stack are not in the log:\n%s", logs.String())
	}
	// /environment: provenance, masked secrets.
	code, body = get(t, base+"/environment")
	var env struct {
		Service map[string]any
		Go      map[string]any
		Process struct{ Environ map[string]string }
		Config  struct {
			FromAtlas bool `json:"from_atlas"`
			Keys      map[string]struct {
				Value  any
				Source string
			}
		}
	}
	if err := json.Unmarshal([]byte(body), &env); err != nil || code != 200 {
		t.Fatalf("/environment = %d %v", code, err)
	}
	if env.Config.FromAtlas || env.Config.Keys["db.password"].Value != service.Masked ||
		env.Config.Keys["db.password"].Source != "env:SWITCHBOARD_CONFIG_DB__PASSWORD" ||
		env.Config.Keys["log"].Value != "debug" || env.Process.Environ["API_SECRET"] != service.Masked ||
		strings.Contains(body, "hunter2") || strings.Contains(body, "s3cr3t") || env.Go["version"] == nil {
		t.Fatalf("/environment:\n%s", body)
	}
	if code, body := get(t, base+"/metrics"); code != 200 || !strings.Contains(body, `http_requests_total{code="200",route="GET /teams"} 1`) {
		t.Fatalf("/metrics = %d, no request counter for GET /teams", code)
	}
	// Every log line carries service, realm and instance.
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil || m["service"] != "identity" || m["realm"] != "dev" || m["instance"] == nil {
			t.Fatalf("log line without service, realm, instance: %s", line)
		}
	}
	if !strings.Contains(logs.String(), `"msg":"access"`) || !strings.Contains(logs.String(), `"route":"GET /teams"`) {
		t.Fatalf("no access log:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "running on local config alone") {
		t.Fatal("the log does not say Atlas was unreachable")
	}
	mu.Lock()
	redisUp = false
	mu.Unlock()
	if err := stop(); err != nil {
		t.Fatalf("Run = %v after a clean shutdown", err)
	}
}

func TestShutdownFailsReadinessThenDrains(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{})
	base, _, stop := run(t, func(s *service.Service) {
		s.HandleFunc("GET /slow", func(w http.ResponseWriter, r *http.Request) {
			close(started)
			<-release
			io.WriteString(w, "done")
		})
	})
	slow := make(chan string, 1)
	go func() {
		_, body := get(t, base+"/slow")
		slow <- body
	}()
	<-started
	done := make(chan error, 1)
	go func() { done <- stop() }()
	// While it drains, readiness fails (sidecars see it) and the request
	// in flight finishes.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if code, _ := get(t, base+"/readyz"); code == 500 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if code, body := get(t, base+"/readyz?verbose"); code != 500 || !strings.Contains(body, "[-]shutdown failed") {
		t.Fatalf("readyz while draining = %d %q", code, body)
	}
	close(release)
	if body := <-slow; body != "done" {
		t.Fatalf("the request in flight got %q", body)
	}
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
}

// testDriver is a database/sql driver whose Ping fails on demand: the
// kit's wiring (open from config, check) is what is under test.
type testDriver struct{ down *bool }

func (d testDriver) Open(string) (driver.Conn, error) { return testConn(d), nil }

type testConn testDriver

func (c testConn) Prepare(string) (driver.Stmt, error) { return nil, errors.New("not supported") }
func (c testConn) Close() error                        { return nil }
func (c testConn) Begin() (driver.Tx, error)           { return nil, errors.New("not supported") }
func (c testConn) Ping(context.Context) error {
	if *c.down {
		return errors.New("database unreachable")
	}
	return nil
}

var dbDown bool

func init() { sql.Register("switchboardtest", testDriver{down: &dbDown}) }

func TestDB(t *testing.T) {
	t.Setenv("SWITCHBOARD_CONFIG_DATABASE", `{"driver":"switchboardtest","dsn":"x"}`)
	var svc *service.Service
	base, _, _ := run(t, func(s *service.Service) {
		svc = s
		s.Health().SuccessTTL = 0 // see the failure at once
	})
	db, err := svc.DB()
	if err != nil || db == nil {
		t.Fatalf("DB() = %v, %v", db, err)
	}
	if code, body := get(t, base+"/readyz?verbose"); code != 200 || !strings.Contains(body, "[+]database ok") {
		t.Fatalf("readyz with the database up = %d %q", code, body)
	}
	dbDown = true
	defer func() { dbDown = false }()
	if code, body := get(t, base+"/readyz?verbose"); code != 500 || !strings.Contains(body, "database unreachable") {
		t.Fatalf("readyz with the database down = %d %q", code, body)
	}
}

// A check of the service's own named database kept DB from adding its
// ping, without a word; it says so now.
func TestDBBesideACheckOfTheSameName(t *testing.T) {
	t.Setenv("SWITCHBOARD_CONFIG_DATABASE", `{"driver":"switchboardtest","dsn":"x"}`)
	var svc *service.Service
	_, logs, _ := run(t, func(s *service.Service) {
		svc = s
		s.Check("database", func(context.Context) (string, error) { return "mine", nil })
	})
	if db, err := svc.DB(); err != nil || db == nil {
		t.Fatalf("DB() = %v, %v", db, err)
	}
	if !strings.Contains(logs.String(), "DB adds no check of its own: a check named database is there already") {
		t.Fatalf("log: %s\nwant a warning that DB's check was not added", logs.String())
	}
}

// A sidecar whose host: differs from the host's name registers the
// service under an id the kit did not expect, and the kit then thought
// itself unannounced and skipped waiting for the sidecars. It now also
// finds itself by its port on an address of this host's.
func TestFindSelf(t *testing.T) {
	list := []*sb.Instance{
		{ID: "identity-web1-8080", Address: "192.0.2.1", Port: 8080},
		{ID: "identity-itest-8080", Address: "127.0.0.1", Port: 8080},
	}
	tests := []struct {
		id, listen, want string
	}{
		{"identity-web1-8080", ":8080", "identity-web1-8080"},  // its id
		{"identity-host-8080", ":8080", "identity-itest-8080"}, // its port, on this host
		{"identity-host-9090", ":9090", ""},                    // no instance at its port
		{"identity-host-x", "", ""},                            // no port to match
	}
	for _, tt := range tests {
		got := ""
		if in := service.FindSelf(list, tt.id, tt.listen); in != nil {
			got = in.ID
		}
		if got != tt.want {
			t.Errorf("findSelf(%s, %q) = %q; want %q", tt.id, tt.listen, got, tt.want)
		}
	}
	if in := service.FindSelf(list[:1], "identity-host-8080", ":8080"); in != nil {
		t.Errorf("findSelf matched %s, at an address that is not this host's", in.ID)
	}
}

// DB kept its first error for ever: a service that asked for its
// database before the config (or the driver) was there could never open
// it. A later call tries again.
func TestDBErrorIsNotKept(t *testing.T) {
	t.Setenv("SWITCHBOARD_CONFIG_DATABASE", `{"driver":"switchboardtest-late","dsn":"x"}`)
	var svc *service.Service
	run(t, func(s *service.Service) { svc = s })
	if _, err := svc.DB(); err == nil || !strings.Contains(err.Error(), "switchboardtest-late") {
		t.Fatalf("DB() before the driver is registered = %v; want an error naming it", err)
	}
	sql.Register("switchboardtest-late", testDriver{down: new(bool)})
	if db, err := svc.DB(); err != nil || db == nil {
		t.Fatalf("DB() once the driver is there = %v, %v; want the database", db, err)
	}
}

// Review findings: the drain that runs out says so and cuts what is left,
// Client is safe to call from handlers at once, /environment redacts the
// credentials of the URLs it shows, and a handler that writes nothing is
// logged and counted as the 200 it sends.
func TestDrainTimeoutIsAnError(t *testing.T) {
	started := make(chan struct{})
	base, _, stop := run(t, func(s *service.Service) {
		s.HandleFunc("GET /slow", func(w http.ResponseWriter, r *http.Request) {
			close(started)
			time.Sleep(5 * time.Second)
		})
	})
	go http.Get(base + "/slow")
	<-started
	if err := stop(); !errors.Is(err, service.ErrDrainTimeout) {
		t.Fatalf("Run after a drain that ran out = %v; want ErrDrainTimeout", err)
	}
}

func TestClientFromManyHandlersAtOnce(t *testing.T) {
	var clients sync.Map
	base, _, _ := run(t, func(s *service.Service) {
		s.HandleFunc("GET /c", func(w http.ResponseWriter, r *http.Request) { clients.Store(s.Client(), true) })
	})
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if res, err := http.Get(base + "/c"); err == nil {
				res.Body.Close()
			}
		}()
	}
	wg.Wait()
	n := 0
	clients.Range(func(any, any) bool { n++; return true })
	if n != 1 {
		t.Fatalf("Client returned %d different clients; want one", n)
	}
}

func TestEnvironmentRedactsURLCredentials(t *testing.T) {
	t.Setenv("SWITCHBOARD_SIDECAR", "http://admin:hunter2@127.0.0.1:4001")
	// A URL that does not parse was shown whole, its password with it.
	t.Setenv("LANG", "http://admin:hunter3@127.0.0.1:4001/%zz")
	base, _, _ := run(t, func(*service.Service) {})
	code, body := get(t, base+"/environment")
	if code != 200 || strings.Contains(body, "hunter2") || !strings.Contains(body, "admin:xxxxx@127.0.0.1:4001") {
		t.Fatalf("/environment = %d; want the sidecar URL with its password redacted:\n%s", code, body)
	}
	if strings.Contains(body, "hunter3") || !strings.Contains(body, `"LANG": "`+service.Masked+`"`) {
		t.Fatalf("/environment shows a URL that does not parse, with its password:\n%s", body)
	}
}

func TestHandlerThatWritesNothingIsLoggedAs200(t *testing.T) {
	base, logs, _ := run(t, func(s *service.Service) {
		s.HandleFunc("GET /empty", func(http.ResponseWriter, *http.Request) {})
	})
	if code, _ := get(t, base+"/empty"); code != 200 {
		t.Fatalf("GET /empty = %d", code)
	}
	if !strings.Contains(logs.String(), `"route":"GET /empty","status":200`) {
		t.Fatalf("access log: %s", logs.String())
	}
}

// The config key log sets the log level: at warn, requests are not
// logged; a level that is none is refused at start, naming the key.
func TestLogLevelFromConfig(t *testing.T) {
	base, logs, stop := run(t, func(s *service.Service) {
		s.HandleFunc("GET /quiet", func(http.ResponseWriter, *http.Request) {})
	})
	get(t, base+"/quiet")
	if !strings.Contains(logs.String(), `"route":"GET /quiet"`) {
		t.Fatalf("at debug, the access log has no line for GET /quiet: %s", logs.String())
	}

	t.Setenv("SWITCHBOARD_CONFIG_LOG", "warn")
	logs2 := &syncbuf.Buffer{}
	t.Cleanup(service.SetLogOutput(logs2))
	svc := service.New("identity")
	svc.HandleFunc("GET /quiet", func(http.ResponseWriter, *http.Request) {})
	base, stop = serve(t, svc)
	get(t, base+"/quiet")
	stop()
	if out := logs2.String(); strings.Contains(out, `"route":"GET /quiet"`) || strings.Contains(out, `"level":"INFO"`) {
		t.Fatalf("at warn, INFO lines were logged: %s", out)
	}

	// slog's own parser took "debug+3" and "warn-4" too, levels the
	// message does not name.
	for _, bad := range []string{"loud", "debug+3", "warn-4"} {
		t.Setenv("SWITCHBOARD_CONFIG_LOG", bad)
		if err := service.New("identity").Run(context.Background()); err == nil || !strings.Contains(err.Error(), `config: log: must be debug, info, warn or error, got "`+bad+`"`) {
			t.Fatalf("log: %s = %v; want an error naming the key and the levels", bad, err)
		}
	}
}

// Run closed the database reading s.db without the lock DB()
// writes it under: a worker (or a request) that opens the database while
// the service drains raced with the end of Run (go test -race).
func TestDBOpenedWhileRunDrains(t *testing.T) {
	t.Setenv("SWITCHBOARD_CONFIG_DATABASE", `{"driver":"switchboardtest","dsn":"x"}`)
	var svc *service.Service
	_, _, stop := run(t, func(s *service.Service) { svc = s })
	done := make(chan error, 1)
	go func() { done <- stop() }()
	// Run waits for the sidecars (Atlas is unreachable: a grace of
	// drain_timeout, 1s here) before it drains and closes the database.
	time.Sleep(300 * time.Millisecond)
	svc.DB()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	// After Run it handed back the closed handle, or opened one that
	// nothing would close.
	if db, err := svc.DB(); err == nil || !strings.Contains(err.Error(), "closed, as Run has returned") {
		t.Fatalf("DB after Run = %v, %v; want an error saying Run closed it", db, err)
	}
}

// A drain_timeout that is not a duration was replaced by 10s
// without a word, and a negative one made the shutdown cut every request
// at once; like log, a bad value stops the service at start, naming the
// key and the rule.
func TestDrainTimeoutMustBeAPositiveDuration(t *testing.T) {
	t.Setenv("SWITCHBOARD_ATLAS", "http://127.0.0.1:1")
	t.Setenv("SWITCHBOARD_LISTEN", "127.0.0.1:0")
	t.Cleanup(service.SetLogOutput(&strings.Builder{}))
	stopped, cancel := context.WithCancel(context.Background())
	cancel() // Run stops at once when it runs at all
	for _, bad := range []string{"ten", "-1s", "0"} {
		t.Setenv("SWITCHBOARD_CONFIG_DRAIN_TIMEOUT", bad)
		err := service.New("identity").Run(stopped)
		if err == nil || !strings.Contains(err.Error(), "config: drain_timeout: must be a positive duration such as 10s, got "+bad) {
			t.Errorf("drain_timeout %s: Run = %v; want an error naming the key and the rule", bad, err)
		}
	}
	for in, want := range map[string]string{"3s": "3s", "2": "2s"} {
		t.Setenv("SWITCHBOARD_CONFIG_DRAIN_TIMEOUT", in)
		if got := service.New("identity").DrainTimeout.String(); got != want {
			t.Errorf("drain_timeout %s = %s; want %s", in, got, want)
		}
	}
}

// A service that Atlas refuses for want of a token says so, and what to
// set: it said "Atlas unreachable", with an empty atlas field when the
// URL was the default.
func TestAMissingTokenIsSaid(t *testing.T) {
	a := atlastest.Start(t, false)
	logs := &syncbuf.Buffer{}
	t.Cleanup(service.SetLogOutput(logs))
	t.Setenv("SWITCHBOARD_LISTEN", "127.0.0.1:0")
	t.Setenv("SWITCHBOARD_ATLAS", a.URL)
	t.Setenv("SWITCHBOARD_TOKEN", "")
	service.New("identity")
	if out := logs.String(); !strings.Contains(out, "set SWITCHBOARD_TOKEN to a service token") || !strings.Contains(out, "a bearer token is required") || !strings.Contains(out, `"atlas":"`+a.URL+`"`) {
		t.Fatalf("log: %s\nwant it to name the missing token, the error and Atlas's URL", out)
	}
}

// A handler that panicked after its answer began sent it as if whole: a
// 200 with half a body, counted and logged as a success. The connection
// is cut instead, so that the caller sees the answer fail.
func TestPanicAfterTheAnswerBeganCutsTheConnection(t *testing.T) {
	base, logs, _ := run(t, func(s *service.Service) {
		s.HandleFunc("GET /list", func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, `{"items":[1,2,`)
			w.(http.Flusher).Flush()
			panic("half way")
		})
	})
	res, err := http.Get(base + "/list")
	if err == nil {
		_, err = io.ReadAll(res.Body)
		res.Body.Close()
	}
	if err == nil {
		t.Fatal("the answer of a handler that panicked half way read whole")
	}
	if out := logs.String(); !strings.Contains(out, `"panic":"half way"`) || !strings.Contains(out, `"aborted":true`) {
		t.Fatalf("log: %s\nwant the panic, and the access line saying the answer was cut", out)
	}
}

// WebSocket servers check the ResponseWriter for http.Hijacker; the kit's
// writer had none, so they answered 500.
func TestHandlersMayHijack(t *testing.T) {
	base, logs, _ := run(t, func(s *service.Service) {
		s.HandleFunc("GET /ws", testnet.EchoUpgrade)
	})
	req, _ := http.NewRequest("GET", base+"/ws", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "echo")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	conn, ok := res.Body.(io.ReadWriteCloser)
	if res.StatusCode != http.StatusSwitchingProtocols || !ok {
		t.Fatalf("status %d, body %T; want 101 and the connection", res.StatusCode, res.Body)
	}
	io.WriteString(conn, "hello\n")
	got, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || got != "hello\n" {
		t.Fatalf("echo = %q, %v", got, err)
	}
	conn.Close()
	eventuallyLogged(t, logs, `"path":"/ws","route":"GET /ws","status":101`)
}

// eventuallyLogged waits (a minute at most: a hang, not a slow machine)
// until the log holds want.
func eventuallyLogged(t *testing.T, logs *syncbuf.Buffer, want string) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !strings.Contains(logs.String(), want); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("log: %s\nwant %s", logs.String(), want)
		}
	}
}

// New checks SWITCHBOARD_ATLAS: an address without its scheme read as
// Atlas down, and the service ran on local config alone without a word
// of why. And Metrics works when New failed, so that the error reaches Run
// instead of a nil pointer.
func TestNewRefusesABadAtlasURL(t *testing.T) {
	t.Setenv("SWITCHBOARD_LISTEN", "127.0.0.1:0")
	t.Setenv("SWITCHBOARD_ATLAS", "127.0.0.1:4400")
	t.Cleanup(service.SetLogOutput(&strings.Builder{}))
	svc := service.New("identity")
	svc.Metrics().MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "jobs_total", Help: "Jobs."}))
	stopped, cancel := context.WithCancel(context.Background())
	cancel()
	err := svc.Run(stopped)
	if err == nil || !strings.Contains(err.Error(), `SWITCHBOARD_ATLAS: must be an http:// or https:// URL such as http://127.0.0.1:4400, got "127.0.0.1:4400"`) {
		t.Fatalf("Run = %v; want an error naming SWITCHBOARD_ATLAS and the rule", err)
	}
}

// The drain asked Atlas to wait for all the time left; Atlas adds up to a
// sixteenth, so the request's deadline came first and the warning that the
// instance was still in rotation was never logged.
func TestStillInRotationAtTheEndOfTheDrainIsSaid(t *testing.T) {
	a := atlastest.Start(t, true)
	logs := &syncbuf.Buffer{}
	t.Cleanup(service.SetLogOutput(logs))
	t.Setenv("SWITCHBOARD_LISTEN", "127.0.0.1:0")
	t.Setenv("SWITCHBOARD_ATLAS", a.URL)
	t.Setenv("SWITCHBOARD_INSTANCE", "identity-1")
	t.Setenv("SWITCHBOARD_CONFIG_DRAIN_TIMEOUT", "1s")
	// Registered by hand: no sidecar's check takes it out of rotation.
	if _, err := a.Client().Register(context.Background(), "identity-1", sb.Registration{Service: "identity", Address: "127.0.0.1", Port: 5999}); err != nil {
		t.Fatal(err)
	}
	_, stop := serve(t, service.New("identity"))
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if out := logs.String(); !strings.Contains(out, "still in rotation at the end of the drain timeout") {
		t.Fatalf("log: %s\nwant the warning that the instance stayed in rotation", out)
	}
}

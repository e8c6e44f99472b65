package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/balance"
	"github.com/switchboard-go/switchboard/internal/testnet"
)

// frontend runs an HTTP proxy on loopback over a table whose pools the
// test fills by hand.
type frontend struct {
	t     testing.TB
	h     *HTTP
	url   string
	table *Table
}

func newFrontend(t testing.TB, options ...func(*HTTP)) *frontend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &frontend{t: t, table: &Table{Realm: "dev"}}
	f.h = &HTTP{Table: f.table, FirstWatch: 50 * time.Millisecond}
	for _, o := range options {
		o(f.h)
	}
	go f.h.Serve(ln)
	f.url = "http://" + ln.Addr().String()
	t.Cleanup(func() { f.h.Shutdown() })
	return f
}

func (f *frontend) set(service string, backends ...string) {
	var ins []*sb.Instance
	for i, b := range backends {
		host, port, _ := net.SplitHostPort(strings.TrimPrefix(b, "http://"))
		p, _ := strconv.Atoi(port)
		ins = append(ins, &sb.Instance{ID: fmt.Sprintf("%s-%d", service, i), Address: host, Port: p, Status: sb.Passing, Enabled: true})
	}
	f.table.Get(service).Update(ins, 1)
}

// dial opens a raw connection to the frontend, closed when the test ends.
func (f *frontend) dial() net.Conn {
	f.t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(f.url, "http://"))
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { c.Close() })
	return c
}

func (f *frontend) do(method, service, path, body string, hdr ...string) (*http.Response, string) {
	f.t.Helper()
	return f.send(method, service, path, strings.NewReader(body), int64(len(body)), hdr...)
}

// send is do with a body read from r as the request goes out: length
// bytes, or -1 for a length not known (sent chunked).
func (f *frontend) send(method, service, path string, r io.Reader, length int64, hdr ...string) (*http.Response, string) {
	f.t.Helper()
	req, _ := http.NewRequest(method, f.url+path, r)
	req.ContentLength = length
	if service != "" {
		req.Header.Set(ServiceHeader, service)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, string(b)
}

func testBackend(t *testing.T, name string) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Backend", name)
		w.Header().Set("X-Saw-Connection-Header", r.Header.Get("X-Hop"))
		fmt.Fprintf(w, "%s %s %s %s xff=%s", name, r.Method, r.URL.RequestURI(), b, r.Header.Get("X-Forwarded-For"))
	}))
	t.Cleanup(s.Close)
	return s
}

// deadAddr is a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

func TestRoutesAndBalances(t *testing.T) {
	f := newFrontend(t)
	a, b := testBackend(t, "a"), testBackend(t, "b")
	f.set("identity", a.URL, b.URL)
	seen := map[string]int{}
	for range 200 {
		res, body := f.do("GET", "identity", "/teams?x=1", "")
		if res.StatusCode != 200 || !strings.Contains(body, "GET /teams?x=1") {
			t.Fatalf("GET = %d %q", res.StatusCode, body)
		}
		seen[res.Header.Get("X-Backend")]++
	}
	if seen["a"] < 40 || seen["b"] < 40 {
		t.Fatalf("load split %v; want both instances used", seen)
	}
	// HAProxy (and HTTP/2) lower-case header names.
	lreq, _ := http.NewRequest("GET", f.url+"/teams", nil)
	lreq.Header["switchboard-service"] = []string{"identity"}
	lres, err := http.DefaultClient.Do(lreq)
	if err != nil {
		t.Fatal(err)
	}
	lres.Body.Close()
	if lres.StatusCode != 200 {
		t.Fatalf("lower-case service header = %d", lres.StatusCode)
	}
	// The Host forms route without the header.
	req, _ := http.NewRequest("POST", f.url+"/x", strings.NewReader("hi"))
	req.Host = "identity.localhost:4000"
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || !strings.Contains(string(body), "POST /x hi xff=127.0.0.1") {
		t.Fatalf("Host routing = %d %q", res.StatusCode, body)
	}
}

func TestHopByHopHeadersAreDropped(t *testing.T) {
	f := newFrontend(t)
	f.set("a", testBackend(t, "a").URL)
	res, _ := f.do("GET", "a", "/", "", "Connection", "X-Hop", "X-Hop", "secret")
	if got := res.Header.Get("X-Saw-Connection-Header"); got != "" {
		t.Fatalf("a header named by Connection reached the instance: %q", got)
	}
}

// TestHeadersNamedByEveryConnectionHeaderAreDropped: a request may carry
// several Connection headers (RFC 9110, 5.3: one list); the headers each
// of them names are dropped, as net/http's proxy drops them. Before, only
// those the first one named were: X-Secret reached the instance.
func TestHeadersNamedByEveryConnectionHeaderAreDropped(t *testing.T) {
	got := make(chan http.Header, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got <- r.Header.Clone() }))
	defer srv.Close()
	f := newFrontend(t)
	f.set("a", srv.URL)
	c := f.dial()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	res, _ := exchange(t, c, "GET / HTTP/1.1\r\nHost: a.localhost\r\nConnection: X-Hop\r\nConnection: X-Secret, close\r\n"+
		"X-Hop: 1\r\nX-Secret: 2\r\nX-Kept: 3\r\n\r\n")
	h := <-got
	for _, k := range []string{"X-Hop", "X-Secret", "Connection"} {
		if v := h.Values(k); len(v) > 0 {
			t.Errorf("%s: %q reached the instance", k, v)
		}
	}
	if h.Get("X-Kept") != "3" {
		t.Errorf("X-Kept = %q, want 3", h.Get("X-Kept"))
	}
	if !res.Close {
		t.Error("the client's Connection: close was not kept")
	}
}

// A streamed answer whose Connection names Content-Length keeps it: the
// sidecar deleted it, and the caller's answer ended early (unexpected
// EOF). Headers Connection names otherwise still go.
func TestConnectionNamingTheLengthKeepsIt(t *testing.T) {
	big := strings.Repeat("x", 4<<20) // streamed on, not read whole
	addr, _ := rawInstance(t, func(_, _ int64, c net.Conn) bool {
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4194304\r\nConnection: Content-Length, X-Hop\r\nX-Hop: 1\r\n\r\n"+big)
		return true
	})
	f := newFrontend(t)
	f.set("a", addr)
	c := f.dial()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	res, body := exchange(t, c, "GET / HTTP/1.1\r\nHost: a.localhost\r\n\r\n")
	if string(body) != big || res.Header.Get("X-Hop") != "" {
		t.Fatalf("answer of %d bytes with X-Hop %q; want %d, without X-Hop", len(body), res.Header.Get("X-Hop"), len(big))
	}
}

// TestForwardedForHeadersBecomeOneList: a request with several
// X-Forwarded-For headers reaches the instance with one, the caller's
// address last, as net/http's proxy sends it. Before, the caller's address
// was appended to the first and a later one went on after it: an instance
// taking the last address as the one its sidecar saw got the one the
// client wrote.
func TestForwardedForHeadersBecomeOneList(t *testing.T) {
	got := make(chan []string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got <- r.Header.Values("X-Forwarded-For") }))
	defer srv.Close()
	f := newFrontend(t)
	f.set("a", srv.URL)
	c := f.dial()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	exchange(t, c, "GET / HTTP/1.1\r\nHost: a.localhost\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n")
	if xff, want := <-got, []string{"10.0.0.1, 6.6.6.6, 127.0.0.1"}; !slices.Equal(xff, want) {
		t.Fatalf("X-Forwarded-For = %q, want %q", xff, want)
	}
}

// TestRequestTrailersAreDropped: the trailer section of a chunked request
// neither reaches the instance as headers nor names the service: the
// request goes on with a Content-Length, where trailers have no place.
func TestRequestTrailersAreDropped(t *testing.T) {
	got := make(chan http.Header, 4)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		h := r.Header.Clone()
		for k, v := range r.Trailer {
			h["Trailer-"+k] = v
		}
		got <- h
		w.Write(b)
	}))
	defer srv.Close()
	f := newFrontend(t)
	f.set("a", srv.URL)
	send := func(raw string) string {
		t.Helper()
		c := f.dial()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, raw); err != nil {
			t.Fatal(err)
		}
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		return fmt.Sprintf("%d %s", res.StatusCode, b)
	}
	answer := send("POST / HTTP/1.1\r\nHost: a.localhost\r\nX-Same: header\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" +
		"5\r\nhello\r\n0\r\nX-Evil: trailer\r\nX-Same: trailer\r\n\r\n")
	if answer != "200 hello" {
		t.Fatalf("answer = %q", answer)
	}
	h := <-got
	if h.Get("X-Evil") != "" || h.Get("Trailer-X-Evil") != "" || h.Get("Trailer") != "" {
		t.Errorf("a trailer field reached the instance: %v", h)
	}
	if v := h.Values("X-Same"); len(v) != 1 || v[0] != "header" {
		t.Errorf("X-Same = %q, want the header section's value alone", v)
	}
	// A trailer does not name the service a request goes to.
	answer = send("POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" +
		"5\r\nhello\r\n0\r\nSwitchboard-Service: a\r\n\r\n")
	if !strings.HasPrefix(answer, "400 ") || !strings.Contains(answer, "no target service") {
		t.Errorf("a service named in the trailer: %q, want 400 naming no target service", answer)
	}
}

func errorOf(t *testing.T, body string) sb.Error {
	t.Helper()
	var e struct{ Error sb.Error }
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		t.Fatalf("error body %q: %v", body, err)
	}
	return e.Error
}

func TestOwnAnswers(t *testing.T) {
	f := newFrontend(t)
	res, body := f.do("GET", "", "/", "")
	if res.StatusCode != 400 || !strings.Contains(errorOf(t, body).Message, "no target service") {
		t.Fatalf("no service = %d %s", res.StatusCode, body)
	}
	res, body = f.do("GET", "nobody", "/", "")
	if res.StatusCode != 503 || !strings.Contains(errorOf(t, body).Message, "service nobody in realm dev") {
		t.Fatalf("unwatched service = %d %s", res.StatusCode, body)
	}
	f.set("empty")
	res, body = f.do("GET", "empty", "/", "")
	if res.StatusCode != 503 || errorOf(t, body).Code != sb.EUnavailable || errorOf(t, body).Message != "service empty in realm dev has no routable instance: Atlas lists none (is the name right, and is the service announced?)" {
		t.Fatalf("empty service = %d %s", res.StatusCode, body)
	}
	f.table.Get("sick").Update([]*sb.Instance{
		{ID: "sick-1", Address: "127.0.0.1", Port: 1, Status: sb.Critical, Enabled: true},
		{ID: "sick-2", Address: "127.0.0.1", Port: 2, Status: sb.Passing, Enabled: false},
	}, 1)
	res, body = f.do("GET", "sick", "/", "")
	if res.StatusCode != 503 || !strings.HasSuffix(errorOf(t, body).Message, "has no routable instance: of 2, 1 critical (checks failing, or not passing yet) and 1 disabled") {
		t.Fatalf("service with a critical and a disabled instance = %d %s", res.StatusCode, body)
	}
	f.set("dead", deadAddr(t), deadAddr(t))
	res, body = f.do("POST", "dead", "/", "x")
	if res.StatusCode != 502 || errorOf(t, body).Code != sb.EBadGateway || !strings.Contains(errorOf(t, body).Message, "service dead in realm dev: every try failed") {
		t.Fatalf("dead service = %d %s", res.StatusCode, body)
	}
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { time.Sleep(2 * time.Second) }))
	defer slow.Close()
	f.set("slow", slow.URL)
	res, body = f.do("GET", "slow", "/", "", TimeoutHeader, "100ms")
	if res.StatusCode != 504 || errorOf(t, body).Code != sb.EDeadlineExceeded || !strings.Contains(errorOf(t, body).Message, "service slow in realm dev: no answer within 100ms") {
		t.Fatalf("slow service = %d %s", res.StatusCode, body)
	}
	res, body = f.do("GET", "slow", "/", "", TimeoutHeader, "soon")
	if res.StatusCode != 400 || !strings.Contains(errorOf(t, body).Message, "Switchboard-Timeout: must be a duration") {
		t.Fatalf("bad timeout = %d %s", res.StatusCode, body)
	}
}

// TestUnreadableRequestsGetJSONErrors: what fasthttp cannot read is
// answered with the sidecar's JSON error, like everything else it answers,
// and the answer does not echo the request's bytes.
func TestUnreadableRequestsGetJSONErrors(t *testing.T) {
	f := newFrontend(t)
	for _, tc := range []struct {
		name, raw string
		status    int
		code      string
		message   string
	}{
		{"malformed", "GET / HTTP/1.1\r\nHost: a.localhost\r\nAuthorization: Bearer s3cret\r\nno colon here\r\n\r\n", 400, sb.EInvalid, "malformed request"},
		{"header too large", "GET / HTTP/1.1\r\nHost: a.localhost\r\nX-Big: " + strings.Repeat("x", 20<<10) + "\r\n\r\n", 431, sb.ETooLarge, "request header: larger than the sidecar's limit of 16 KiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := f.dial()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			res, b := exchange(t, c, tc.raw)
			e := errorOf(t, string(b))
			if res.StatusCode != tc.status || e.Code != tc.code || !strings.Contains(e.Message, tc.message) {
				t.Fatalf("answer = %d %s, want %d %s %q", res.StatusCode, b, tc.status, tc.code, tc.message)
			}
			if res.Header.Get("Content-Type") != "application/json" || !res.Close {
				t.Errorf("Content-Type %q, close %v: want JSON, and the connection closed", res.Header.Get("Content-Type"), res.Close)
			}
			if strings.Contains(string(b), "s3cret") {
				t.Errorf("the answer echoes the request: %s", b)
			}
		})
	}
}

// TestPolicyDenies: a service whose pool is denied (Atlas refused to let
// this host watch it) answers 403 with the pool's message.
func TestPolicyDenies(t *testing.T) {
	f := newFrontend(t)
	f.table.Get("slow").Deny(sb.Errorf(sb.EPermissionDenied, "service web may not call service slow in realm dev"))
	res, body := f.do("GET", "slow", "/", "")
	if res.StatusCode != 403 || !strings.Contains(errorOf(t, body).Message, "may not call service slow") {
		t.Fatalf("forbidden = %d %s", res.StatusCode, body)
	}
}

func TestRetriesAConnectFailureForEveryMethod(t *testing.T) {
	f := newFrontend(t)
	live := testBackend(t, "live")
	f.set("a", deadAddr(t), live.URL)
	for range 50 {
		res, body := f.do("POST", "a", "/pay", "1")
		if res.StatusCode != 200 || !strings.Contains(body, "live POST /pay 1") {
			t.Fatalf("POST with one dead instance = %d %q", res.StatusCode, body)
		}
	}
}

// TestNoRetryOfAStartedNonIdempotentRequest: an instance that takes a POST
// and drops the connection is not sent the POST again; a GET is retried.
func TestNoRetryOfAStartedNonIdempotentRequest(t *testing.T) {
	var mu sync.Mutex
	hits := 0
	drop := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits++
		mu.Unlock()
		panic(http.ErrAbortHandler) // close without answering
	}))
	defer drop.Close()
	f := newFrontend(t)
	f.set("a", drop.URL)
	res, _ := f.do("POST", "a", "/", "x")
	mu.Lock()
	n := hits
	mu.Unlock()
	if res.StatusCode != 502 || n != 1 {
		t.Fatalf("POST to a dropping instance = %d after %d tries; want 502 after 1", res.StatusCode, n)
	}
	live := testBackend(t, "live")
	f.set("a", drop.URL, live.URL)
	for range 20 {
		if res, body := f.do("GET", "a", "/", ""); res.StatusCode != 200 {
			t.Fatalf("GET = %d %s; want the retry on the live instance", res.StatusCode, body)
		}
		if res, body := f.do("POST", "a", "/", "", "Idempotency-Key", "k1"); res.StatusCode != 200 {
			t.Fatalf("POST with Idempotency-Key = %d %s; want it retried", res.StatusCode, body)
		}
	}
}

func TestStreamsPassThrough(t *testing.T) {
	release := make(chan struct{})
	sse := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		<-release
		fmt.Fprint(w, "data: two\n\n")
	}))
	defer sse.Close()
	defer close(release)
	f := newFrontend(t)
	f.set("events", sse.URL)
	req, _ := http.NewRequest("GET", f.url+"/stream", nil)
	req.Header.Set(ServiceHeader, "events")
	req.Header.Set("Accept", "text/event-stream")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	line, err := bufio.NewReader(res.Body).ReadString('\n')
	if err != nil || line != "data: one\n" {
		t.Fatalf("first event = %q, %v; want it before the stream ends", line, err)
	}
}

func TestUpgradePassesThrough(t *testing.T) {
	ws := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" || !strings.Contains(r.Header.Get("Connection"), "Upgrade") {
			http.Error(w, "want an upgrade, got Upgrade="+r.Header.Get("Upgrade")+" Connection="+r.Header.Get("Connection"), 400)
			return
		}
		if r.RequestURI != "/chat/!room?" || r.Host != "WS.localhost" {
			http.Error(w, "target and Host must come as sent, got "+r.RequestURI+" "+r.Host, 400)
			return
		}
		c, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		fmt.Fprint(rw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		rw.Flush()
		line, _ := rw.ReadString('\n')
		fmt.Fprint(rw, "echo: "+line)
		rw.Flush()
	}))
	defer ws.Close()
	f := newFrontend(t)
	f.set("ws", ws.URL)
	c := f.dial()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(c, "GET /chat/!room? HTTP/1.1\r\nHost: WS.localhost\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
	br := bufio.NewReader(c)
	status, _ := br.ReadString('\n')
	if !strings.HasPrefix(status, "HTTP/1.1 101") {
		rest, _ := io.ReadAll(io.LimitReader(br, 500))
		t.Fatalf("upgrade answer = %q %s", status, rest)
	}
	for {
		l, _ := br.ReadString('\n')
		if l == "\r\n" || l == "" {
			break
		}
	}
	fmt.Fprint(c, "hello\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, _ := br.ReadString('\n'); got != "echo: hello\n" {
		t.Fatalf("through the upgrade: %q", got)
	}
}

// TestStreamRequestsLoseHopByHopHeaders: event streams and upgrades get
// the same headers as other requests: hop-by-hop ones dropped (an upgrade
// keeps Upgrade and Connection: Upgrade alone) and X-Forwarded-For set.
// Before, they went on as the client sent them: Proxy-Authorization, the
// headers Connection named, Keep-Alive, TE, and no X-Forwarded-For.
func TestStreamRequestsLoseHopByHopHeaders(t *testing.T) {
	got := make(chan http.Header, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Clone()
		io.WriteString(w, "no stream")
	}))
	defer srv.Close()
	f := newFrontend(t)
	f.set("a", srv.URL)
	hop := "Connection: X-Hop\r\nX-Hop: 1\r\nProxy-Authorization: Basic c2lkZWNhcg==\r\nKeep-Alive: 5\r\nTE: trailers\r\n"
	for _, tc := range []struct{ name, extra, conn, upgrade string }{
		{"event stream", "Accept: text/event-stream\r\n" + hop, "", ""},
		{"upgrade", "Upgrade: websocket\r\nConnection: Upgrade, X-Hop\r\nX-Hop: 1\r\nProxy-Authorization: Basic c2lkZWNhcg==\r\nKeep-Alive: 5\r\n", "Upgrade", "websocket"},
	} {
		c := f.dial()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		exchange(t, c, "GET / HTTP/1.1\r\nHost: a.localhost\r\n"+tc.extra+"\r\n")
		h := <-got
		for _, k := range []string{"X-Hop", "Proxy-Authorization", "Keep-Alive", "Te"} {
			if v := h.Values(k); len(v) > 0 {
				t.Errorf("%s: %s: %q reached the instance", tc.name, k, v)
			}
		}
		if h.Get("Connection") != tc.conn || h.Get("Upgrade") != tc.upgrade {
			t.Errorf("%s: Connection %q, Upgrade %q; want %q, %q", tc.name, h.Get("Connection"), h.Get("Upgrade"), tc.conn, tc.upgrade)
		}
		if xff := h.Get("X-Forwarded-For"); xff != "127.0.0.1" {
			t.Errorf("%s: X-Forwarded-For = %q, want the caller's address", tc.name, xff)
		}
	}
}

func TestChunkedAndLargeBodies(t *testing.T) {
	big := strings.Repeat("0123456789", 100_000) // 1 MB, streamed
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/chunked" {
			for i := range 5 {
				fmt.Fprintf(w, "part%d;", i)
				w.(http.Flusher).Flush()
			}
			return
		}
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	}))
	defer srv.Close()
	f := newFrontend(t)
	f.set("a", srv.URL)
	if res, body := f.do("GET", "a", "/chunked", ""); res.StatusCode != 200 || body != "part0;part1;part2;part3;part4;" {
		t.Fatalf("chunked = %d %q", res.StatusCode, body)
	}
	if res, body := f.do("PUT", "a", "/echo", big); res.StatusCode != 200 || body != big {
		t.Fatalf("1 MB echo = %d, %d bytes", res.StatusCode, len(body))
	}
}

// TestStreamRequestAnsweredPlainlyDoesNotPinTheConnection: a request that
// could have become a stream (Accept: text/event-stream, an Upgrade) but
// got a plain answer leaves the client's connection an HTTP one: the next
// request on it is routed on its own, not piped to the same instance.
func TestStreamRequestAnsweredPlainlyDoesNotPinTheConnection(t *testing.T) {
	f := newFrontend(t)
	f.set("a", testBackend(t, "a").URL)
	f.set("b", testBackend(t, "b").URL)
	for _, hdr := range [][]string{
		{"Accept", "application/json, text/event-stream"},
		{"Connection", "Upgrade, HTTP2-Settings", "Upgrade", "h2c", "HTTP2-Settings", "AAMAAABkAAQCAAAAAAIAAAAA"},
	} {
		client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1}}
		req, _ := http.NewRequest("GET", f.url+"/first", nil)
		req.Header.Set(ServiceHeader, "a")
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		res, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || !strings.HasPrefix(string(body), "a GET /first") {
			t.Fatalf("%v: first = %d %q", hdr, res.StatusCode, body)
		}
		for range 3 {
			req, _ = http.NewRequest("GET", f.url+"/second", nil)
			req.Header.Set(ServiceHeader, "b")
			res, err = client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ = io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != 200 || !strings.HasPrefix(string(body), "b GET /second") {
				t.Fatalf("%v: the next request for service b = %d %q; want it routed to b", hdr, res.StatusCode, body)
			}
		}
		client.CloseIdleConnections()
	}
}

// TestServeAfterShutdownReturns: Shutdown may come first (a sidecar that
// stops while its goroutines start); Serve then returns at once rather
// than serving forever.
func TestServeAfterShutdownReturns(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	h := &HTTP{Table: &Table{Realm: "dev"}}
	if err := h.Shutdown(); err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- h.Serve(ln) }()
	select {
	case <-served:
	case <-time.After(2 * time.Second):
		t.Fatal("Serve after Shutdown still serving after 2s")
	}
}

// TestTimeoutBelowOneMillisecondIsRefused: Switchboard-Timeout takes 1ms
// to 1h. A shorter one is refused with 400, not tried: tried, it fails at
// once and is counted against the instance, so a caller could eject
// healthy instances with a handful of calls.
func TestTimeoutBelowOneMillisecondIsRefused(t *testing.T) {
	f := newFrontend(t)
	f.set("a", testBackend(t, "x").URL, testBackend(t, "y").URL)
	for _, v := range []string{"1ns", "999us", "0.5ms"} {
		for range 2 * 5 {
			res, body := f.do("GET", "a", "/", "", TimeoutHeader, v)
			if res.StatusCode != 400 || !strings.Contains(errorOf(t, body).Message, "must be a duration from 1ms to 1h") {
				t.Fatalf("%s: %s = %d %s; want 400", TimeoutHeader, v, res.StatusCode, body)
			}
		}
	}
	for _, e := range f.table.Get("a").Endpoints() {
		if ej, _ := e.Ejected(time.Now()); ej {
			t.Fatalf("instance %s ejected by calls with a too short timeout", e.ID)
		}
	}
	if res, body := f.do("GET", "a", "/", "", TimeoutHeader, "1ms"); res.StatusCode == 400 {
		t.Fatalf("%s: 1ms = %d %s; want it accepted", TimeoutHeader, res.StatusCode, body)
	}
}

// TestUpgradedConnectionEndsWhenTheInstanceCloses: when the instance ends
// an upgraded connection (it closes, restarts, is deployed), the client
// sees the end rather than a connection that stays open, silent, forever.
func TestUpgradedConnectionEndsWhenTheInstanceCloses(t *testing.T) {
	ws := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		fmt.Fprint(rw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\nbye\n")
		rw.Flush()
		c.Close()
	}))
	defer ws.Close()
	f := newFrontend(t)
	f.set("ws", ws.URL)
	c := f.dial()
	fmt.Fprint(c, "GET /chat HTTP/1.1\r\nHost: ws.localhost\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || !strings.HasPrefix(string(got), "HTTP/1.1 101") || !strings.HasSuffix(string(got), "\r\n\r\nbye\n") {
		t.Fatalf("read %q, %v; want the 101, bye, then the end of the connection", got, err)
	}
}

// TestShutdownEndsStreams: Shutdown ends the streams in progress (they
// have no end of their own) as the L4 listener's Close does, rather than
// leave them piped by goroutines nobody owns.
func TestShutdownEndsStreams(t *testing.T) {
	ws := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		fmt.Fprint(rw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		rw.Flush()
		io.Copy(io.Discard, rw) // until the sidecar closes
	}))
	defer ws.Close()
	f := newFrontend(t)
	f.set("ws", ws.URL)
	c := f.dial()
	fmt.Fprint(c, "GET /chat HTTP/1.1\r\nHost: ws.localhost\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	br := bufio.NewReader(c)
	if status, _ := br.ReadString('\n'); !strings.HasPrefix(status, "HTTP/1.1 101") {
		t.Fatalf("upgrade answer = %q", status)
	}
	if err := f.h.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(br); err != nil {
		t.Fatalf("after Shutdown the stream is still open: %v", err)
	}
}

// A caller's timeout of sb.HungAfter or more that runs out with no answer
// counts against the instance: the smart client sets the header from every
// context deadline, so an instance that took calls and never answered was
// never ejected, whatever its callers waited.
func TestCallerTimeoutsOfASecondEjectAHungInstance(t *testing.T) {
	hung := func() string {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
		t.Cleanup(s.Close)
		return s.URL
	}
	f := newFrontend(t)
	f.set("a", hung(), hung())
	var wg sync.WaitGroup
	for range 2 * balance.EjectAfter { // at once: one instance gets EjectAfter at least
		wg.Go(func() {
			if res, body := f.do("GET", "a", "/", "", TimeoutHeader, sb.HungAfter.String()); res.StatusCode != 504 {
				t.Errorf("= %d %s; want 504", res.StatusCode, body)
			}
		})
	}
	wg.Wait()
	ejected := 0
	for _, e := range f.table.Get("a").Endpoints() {
		if ej, _ := e.Ejected(time.Now()); ej {
			ejected++
		}
	}
	if ejected != 1 {
		t.Fatalf("%d instances ejected after %d calls timed out at %s with no answer; want 1 (at most half)", ejected, 2*balance.EjectAfter, sb.HungAfter)
	}
}

// Short timeouts the caller chose eject no instance: they say nothing of it.
// Before, ten calls with a 5ms timeout to instances that take 200ms
// ejected one.
func TestCallerTimeoutsEjectNoInstance(t *testing.T) {
	slow := func() string {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-time.After(200 * time.Millisecond):
			}
		}))
		t.Cleanup(s.Close)
		return s.URL
	}
	f := newFrontend(t)
	f.set("a", slow(), slow())
	for range 2 * balance.EjectAfter {
		if res, body := f.do("GET", "a", "/", "", TimeoutHeader, "5ms"); res.StatusCode != 504 {
			t.Fatalf("= %d %s; want 504", res.StatusCode, body)
		}
	}
	for _, e := range f.table.Get("a").Endpoints() {
		if ej, _ := e.Ejected(time.Now()); ej {
			t.Fatalf("instance %s ejected by timeouts its callers chose", e.ID)
		}
	}
}

// A client that hangs up on an event stream ends the instance's request
// too, as it would without the sidecar; and it ejects no instance.
func TestClientHangingUpEndsTheStream(t *testing.T) {
	ended, release := make(chan struct{}, 16), make(chan struct{})
	sse := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
			ended <- struct{}{}
		case <-release:
		}
	}))
	defer sse.Close()
	defer close(release)
	f := newFrontend(t)
	f.set("events", sse.URL, sse.URL)
	for range 2 * balance.EjectAfter {
		c := f.dial()
		fmt.Fprintf(c, "GET /stream HTTP/1.1\r\nHost: x\r\n%s: events\r\nAccept: text/event-stream\r\n\r\n", ServiceHeader)
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
			t.Fatalf("status line = %q, %v", line, err)
		}
		c.Close()
		select {
		case <-ended:
		case <-time.After(10 * time.Second):
			t.Fatal("the instance's stream went on 10s after its client hung up")
		}
	}
	for _, e := range f.table.Get("events").Endpoints() {
		if ej, _ := e.Ejected(time.Now()); ej {
			t.Fatalf("instance %s ejected by clients that hung up", e.ID)
		}
	}
}

// TestUnreadableRequestsAreTimedRight: an unreadable request is observed
// with the time it took, not with the age of the zero time (292 years in
// the latency histogram of every unreadable request).
func TestUnreadableRequestsAreTimedRight(t *testing.T) {
	var mu sync.Mutex
	var got []time.Duration
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &HTTP{Table: &Table{Realm: "dev"}, Observe: func(_ string, _ int, d time.Duration, _ int) {
		mu.Lock()
		got = append(got, d)
		mu.Unlock()
	}}
	go h.Serve(ln)
	defer h.Shutdown()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	exchange(t, c, "GET / HTTP/1.1\r\nHost: a.localhost\r\nno colon here\r\n\r\n")
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || got[0] < 0 || got[0] > time.Minute {
		t.Fatalf("observed durations = %v, want one of at most a minute", got)
	}
}

// TestUnreadableRequestsAreNotEchoed: the answer to an unreadable request
// holds none of its bytes, also when the bad line is the one with the
// secret (fasthttp quotes a bad header value or line whatever
// SecureErrorLogMessage says).
func TestUnreadableRequestsAreNotEchoed(t *testing.T) {
	f := newFrontend(t)
	for _, raw := range []string{
		"GET / HTTP/1.1\r\nHost: a.localhost\r\nAuthorization: Bearer s3cret\x01\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a.localhost\r\nCookie: session=s3cret\x7f\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a.localhost\r\nAuthorization Bearer s3cret\r\n\r\n",
	} {
		c := f.dial()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		res, b := exchange(t, c, raw)
		e := errorOf(t, string(b))
		if res.StatusCode != 400 || !strings.Contains(e.Message, "malformed request") {
			t.Errorf("%q: answer = %d %s, want 400 malformed request", raw, res.StatusCode, b)
		}
		if strings.Contains(string(b), "s3cret") {
			t.Errorf("%q: the answer echoes the request: %s", raw, b)
		}
	}
}

// exchange writes raw to c (from a goroutine: the proxy may answer before
// it has read all of it) and reads one answer, its body whole.
func exchange(t *testing.T, c net.Conn, raw string) (*http.Response, []byte) {
	t.Helper()
	go io.WriteString(c, raw)
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, b
}

// TestHTTP10ClientGetsCloseDelimitedAnswers: an answer of unknown length
// (chunked from the instance, or read until it closes) reaches an HTTP/1.0
// client delimited by the close of its connection, as net/http's server
// sends it: HTTP/1.0 has no chunked coding. Before, the client got
// Transfer-Encoding: chunked and read the chunk sizes as the body.
func TestHTTP10ClientGetsCloseDelimitedAnswers(t *testing.T) {
	chunked := func(_, _ int64, c net.Conn) bool {
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"+
			"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
		return true
	}
	untilClose := func(_, _ int64, c net.Conn) bool {
		io.WriteString(c, "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello world")
		return false
	}
	f := newFrontend(t)
	for _, tc := range []struct {
		name   string
		answer func(conn, req int64, c net.Conn) bool
		extra  string
	}{
		{"chunked", chunked, ""},
		{"chunked, keep-alive asked", chunked, "Connection: keep-alive\r\n"},
		{"until close", untilClose, ""},
		{"event stream, chunked", chunked, "Accept: text/event-stream\r\n"},
		{"event stream, until close", untilClose, "Accept: text/event-stream\r\n"},
	} {
		addr, _ := rawInstance(t, tc.answer)
		f.set("a", addr)
		c := f.dial()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "GET / HTTP/1.0\r\nHost: a.localhost\r\n"+tc.extra+"\r\n"); err != nil {
			t.Fatal(err)
		}
		raw, err := io.ReadAll(c) // until the sidecar closes
		if err != nil {
			t.Errorf("%s: %v after %q; want the answer, then the close", tc.name, err, raw)
			continue
		}
		head, body, ok := strings.Cut(string(raw), "\r\n\r\n")
		// The stream path keeps the instance's version (HTTP/1.0 here).
		if !ok || !strings.HasPrefix(head, "HTTP/1.1 200 ") && !strings.HasPrefix(head, "HTTP/1.0 200 ") {
			t.Errorf("%s: answer %q", tc.name, raw)
			continue
		}
		hdr := strings.ToLower(head)
		if strings.Contains(hdr, "\r\ntransfer-encoding:") || strings.Contains(hdr, "\r\ncontent-length:") || !strings.Contains(hdr, "\r\nconnection: close") {
			t.Errorf("%s: head %q; want neither Transfer-Encoding nor Content-Length, and Connection: close", tc.name, head)
		}
		if body != "hello world" {
			t.Errorf("%s: body %q, want %q up to the close", tc.name, body, "hello world")
		}
	}
}

// TestInterimAnswersAreForwarded: an instance's interim answers (103 Early
// Hints here) reach an HTTP/1.1 client as they come, before the final
// answer, as RFC 9110, 15.2 has a proxy do; after the answers to the
// requests pipelined before, not ahead of them. A 100 is not forwarded
// (the sidecar answered the client's Expect itself), and an HTTP/1.0
// client gets no 1xx at all. Before, the fasthttp path dropped them all,
// and the stream path sent them to HTTP/1.0 clients too.
func TestInterimAnswersAreForwarded(t *testing.T) {
	saw, stop := make(chan struct{}, 1), make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/first" {
			io.WriteString(w, "first")
			return
		}
		w.WriteHeader(http.StatusContinue)
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		if r.URL.Path == "/cut" {
			panic(http.ErrAbortHandler) // no final answer
		}
		if r.URL.Path == "/wait" {
			// The final answer waits until the client has read the 103.
			select {
			case <-saw:
			case <-stop:
				return
			}
		}
		io.WriteString(w, "final")
	}))
	defer srv.Close()
	defer close(stop)
	f := newFrontend(t)
	f.set("a", srv.URL)

	for _, extra := range []string{"", "Accept: text/event-stream\r\n"} {
		c := f.dial()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		// Two requests in one write: fasthttp holds the first answer in
		// its buffer while the second request is read.
		if _, err := io.WriteString(c, "GET /first HTTP/1.1\r\nHost: a.localhost\r\n\r\nGET /wait HTTP/1.1\r\nHost: a.localhost\r\n"+extra+"\r\n"); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		var got []string
		for finals := 0; finals < 2; {
			res, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("%q: after %q: %v", extra, got, err)
			}
			b, _ := io.ReadAll(res.Body)
			got = append(got, fmt.Sprintf("%d %s %s", res.StatusCode, res.Header.Get("Link"), b))
			if res.StatusCode == http.StatusEarlyHints {
				saw <- struct{}{}
			}
			if res.StatusCode >= 200 {
				finals++
			}
		}
		want := []string{"200  first", "103 </style.css>; rel=preload ", "200 </style.css>; rel=preload final"}
		if !slices.Equal(got, want) {
			t.Errorf("%q: answers %q, want %q", extra, got, want)
		}
	}

	for _, extra := range []string{"", "Accept: text/event-stream\r\n"} {
		c := f.dial()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "GET /now HTTP/1.0\r\nHost: a.localhost\r\n"+extra+"\r\n"); err != nil {
			t.Fatal(err)
		}
		raw, err := io.ReadAll(c)
		// (The stream path keeps the instance's HTTP/1.0.)
		if err != nil || !strings.HasPrefix(string(raw), "HTTP/1.") || !strings.Contains(string(raw), " 200 OK\r\n") ||
			!strings.HasSuffix(string(raw), "\r\n\r\nfinal") || strings.Count(string(raw), "HTTP/") != 1 {
			t.Errorf("HTTP/1.0 %q: %q, %v; want the final answer alone", extra, raw, err)
		}
	}

	// An instance that fails after its 1xx: the client gets the 1xx, then
	// the sidecar's 502.
	c := f.dial()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET /cut HTTP/1.1\r\nHost: a.localhost\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	for _, want := range []int{http.StatusEarlyHints, http.StatusBadGateway} {
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("/cut: %v; want %d", err, want)
		}
		b, _ := io.ReadAll(res.Body)
		if res.StatusCode != want || want == http.StatusBadGateway && errorOf(t, string(b)).Code != sb.EBadGateway {
			t.Fatalf("/cut: %d %s; want %d", res.StatusCode, b, want)
		}
	}
}

// TestTakenOverAnswerOfAClientGoneIsReleased: an answer sent on from a
// connection taken over from fasthttp (one with an interim answer, or
// close-delimited for HTTP/1.0) comes after the answers to the requests
// pipelined before it. When the client has gone away, sending those fails
// and fasthttp closes the connection without running the handler that
// held the instance's connection: it stayed open, the instance still
// serving a request nobody would read, until the garbage collector came.
func TestTakenOverAnswerOfAClientGoneIsReleased(t *testing.T) {
	for _, tc := range []struct{ name, proto, answer string }{
		{"interim", "HTTP/1.1", "103"},
		{"close-delimited", "HTTP/1.0", "stream"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			asked, released, closed := make(chan struct{}), make(chan struct{}), make(chan struct{})
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/first" {
					io.WriteString(w, "first")
					return
				}
				close(asked)
				<-released
				if tc.answer == "103" {
					w.Header().Set("Link", "</style.css>; rel=preload")
					w.WriteHeader(http.StatusEarlyHints)
				} else {
					io.WriteString(w, "part") // no length: HTTP/1.0 gets it close-delimited
					w.(http.Flusher).Flush()
				}
				select {
				case <-r.Context().Done():
					close(closed)
				case <-time.After(5 * time.Second):
				}
			}))
			defer srv.Close()
			f := newFrontend(t)
			f.set("a", srv.URL)
			c := f.dial()
			// The first answer waits in fasthttp's buffer while the
			// second request is read.
			req := func(path string) string {
				return "GET " + path + " " + tc.proto + "\r\nHost: a.localhost\r\nConnection: keep-alive\r\n\r\n"
			}
			if _, err := io.WriteString(c, req("/first")+req("/second")); err != nil {
				t.Fatal(err)
			}
			<-asked
			c.(*net.TCPConn).SetLinger(0) // gone: the sidecar's next write fails
			c.Close()
			time.Sleep(100 * time.Millisecond)
			close(released)
			select {
			case <-closed:
			case <-time.After(5 * time.Second):
				t.Fatal("the sidecar kept its connection to the instance open after the client went away")
			}
		})
	}
}

// TestLocalBrowsersOnly: switchboard dev's frontend takes a browser's
// calls from pages of the machine; a page of another site may follow a
// link, not write, and one whose name an attacker points at 127.0.0.1 (DNS
// rebinding) gets nothing. Clients that are not browsers, whatever their
// Host, are routed. The headers are those Chromium sends: between
// web.localhost and api.localhost it says cross-site (localhost is not a
// public suffix).
func TestLocalBrowsersOnly(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer backend.Close()
	for _, local := range []bool{true, false} {
		f := newFrontend(t, func(h *HTTP) { h.LocalBrowsersOnly = local })
		f.set("api", backend.URL)
		for _, c := range []struct {
			name, method, host string
			header             map[string]string
			refused            bool
		}{
			{"a service", "POST", "api.localhost", nil, false},
			{"a service naming another Host", "POST", "api.internal.example", map[string]string{"Switchboard-Service": "api"}, false},
			{"a page of web.localhost", "POST", "api.localhost:4000", map[string]string{"Origin": "http://web.localhost:4000", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"}, false},
			{"a page of localhost:3000", "POST", "api.localhost:4000", map[string]string{"Origin": "http://localhost:3000", "Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors"}, false},
			{"a link from another site", "GET", "api.localhost:4000", map[string]string{"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}, false},
			{"a form of another site", "POST", "api.localhost", map[string]string{"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}, true},
			{"an older browser's form of another site", "POST", "api.localhost", map[string]string{"Origin": "https://evil.example"}, true},
			{"DNS rebinding", "GET", "rebind.attacker.example:4000", map[string]string{"Switchboard-Service": "api", "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}, true},
		} {
			req, _ := http.NewRequest(c.method, f.url+"/charge", strings.NewReader("amount=1000"))
			req.Host = c.host
			for k, v := range c.header {
				req.Header.Set(k, v)
			}
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			want := 200
			if c.refused && local {
				want = 403
			}
			if res.StatusCode != want {
				t.Errorf("LocalBrowsersOnly %v, %s: %d %s; want %d", local, c.name, res.StatusCode, body, want)
			}
		}
	}
}

// TestShutdownContextCutsOffCallsThatOutlastIt: a call whose instance
// takes its time (an hour's Switchboard-Timeout) holds Shutdown only until
// its context ends; then the caller's connection is closed.
func TestShutdownContextCutsOffCallsThatOutlastIt(t *testing.T) {
	url, got := testnet.HeldHTTP(t)
	f := newFrontend(t)
	f.set("slow", url)
	c := f.dial()
	fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: slow.localhost\r\nSwitchboard-Timeout: 1h\r\n\r\n")
	waitFor(t, got, "the call to reach the instance")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- f.h.ShutdownContext(ctx) }()
	if err := waitFor(t, done, "ShutdownContext, with a call still at a slow instance"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ShutdownContext = %v; want context.DeadlineExceeded", err)
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	b, err := io.ReadAll(c)
	if len(b) > 0 || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the caller read %q, %v; want its connection closed with no answer", b, err)
	}
}

// TestShutdownContextLetsCallsFinish: a call that ends before the context
// does is answered, and ShutdownContext returns nil.
func TestShutdownContextLetsCallsFinish(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
		io.WriteString(w, "done")
	}))
	defer srv.Close()
	f := newFrontend(t)
	f.set("slow", srv.URL)
	c := f.dial()
	fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: slow.localhost\r\n\r\n")
	waitFor(t, arrived, "the call to reach the instance")
	done := make(chan error, 1)
	go func() { done <- f.h.ShutdownContext(context.Background()) }()
	time.Sleep(50 * time.Millisecond) // Shutdown under way
	close(release)
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("the call in flight got no answer: %v", err)
	}
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 || string(body) != "done" {
		t.Fatalf("the call in flight got %d %q; want 200 \"done\"", res.StatusCode, body)
	}
	if err := waitFor(t, done, "ShutdownContext after the last call ended"); err != nil {
		t.Fatalf("ShutdownContext = %v; want nil", err)
	}
}

// An instance that takes a stream request (an event stream, a WebSocket
// upgrade) and never answers held the caller's connection, its own and a
// goroutine for as long as it lived, the caller long gone: the answer's
// head must come within the request's timeout, as any answer's must
// (504, and the instance's connection closed). Stream requests were also
// observed as 200 or 101 before any answer came; they are observed with
// the status the caller got.
func TestAStreamsAnswerMustBeginInTime(t *testing.T) {
	hung, accepted := rawInstance(t, func(_, _ int64, c net.Conn) bool {
		_, _ = io.Copy(io.Discard, c) // takes the request, never answers
		return false
	})
	refusing, _ := rawInstance(t, func(_, _ int64, c net.Conn) bool {
		io.WriteString(c, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown")
		return false
	})
	var mu sync.Mutex
	var codes []int
	f := newFrontend(t, func(h *HTTP) {
		h.Observe = func(_ string, code int, _ time.Duration, _ int) { mu.Lock(); codes = append(codes, code); mu.Unlock() }
	})
	f.set("hung", hung)
	f.set("refusing", refusing)
	var want []int
	for _, kind := range []string{"Accept: text/event-stream\r\n", "Upgrade: websocket\r\nConnection: Upgrade\r\n"} {
		for _, tc := range []struct {
			service string
			status  int
		}{{"hung", 504}, {"refusing", 503}} {
			c := f.dial()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			res, _ := exchange(t, c, "GET / HTTP/1.1\r\nHost: "+tc.service+".localhost\r\nSwitchboard-Timeout: 300ms\r\n"+kind+"\r\n")
			if res.StatusCode != tc.status {
				t.Fatalf("%q to %s = %d; want %d", kind, tc.service, res.StatusCode, tc.status)
			}
			want = append(want, tc.status)
		}
	}
	if n := accepted.Load(); n != 2 {
		t.Fatalf("the hung instance took %d connections; want 2", n)
	}
	// A WebSocket is observed when its 101 is in, not when it closes
	// (one that stays open for hours was never counted meanwhile).
	upgrading, _ := rawInstance(t, func(_, _ int64, c net.Conn) bool {
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		_, _ = io.Copy(io.Discard, c) // open until the caller closes
		return false
	})
	f.set("ws", upgrading)
	c := f.dial()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if res, _ := exchange(t, c, "GET / HTTP/1.1\r\nHost: ws.localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"); res.StatusCode != 101 {
		t.Fatalf("upgrade = %d; want 101", res.StatusCode)
	}
	want = append(want, 101)
	slices.Sort(want)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		got := slices.Sorted(slices.Values(codes)) // each as its handler ends
		mu.Unlock()
		if slices.Equal(got, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("observed %v; want %v", got, want)
		}
	}
}

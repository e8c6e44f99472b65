package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// countingServer is an httptest server that counts the connections it
// accepted.
func countingServer(t *testing.T, h http.HandlerFunc) (*httptest.Server, *atomic.Int64) {
	var conns atomic.Int64
	s := httptest.NewUnstartedServer(h)
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	s.Start()
	t.Cleanup(s.Close)
	return s, &conns
}

func TestConnectionsAreKeptAlive(t *testing.T) {
	mid := strings.Repeat("m", smallBody+1) // streamed: the connection comes back when it is sent
	srv, conns := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/mid":
			w.Header().Set("Content-Length", fmt.Sprint(len(mid)))
			if r.Method != "HEAD" {
				io.WriteString(w, mid)
			}
		case "/chunked":
			w.(http.Flusher).Flush()
			io.WriteString(w, "chunk")
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		default:
			io.WriteString(w, "small")
		}
	})
	f := newFrontend(t)
	f.set("a", srv.URL)
	for i := range 30 {
		path := []string{"/small", "/mid", "/chunked", "/empty"}[i%4]
		res, body := f.do("GET", "a", path, "")
		want := map[string]string{"/small": "small", "/mid": mid, "/chunked": "chunk", "/empty": ""}[path]
		if res.StatusCode/100 != 2 || body != want {
			t.Fatalf("GET %s = %d, %d bytes", path, res.StatusCode, len(body))
		}
	}
	res, _ := f.do("HEAD", "a", "/mid", "")
	if res.StatusCode != 200 || res.ContentLength != int64(len(mid)) {
		t.Fatalf("HEAD = %d, Content-Length %d", res.StatusCode, res.ContentLength)
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("31 sequential requests took %d connections to the instance, want 1", n)
	}
}

// rudeServer answers each request on a connection with keep-alive, then
// closes the connection without saying so after `answers` answers.
func rudeServer(t *testing.T, answers int) (addr string, accepted *atomic.Int64) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted = &atomic.Int64{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for range answers {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				}
			}()
		}
	}()
	return "http://" + ln.Addr().String(), accepted
}

func TestStaleConnectionIsReplacedForReplayableRequests(t *testing.T) {
	addr, accepted := rudeServer(t, 1)
	f := newFrontend(t)
	f.set("a", addr)
	for i := range 5 {
		// Each GET finds the connection of the one before closed by the
		// instance: it is sent again on a new one, and the instance is
		// not blamed (no 502, no ejection).
		if res, body := f.do("GET", "a", "/", ""); res.StatusCode != 200 || body != "ok" {
			t.Fatalf("GET %d = %d %q", i, res.StatusCode, body)
		}
		time.Sleep(20 * time.Millisecond) // the close reaches the sidecar's side
	}
	if n := accepted.Load(); n < 5 {
		t.Fatalf("instance accepted %d connections for 5 requests", n)
	}
	e := f.table.Get("a").Endpoints()[0]
	if ej, _ := e.Ejected(time.Now()); ej {
		t.Fatal("instance ejected for closing idle connections")
	}
}

func TestIdleConnectionIsProbedBeforeUse(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the probe threshold")
	}
	addr, _ := rudeServer(t, 1)
	f := newFrontend(t)
	f.set("a", addr)
	if res, _ := f.do("POST", "a", "/", "x"); res.StatusCode != 200 {
		t.Fatalf("first POST = %d", res.StatusCode)
	}
	time.Sleep(probeAfter + 200*time.Millisecond)
	// A POST cannot be sent twice; the closed connection is found before
	// the request goes out, so it reaches the instance once, on a new one.
	if res, body := f.do("POST", "a", "/", "y"); res.StatusCode != 200 {
		t.Fatalf("POST after idle = %d %q", res.StatusCode, body)
	}
}

func TestTruncatedAnswerIsNotReused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := accepted.Add(1)
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					if _, err := http.ReadRequest(br); err != nil {
						return
					}
					if n == 1 {
						// Announces more than it sends, then closes.
						fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", smallBody*2, strings.Repeat("x", 1000))
						return
					}
					fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				}
			}()
		}
	}()
	f := newFrontend(t)
	f.set("a", "http://"+ln.Addr().String())
	req, _ := http.NewRequest("GET", f.url+"/", nil)
	req.Header.Set(ServiceHeader, "a")
	if res, err := http.DefaultClient.Do(req); err == nil {
		_, err = io.ReadAll(res.Body)
		res.Body.Close()
		if err == nil {
			t.Fatal("a truncated answer reached the client as a whole one")
		}
	}
	if res, body := f.do("GET", "a", "/", ""); res.StatusCode != 200 || body != "ok" {
		t.Fatalf("after a truncated answer: %d %q", res.StatusCode, body)
	}
}

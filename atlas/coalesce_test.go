package atlas_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/atlas"
)

// countingListener counts the writes made to the connections it accepts,
// and fails them all once failing is set.
type countingListener struct {
	net.Listener
	writes  atomic.Int64
	failing atomic.Bool
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, l: l}, nil
}

type countingConn struct {
	net.Conn
	l *countingListener
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.l.writes.Add(1)
	if c.l.failing.Load() {
		return 0, errors.New("write failed on purpose")
	}
	return c.Conn.Write(p)
}

// serveCounted serves a's Atlas again on a listener of its own, through
// Listener over a countingListener.
func serveCounted(t *testing.T, a *testAtlas) (*countingListener, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: ln}
	hs := a.srv.HTTPServer()
	go hs.Serve(atlas.Listener(cl))
	t.Cleanup(func() { hs.Close() })
	return cl, ln.Addr().String()
}

// TestAnswersLeaveInOneWrite: answers far over net/http's 4 KiB buffer,
// blocking or not, leave in one write each, whole, on a connection kept
// alive; the event stream is not held back.
func TestAnswersLeaveInOneWrite(t *testing.T) {
	a := start(t, true)
	for i := range 60 {
		a.must("PUT", fmt.Sprintf("/v1/instances/big-%02d", i), reg("big", 5000+i, `,"tags":["v2"],"meta":{"version":"1.4.2"}`))
	}
	cl, addr := serveCounted(t, a)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	get := func(path string) (*http.Response, []byte) {
		t.Helper()
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: atlas\r\n\r\n", path)
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(res.Body)
		if err != nil {
			t.Fatal(err)
		}
		return res, body
	}

	before := cl.writes.Load()
	res, body := get("/v1/services/big")
	if n := cl.writes.Load() - before; n != 1 {
		t.Errorf("a %d-byte answer took %d writes; want 1", len(body), n)
	}
	var si sb.ServiceInstances
	if err := json.Unmarshal(body, &si); err != nil || len(si.Instances) != 60 || len(body) < 8<<10 {
		t.Fatalf("answer: %d bytes, %d instances, err %v; want 60 instances in over 8 KiB", len(body), len(si.Instances), err)
	}
	index := res.Header.Get(atlas.IndexHeader)

	// A blocking query, woken by a change, on the same connection.
	done := make(chan struct{})
	var bres *http.Response
	var bbody []byte
	go func() {
		defer close(done)
		fmt.Fprintf(c, "GET /v1/services/big?index=%s&wait=10s HTTP/1.1\r\nHost: atlas\r\n\r\n", index)
		var err error
		if bres, err = http.ReadResponse(br, nil); err == nil {
			bbody, err = io.ReadAll(bres.Body)
		}
		if err != nil {
			t.Error(err)
		}
	}()
	waitBlocking(t, a, 1)
	before = cl.writes.Load()
	a.must("PUT", "/v1/instances/big-60", reg("big", 5060, ""))
	<-done
	if n := cl.writes.Load() - before; n != 1 {
		t.Errorf("a blocking query's %d-byte answer took %d writes; want 1", len(bbody), n)
	}
	if err := json.Unmarshal(bbody, &si); err != nil || len(si.Instances) != 61 {
		t.Fatalf("blocking answer: %d instances, err %v; want 61", len(si.Instances), err)
	}

	// The event stream still streams: its snapshot arrives while it runs.
	res2, cancel := watch(t, "http://"+addr+"/v1/watch?service=big")
	defer cancel()
	ev := next(t, readEvents(res2.Body))
	if ev.kind != "snapshot" || !strings.Contains(ev.data, "big-60") {
		t.Fatalf("first event %q: %.80s; want the snapshot", ev.kind, ev.data)
	}
}

// TestAFailedWholeWriteClosesTheConnection: net/http was told the held
// writes succeeded; when the one real write fails the client must see the
// connection end, not wait for an answer that will never come.
func TestAFailedWholeWriteClosesTheConnection(t *testing.T) {
	a := start(t, true)
	for i := range 30 { // an answer of about 8 KB: one that is held
		a.must("PUT", fmt.Sprintf("/v1/instances/big-%02d", i), reg("big", 5000+i, ""))
	}
	cl, addr := serveCounted(t, a)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cl.failing.Store(true)
	fmt.Fprintf(c, "GET /v1/services/big HTTP/1.1\r\nHost: atlas\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("the connection stayed open after a failed write: %v", err)
	}
	if len(got) != 0 {
		t.Fatalf("read %q after a failed write; want nothing", got)
	}
}

// waitBlocking waits until Atlas holds n blocking queries.
func waitBlocking(t *testing.T, a *testAtlas, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		body := string(a.must("GET", "/metrics", "").body)
		if strings.Contains(body, fmt.Sprintf("switchboard_atlas_blocking_queries %d\n", n)) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("Atlas never held %d blocking queries", n)
}

// TestListenerConnsHalfClose: net/http half-closes a connection before
// closing it (after a 431, or a request body left unread) only when the
// connection has CloseWrite; the wrapper must keep it, so that the client
// reads the answer and an end of stream, not a reset.
func TestListenerConnsHalfClose(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	wl := atlas.Listener(ln)
	defer wl.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, err := wl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	cw, ok := sc.(interface{ CloseWrite() error })
	if !ok {
		t.Fatal("a connection from atlas.Listener has no CloseWrite")
	}
	if _, err := sc.Write([]byte("answer")); err != nil {
		t.Fatal(err)
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "answer" {
		t.Fatalf("client read %q, %v; want the answer, then the end of the stream", got, err)
	}
	// Half-closed: the client can still send.
	if _, err := c.Write([]byte("more")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	sc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(sc, buf); err != nil || string(buf) != "more" {
		t.Fatalf("server read %q, %v after its half-close; want \"more\"", buf, err)
	}
}

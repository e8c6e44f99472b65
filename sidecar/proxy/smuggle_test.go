package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http/httpguts"
)

// Request smuggling: the sidecar parses requests with fasthttp and the
// instances behind it with whatever they run. Where two parsers disagree on
// where a request ends, a request can hide inside another one's body. The
// differential test below sends raw bytes through the sidecar to an
// instance and holds fasthttp's reading to net/http's (the reference): the
// requests the instance receives must be requests net/http reads from the
// same bytes, in the same order, with the same method, target, Host and
// body (the sidecar may refuse or answer some itself: refusing is safe,
// reading differently is not), and what the sidecar forwards must itself
// parse cleanly.

// seen is a request as a parser read it.
type seen struct {
	Method, URI, Host, Body string
}

func (s seen) String() string {
	return fmt.Sprintf("%s %s host=%q body=%q", s.Method, s.URI, s.Host, s.Body)
}

// validNames reports whether every field name is a token, as net/http's
// server requires (http.ReadRequest alone takes "X Foo"), with the
// function it uses.
func validNames(h http.Header) bool {
	for name := range h {
		if !httpguts.ValidHeaderFieldName(name) {
			return false
		}
	}
	return true
}

// reference reads raw with net/http as a server would: request after
// request until an error, EOF, or a request that closes the connection.
func reference(raw []byte) []seen {
	br := bufio.NewReader(bytes.NewReader(raw))
	var out []seen
	for {
		// RFC 9112, 2.2: a server should skip empty lines before a
		// request line (fasthttp does; net/http does not).
		for {
			b, err := br.Peek(1)
			if err != nil || (b[0] != '\r' && b[0] != '\n') {
				break
			}
			br.ReadByte()
		}
		req, err := http.ReadRequest(br)
		if err != nil || !validNames(req.Header) {
			return out
		}
		body, err := io.ReadAll(req.Body)
		if err != nil {
			return out
		}
		uri := req.RequestURI
		if req.URL.IsAbs() {
			// A proxy sends the absolute form on in origin form.
			uri = req.URL.RequestURI()
		}
		out = append(out, seen{req.Method, uri, req.Host, string(body)})
		if req.Close {
			return out
		}
	}
}

// recorder is an instance that records every request it reads, and
// whether the bytes the sidecar sent it parsed cleanly to their end.
type recorder struct {
	addr string
	mu   sync.Mutex
	got  []seen
	bad  []string
}

func newRecorder(t testing.TB) *recorder {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	r := &recorder{addr: "http://" + ln.Addr().String()}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go r.serve(c)
		}
	}()
	return r
}

func (r *recorder) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			if err != io.EOF && !isClosed(err) {
				r.mu.Lock()
				r.bad = append(r.bad, err.Error())
				r.mu.Unlock()
			}
			return
		}
		if !validNames(req.Header) {
			r.mu.Lock()
			r.bad = append(r.bad, fmt.Sprintf("a field name that is not a token: %q", req.Header))
			r.mu.Unlock()
			return
		}
		body, err := io.ReadAll(req.Body)
		if err != nil {
			r.mu.Lock()
			r.bad = append(r.bad, "body: "+err.Error())
			r.mu.Unlock()
			return
		}
		r.mu.Lock()
		r.got = append(r.got, seen{req.Method, req.RequestURI, req.Host, string(body)})
		r.mu.Unlock()
		if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); err != nil {
			return
		}
	}
}

func isClosed(err error) bool {
	return strings.Contains(err.Error(), "use of closed") || strings.Contains(err.Error(), "connection reset")
}

func (r *recorder) take() ([]seen, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	got, bad := r.got, r.bad
	r.got, r.bad = nil, nil
	return got, bad
}

// through sends raw to the frontend on one connection, half-closes it, and
// reads whatever comes back until the sidecar closes.
func through(t testing.TB, url string, raw []byte) {
	c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write(raw)
	c.(*net.TCPConn).CloseWrite()
	io.Copy(io.Discard, c)
}

// checkSmuggling runs one input through the sidecar and holds the result to
// the reference.
func checkSmuggling(t testing.TB, f *frontend, rec *recorder, raw []byte) {
	through(t, f.url, raw)
	// The instance has answered every request it read before the sidecar
	// answered and closed; what it recorded is complete.
	got, bad := rec.take()
	want := reference(raw)
	if len(bad) > 0 {
		t.Fatalf("the sidecar forwarded bytes net/http cannot parse (%v)\ninput %q", bad, raw)
	}
	// Requests the sidecar answered itself (a 400 for a Host naming no
	// service, say) are not forwarded: what the instance got must be a
	// subsequence of what net/http reads.
	j := 0
	for i := range got {
		for j < len(want) && want[j] != got[i] {
			j++
		}
		if j == len(want) {
			t.Fatalf("request %d the instance got is not one net/http reads (in this order):\n got %v\nwant %v\ninput %q", i, got, want, raw)
		}
		j++
	}
}

// smugglingSeeds are classic desynchronisation attempts and plain requests;
// every one is routed to service "a" by its Host.
var smugglingSeeds = []string{
	"GET / HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
	"GET /x?y=1 HTTP/1.1\r\nHost: a.localhost\r\n\r\nGET /second HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
	"POST /p HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 5\r\n\r\nhelloGET /after HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
	"POST /p HTTP/1.1\r\nHost: a.localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
	// CL.TE and TE.CL.
	"POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 13\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nSMUGGLED",
	"POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
	// Obfuscated Transfer-Encoding.
	"POST / HTTP/1.1\r\nHost: a.localhost\r\nTransfer-Encoding: xchunked\r\nContent-Length: 4\r\n\r\n1\r\nZ\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a.localhost\r\nTransfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n1\r\nZ\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a.localhost\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n1\r\nZ\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a.localhost\r\nTransfer-Encoding: chunked, identity\r\n\r\n1\r\nZ\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a.localhost\r\nTransfer-Encoding:\tchunked\r\n\r\n1\r\nZ\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a.localhost\r\nTransfer-Encoding\r\n : chunked\r\n\r\n1\r\nZ\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a.localhost\r\nX: y\r\n Transfer-Encoding: chunked\r\n\r\n1\r\nZ\r\n0\r\n\r\n",
	// Duplicate and odd Content-Length.
	"POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nhello",
	"POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 5, 5\r\n\r\nhello",
	"POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: +5\r\n\r\nhello",
	"POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: -1\r\n\r\nhello",
	"POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 0x5\r\n\r\nhello",
	"POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 5 \r\n\r\nhello",
	// Chunk sizes and extensions.
	"POST / HTTP/1.1\r\nHost: a.localhost\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a.localhost\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a.localhost\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff1\r\nhello\r\n0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a.localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
	"POST / HTTP/1.1\r\nHost: a.localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a.localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nTrailer: x\r\n\r\nGET /after HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
	// Line endings, versions, request lines.
	"GET / HTTP/1.1\nHost: a.localhost\n\nGET /bare-lf HTTP/1.1\nHost: a.localhost\n\n",
	"GET / HTTP/1.0\r\nHost: a.localhost\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a.localhost\r\nHost: b.localhost\r\n\r\n",
	"GET  / HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
	"GET http://a.localhost/abs HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a.localhost\r\nConnection: close\r\n\r\nGET /not-read HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 5\r\n\r\nGET /in-body HTTP/1.1\r\n\r\n",
	// Connection naming what frames the request or routes it: Host and
	// Content-Length stay, whatever Connection says.
	"GET / HTTP/1.1\r\nHost: a.localhost\r\nConnection: Host\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 5\r\nConnection: content-length\r\n\r\nhelloGET /after HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a.localhost\r\nX\x00: y\r\n\r\n",
	// Field names that are not tokens: some servers stop reading the
	// header section at one, and miss what the sidecar adds after it.
	"GET / HTTP/1.1\r\nHost: a.localhost\r\nX Foo: bar\r\nX-After: 1\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a.localhost\r\nX(Foo): bar\r\n\r\nGET /after HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a.localhost\r\nX\xe9: bar\r\n\r\n",
	// Targets fasthttp reads but would send on changed: refused, and the
	// connection closed.
	"GET /a#frag HTTP/1.1\r\nHost: a.localhost\r\n\r\nGET /after HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
	"GET /%zz HTTP/1.1\r\nHost: a.localhost\r\n\r\nGET /after HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
	"GET /! HTTP/1.1\r\nHost: A.LocalHost\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a.localhost\r\nTransfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello",
}

func TestRequestSmugglingDifferential(t *testing.T) {
	rec := newRecorder(t)
	f := newFrontend(t)
	f.set("a", rec.addr)
	for _, s := range smugglingSeeds {
		checkSmuggling(t, f, rec, []byte(s))
	}
}

func FuzzRequestSmuggling(f *testing.F) {
	for _, s := range smugglingSeeds {
		f.Add([]byte(s))
	}
	rec := newRecorder(f)
	fe := newFrontend(f)
	fe.set("a", rec.addr)
	f.Fuzz(func(t *testing.T, raw []byte) {
		if len(raw) > 8<<10 {
			return
		}
		checkSmuggling(t, fe, rec, raw)
	})
}

// TestIsTokenIsNetHTTPs: the frontend's field-name rule is net/http's, byte
// for byte.
func TestIsTokenIsNetHTTPs(t *testing.T) {
	for c := range 256 {
		name := []byte{'X', byte(c)}
		if got, want := isToken(name), httpguts.ValidHeaderFieldName(string(name)); got != want {
			t.Errorf("isToken(%q) = %v; net/http says %v", name, got, want)
		}
	}
	if isToken(nil) {
		t.Error("an empty name is a token")
	}
}

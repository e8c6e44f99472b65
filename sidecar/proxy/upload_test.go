package proxy

import (
	"bufio"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sb "github.com/switchboard-go/switchboard"
)

// received is what an instance made of a request's body.
type received struct {
	n       int64
	sum     string
	err     error
	chunked bool
	length  int64
	trailer http.Header
	header  http.Header
}

// uploadSink is an instance that reads request bodies as they come,
// tells the test when one has reached mark bytes, and answers with their
// SHA-256 (or, for a body it could not read, tells the test why).
type uploadSink struct {
	srv     *httptest.Server
	reached chan struct{} // a body reached mark bytes
	got     chan received
}

func newUploadSink(t *testing.T, mark int64) *uploadSink {
	s := &uploadSink{reached: make(chan struct{}, 16), got: make(chan received, 16)}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		var n int64
		buf := make([]byte, 32<<10)
		var err error
		told := false
		for {
			var k int
			k, err = r.Body.Read(buf)
			h.Write(buf[:k])
			n += int64(k)
			if n >= mark && !told {
				told = true
				s.reached <- struct{}{}
			}
			if err != nil {
				break
			}
		}
		if err == io.EOF {
			err = nil
		}
		rec := received{n: n, sum: hex.EncodeToString(h.Sum(nil)), err: err, length: r.ContentLength,
			chunked: len(r.TransferEncoding) > 0, trailer: r.Trailer, header: r.Header}
		s.got <- rec
		if err != nil {
			return
		}
		if strings.Contains(r.Header.Get("Accept"), "text/event-stream") {
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprintf(w, "data: %s\n\n", rec.sum)
			return
		}
		fmt.Fprint(w, rec.sum)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

// waitFor waits for ch, or fails the test with why.
func waitFor[T any](t *testing.T, ch <-chan T, why string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(20 * time.Second):
		t.Fatalf("gave up waiting: %s", why)
		panic("unreachable")
	}
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func sumOf(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// chunk frames b as one chunk of a chunked body.
func chunk(b []byte) []byte {
	return append(append(fmt.Appendf(nil, "%x\r\n", len(b)), b...), "\r\n"...)
}

// TestLargeBodiesStreamToTheInstance: a body larger than bufferedBody,
// with a Content-Length or chunked, reaches the instance while the caller
// is still sending it (the caller waits for the instance to have 2 MiB of
// it before it sends the rest: a sidecar holding bodies whole would never
// answer), byte for byte, framed as it came.
func TestLargeBodiesStreamToTheInstance(t *testing.T) {
	const first, rest = 3 << 20, 5 << 20
	sink := newUploadSink(t, 2<<20)
	f := newFrontend(t)
	f.set("a", sink.srv.URL)
	body := randomBytes(t, first+rest)
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) {
			c := f.dial()
			framing := fmt.Sprintf("Content-Length: %d", len(body))
			part1, part2 := body[:first], body[first:]
			if chunked {
				framing = "Transfer-Encoding: chunked"
				part1, part2 = chunk(part1), append(chunk(part2), "0\r\n\r\n"...)
			}
			held := make(chan bool, 1)
			go func() {
				fmt.Fprintf(c, "POST /upload HTTP/1.1\r\nHost: a.localhost\r\n%s\r\n\r\n", framing)
				c.Write(part1)
				select {
				case <-sink.reached:
					held <- false
					c.Write(part2)
				case <-time.After(20 * time.Second):
					held <- true
					c.Close()
				}
			}()
			res, err := http.ReadResponse(bufio.NewReader(c), nil)
			if <-held {
				t.Fatal("the instance never got the first 2 MiB: the sidecar held the body back")
			}
			if err != nil {
				t.Fatal(err)
			}
			answer, _ := io.ReadAll(res.Body)
			got := waitFor(t, sink.got, "the instance's record")
			if res.StatusCode != 200 || string(answer) != sumOf(body) || got.err != nil {
				t.Fatalf("answer %d %q (instance read %d bytes, err %v), want 200 and the body's SHA-256", res.StatusCode, answer, got.n, got.err)
			}
			if got.chunked != chunked || (!chunked && got.length != int64(len(body))) {
				t.Errorf("the instance got chunked=%v length=%d, want the caller's framing", got.chunked, got.length)
			}
		})
	}
}

// TestStreamedBodiesLoseTheirTrailer: the trailer section of a chunked
// body that streams is dropped, as that of one read whole is: it would
// reach the instance after the header section the sidecar checked.
func TestStreamedBodiesLoseTheirTrailer(t *testing.T) {
	sink := newUploadSink(t, 1<<40)
	f := newFrontend(t)
	f.set("a", sink.srv.URL)
	body := randomBytes(t, 2<<20)
	raw := "POST / HTTP/1.1\r\nHost: a.localhost\r\nTransfer-Encoding: chunked\r\nTrailer: X-Evil\r\n\r\n" +
		string(chunk(body)) + "0\r\nX-Evil: trailer\r\nSwitchboard-Service: b\r\n\r\n"
	res, answer := exchange(t, f.dial(), raw)
	got := waitFor(t, sink.got, "the instance's record")
	if res.StatusCode != 200 || string(answer) != sumOf(body) {
		t.Fatalf("answer %d %q, want 200 and the body's SHA-256", res.StatusCode, answer)
	}
	if len(got.trailer) > 0 || got.header.Get("X-Evil") != "" || got.header.Get("Trailer") != "" ||
		got.header.Get(ServiceHeader) != "" {
		t.Errorf("the trailer reached the instance: trailer %v, header %v", got.trailer, got.header)
	}
}

// TestACallerGoneMidUploadCutsTheRequestShort: when the caller hangs up
// (or sends a malformed chunk) in the middle of a body that streams, the
// instance sees its request end short, never a whole request with part
// of the body.
func TestACallerGoneMidUploadCutsTheRequestShort(t *testing.T) {
	sink := newUploadSink(t, 2<<20)
	f := newFrontend(t)
	f.set("a", sink.srv.URL)
	part := randomBytes(t, 3<<20)
	for _, tc := range []struct {
		name, framing string
		body, then    []byte
	}{
		{"length", "Content-Length: 8388608", part, nil},
		{"chunked", "Transfer-Encoding: chunked", chunk(part), nil},
		{"malformed chunk", "Transfer-Encoding: chunked", chunk(part), []byte("zz\r\nbad\r\n0\r\n\r\n")},
		// fasthttp reads the data of a chunk with a bad end as one: its
		// chunked writer sent that on and read again, and the instance got
		// a whole request out of the next, well-formed, last chunk.
		{"chunk with a bad end", "Transfer-Encoding: chunked", append(fmt.Appendf(nil, "%x\r\n", len(part)), part...), []byte("X0\r\n\r\n")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := f.dial()
			fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: a.localhost\r\n%s\r\n\r\n", tc.framing)
			c.Write(tc.body)
			waitFor(t, sink.reached, "the instance never got the first 2 MiB")
			if tc.then != nil {
				c.Write(tc.then)
			} else {
				c.Close()
			}
			if got := waitFor(t, sink.got, "the instance's record"); got.err == nil {
				t.Fatalf("the instance read a whole request of %d bytes from a body cut short", got.n)
			}
			if tc.then != nil {
				c.SetDeadline(time.Now().Add(20 * time.Second))
				res, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					t.Fatal(err)
				}
				if b, _ := io.ReadAll(res.Body); res.StatusCode != 400 || !strings.Contains(string(b), "request body") || !res.Close {
					t.Errorf("answer %d %s (close %v), want 400 about the request body, and the connection closed", res.StatusCode, b, res.Close)
				}
			}
		})
	}
}

// TestAnInstanceMayAnswerBeforeTheBodyIsIn: an instance that refuses an
// upload without reading it (413, say) has its answer reach the caller,
// which is still sending: not a 502 for the body it would not take.
func TestAnInstanceMayAnswerBeforeTheBodyIsIn(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "too large for me", http.StatusRequestEntityTooLarge)
	}))
	defer srv.Close()
	f := newFrontend(t)
	f.set("a", srv.URL)
	c := f.dial()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	go func() {
		fmt.Fprintf(c, "PUT / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: %d\r\n\r\n", 64<<20)
		zeros := make([]byte, 1<<20)
		for range 64 {
			if _, err := c.Write(zeros); err != nil {
				return
			}
		}
	}()
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != 413 || !strings.Contains(string(b), "too large for me") {
		t.Fatalf("answer %d %q, want the instance's 413", res.StatusCode, b)
	}
}

// TestAnUploadIsRetriedOnlyWhenNoneOfItWasSent: an upload goes to another
// instance when the first could not be connected to (none of the body was
// read yet), never after its bytes went to one.
func TestAnUploadIsRetriedOnlyWhenNoneOfItWasSent(t *testing.T) {
	sink := newUploadSink(t, 1<<40)
	body := randomBytes(t, 2<<20)
	put := func(f *frontend) (*http.Response, string) {
		return f.do("PUT", "a", "/", string(body))
	}

	f := newFrontend(t)
	f.set("a", deadAddr(t), deadAddr(t), sink.srv.URL)
	if res, answer := put(f); res.StatusCode != 200 || answer != sumOf(body) {
		t.Fatalf("with two instances down: %d %q, want 200 from the third", res.StatusCode, answer)
	}

	// Instances that take the body and hang up: the PUT is idempotent,
	// but there is no body left to send again.
	var mu sync.Mutex
	took := 0
	taker := func() string {
		return "http://" + serveConns(t, func(c net.Conn) {
			mu.Lock()
			took++
			mu.Unlock()
			io.CopyN(io.Discard, c, 1<<20)
		})
	}
	f = newFrontend(t)
	f.set("a", taker(), taker())
	res, answer := put(f)
	if e := errorOf(t, answer); res.StatusCode != 502 || e.Code != sb.EBadGateway {
		t.Fatalf("answer %d %q, want 502", res.StatusCode, answer)
	}
	mu.Lock()
	defer mu.Unlock()
	if took != 1 {
		t.Errorf("the upload was sent %d times, want once", took)
	}
}

// TestAnUploadsTimeoutCountsFromItsEnd: Switchboard-Timeout bounds the
// wait for the answer once the body is in, as for a body read whole (and
// as Envoy's route timeout does): a slow upload is not cut by it, a slow
// answer is.
func TestAnUploadsTimeoutCountsFromItsEnd(t *testing.T) {
	slow := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/slow" {
			<-slow
		}
		fmt.Fprint(w, "ok")
	}))
	defer srv.Close()
	defer close(slow)
	f := newFrontend(t)
	f.set("a", srv.URL)
	for _, path := range []string{"/", "/slow"} {
		pr, pw := io.Pipe()
		go func() {
			pw.Write(make([]byte, 2<<20))
			time.Sleep(600 * time.Millisecond) // twice the timeout
			pw.Write(make([]byte, 1<<20))
			pw.Close()
		}()
		res, b := f.send("POST", "a", path, pr, 3<<20, TimeoutHeader, "300ms")
		if path == "/" && (res.StatusCode != 200 || b != "ok") {
			t.Errorf("a slow upload: %d %s, want 200", res.StatusCode, b)
		}
		if path == "/slow" && (res.StatusCode != 504 || !strings.Contains(b, "of the request's end")) {
			t.Errorf("a slow answer: %d %s, want 504", res.StatusCode, b)
		}
	}
}

// TestAnEventStreamRequestWithALargeBody: a request for an event stream
// whose body streams (a large POST answered with Server-Sent Events, as
// completion APIs do) sends its body before the answer is relayed.
func TestAnEventStreamRequestWithALargeBody(t *testing.T) {
	sink := newUploadSink(t, 1<<40)
	f := newFrontend(t)
	f.set("a", sink.srv.URL)
	body := randomBytes(t, 3<<20)
	for _, length := range []int64{int64(len(body)), -1} {
		res, b := f.send("POST", "a", "/", io.MultiReader(strings.NewReader(string(body))), length, "Accept", "text/event-stream")
		if want := "data: " + sumOf(body) + "\n\n"; res.StatusCode != 200 || b != want {
			t.Errorf("length %d: %d %q, want 200 %q", length, res.StatusCode, b, want)
		}
		waitFor(t, sink.got, "the instance's record")
	}
}

// earlyInstance answers every request from its head alone, without reading
// its body: with a small Content-Length (read whole by the sidecar), or
// chunked (streamed), and, with sse, as an event stream. answerAfter, if
// not nil, holds the answer back until it is closed; the body is then read
// slowly.
func earlyInstance(t *testing.T, chunked, sse bool, answerAfter <-chan struct{}) string {
	return "http://" + serveConns(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if answerAfter != nil {
			<-answerAfter
		}
		ct := "text/plain"
		if sse {
			ct = "text/event-stream"
		}
		if chunked {
			fmt.Fprintf(c, "HTTP/1.1 413 Too Large\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nno th\r\n", ct)
		} else {
			fmt.Fprintf(c, "HTTP/1.1 413 Too Large\r\nContent-Type: %s\r\nContent-Length: 11\r\n\r\nno thanks!\n", ct)
		}
		if answerAfter != nil {
			buf := make([]byte, 64<<10)
			for {
				if _, err := req.Body.Read(buf); err != nil {
					break
				}
				time.Sleep(time.Millisecond)
			}
		}
		if chunked {
			io.WriteString(c, "6\r\nanks!\n\r\n0\r\n\r\n")
		}
		io.Copy(io.Discard, br)
	})
}

// TestAnEarlyAnswerDoesNotWaitForTheRestOfTheBody: an instance that
// answers an upload from its head alone has its answer reach a caller that
// paused mid-body, read whole or streamed, to an HTTP/1.1 or an HTTP/1.0
// caller, and for an event stream request too: not when the caller sends
// more (or the read timeout of 2 minutes ends it), nor as a 502 for the
// body the instance did not read. The caller's connection closes after it:
// the rest of its body is not for anyone.
func TestAnEarlyAnswerDoesNotWaitForTheRestOfTheBody(t *testing.T) {
	for _, tc := range []struct {
		name              string
		chunked, sse, h10 bool
	}{
		{"whole", false, false, false},
		{"streamed", true, false, false},
		{"streamed to HTTP/1.0", true, false, true},
		{"event stream request", false, true, false},
		{"event stream request, streamed", true, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFrontend(t)
			f.set("a", earlyInstance(t, tc.chunked, tc.sse, nil))
			c := f.dial()
			proto, accept := "HTTP/1.1", ""
			if tc.h10 {
				proto = "HTTP/1.0"
			}
			if tc.sse {
				accept = "Accept: text/event-stream\r\n"
			}
			fmt.Fprintf(c, "PUT / %s\r\nHost: a.localhost\r\n%sContent-Length: %d\r\n\r\n", proto, accept, 4<<20)
			c.Write(make([]byte, 2<<20))
			c.SetReadDeadline(time.Now().Add(20 * time.Second))
			res, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("no answer while the caller pauses: %v", err)
			}
			b, err := io.ReadAll(res.Body)
			if err != nil || res.StatusCode != 413 || string(b) != "no thanks!\n" {
				t.Fatalf("answer %d %q (%v), want the instance's whole 413", res.StatusCode, b, err)
			}
			if !res.Close {
				t.Errorf("the caller's connection stays open after the answer, with the rest of the body unsent")
			}
		})
	}
}

// TestAStalledUploadEndsWithTheReadTimeout: a caller that stops sending an
// upload's body holds the instance's connection no longer than the
// frontend's read timeout, also for an event stream request (whose
// connection fasthttp hands over without a deadline).
func TestAStalledUploadEndsWithTheReadTimeout(t *testing.T) {
	sink := newUploadSink(t, 1<<40)
	f := newFrontend(t, func(h *HTTP) { h.readTimeout = time.Second })
	f.set("a", sink.srv.URL)
	for _, accept := range []string{"", "Accept: text/event-stream\r\n"} {
		c := f.dial()
		fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: a.localhost\r\n%sContent-Length: %d\r\n\r\n", accept, 4<<20)
		c.Write(make([]byte, 2<<20))
		if got := waitFor(t, sink.got, "the instance's connection, still open long after the read timeout"); got.err == nil {
			t.Errorf("%q: the instance read a whole request of %d bytes", accept, got.n)
		}
	}
}

// TestACallerGoneMidAnswerLeavesItsUploadAlone: an HTTP/1.0 caller (whose
// connection the sidecar takes over to send an answer of unknown length)
// resets its connection while its upload still goes out. The writing must
// be over before fasthttp takes the connection's reader and the request
// back; the race detector watches.
func TestACallerGoneMidAnswerLeavesItsUploadAlone(t *testing.T) {
	for range 5 {
		answer := make(chan struct{})
		f := newFrontend(t)
		f.set("a", earlyInstance(t, true, false, answer))
		c := f.dial()
		fmt.Fprintf(c, "POST / HTTP/1.0\r\nHost: a.localhost\r\nContent-Length: %d\r\n\r\n", 64<<20)
		go func() {
			buf := make([]byte, 1<<20)
			for range 64 {
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		}()
		time.Sleep(200 * time.Millisecond)
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
		time.Sleep(20 * time.Millisecond)
		close(answer)
		time.Sleep(300 * time.Millisecond)
	}
}

// TestASlowUploadIsNotCutWhileItMoves: the read timeout bounds each wait
// for an upload's next bytes, not the whole upload (as HAProxy's timeout
// client does): one that keeps coming for three read timeouts goes
// through whole.
func TestASlowUploadIsNotCutWhileItMoves(t *testing.T) {
	sink := newUploadSink(t, 1<<40)
	f := newFrontend(t, func(h *HTTP) { h.readTimeout = time.Second })
	f.set("a", sink.srv.URL)
	body := randomBytes(t, 2<<20+30*(64<<10))
	pr, pw := io.Pipe()
	go func() {
		pw.Write(body[:2<<20])
		for rest := body[2<<20:]; len(rest) > 0; rest = rest[64<<10:] {
			time.Sleep(100 * time.Millisecond)
			pw.Write(rest[:64<<10])
		}
		pw.Close()
	}()
	res, b := f.send("POST", "a", "/", pr, int64(len(body)))
	if res.StatusCode != 200 || b != sumOf(body) {
		t.Fatalf("an upload of 3 s with a read timeout of 1 s: %d %q, want 200 and the body's SHA-256", res.StatusCode, b)
	}
}

// TestStalledUploadsEjectNoInstance: a caller that stalls its uploads is
// the one out of time (the instance is given a second more than the
// caller to take the next bytes): each is answered 408 and counts for
// nothing against the instance, however many there are. When both ran out
// together, some were answered 504 and counted as the instance's
// failures, and a caller could have a healthy instance ejected.
func TestStalledUploadsEjectNoInstance(t *testing.T) {
	sink := newUploadSink(t, 1<<40)
	go func() {
		for range sink.got {
		}
	}()
	var ejected atomic.Int32
	f := newFrontend(t, func(h *HTTP) { h.readTimeout = 300 * time.Millisecond })
	f.table.OnEject = func(string, string) { ejected.Add(1) }
	f.set("a", sink.srv.URL)
	var mu sync.Mutex
	codes := map[int]int{}
	for range 10 {
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := net.Dial("tcp", strings.TrimPrefix(f.url, "http://"))
				if err != nil {
					return
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(20 * time.Second))
				fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: %d\r\n\r\n", 4<<20)
				c.Write(make([]byte, 2<<20))
				res, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					return // the connection closed: the caller's own doing
				}
				io.ReadAll(res.Body)
				mu.Lock()
				codes[res.StatusCode]++
				mu.Unlock()
			}()
		}
		wg.Wait()
	}
	if ejected.Load() > 0 || codes[504] > 0 {
		t.Fatalf("stalled uploads: answers %v, %d ejections; want 408s and none", codes, ejected.Load())
	}
}

// TestShutdownWaitsForAnUploadOneTimeoutAtMost: an upload that trickles on
// and on holds Shutdown no longer than one read timeout: its deadlines
// stop moving once Shutdown begins.
func TestShutdownWaitsForAnUploadOneTimeoutAtMost(t *testing.T) {
	sink := newUploadSink(t, 1<<20)
	go func() {
		for range sink.got {
		}
	}()
	f := newFrontend(t, func(h *HTTP) { h.readTimeout = time.Second })
	f.set("a", sink.srv.URL)
	c := f.dial()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: %d\r\n\r\n", 1<<40)
		c.Write(make([]byte, 2<<20))
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
				if _, err := c.Write(make([]byte, 1<<10)); err != nil {
					return
				}
			}
		}
	}()
	waitFor(t, sink.reached, "the upload never reached the instance")
	done := make(chan error, 1)
	go func() { done <- f.h.Shutdown() }()
	waitFor(t, done, "Shutdown, still waiting for an upload that trickles on")
}

// TestAnAnnouncedBodyHoldsNoMemoryBeforeItComes: a body of up to 1 MiB is
// read whole, but what is set aside for it follows what came, not what the
// Content-Length announced: 64 callers that announce a megabyte each and
// send 9 KiB hold a few MiB, not 64.
func TestAnAnnouncedBodyHoldsNoMemoryBeforeItComes(t *testing.T) {
	sink := newUploadSink(t, 1<<40)
	f := newFrontend(t)
	f.set("a", sink.srv.URL)
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse
	}
	before := heap()
	for range 64 {
		c := f.dial()
		fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: %d\r\n\r\n", 1<<20)
		c.Write(make([]byte, 9<<10))
	}
	time.Sleep(500 * time.Millisecond) // every handler is waiting for the rest
	if grew := int64(heap()) - int64(before); grew > 32<<20 {
		t.Fatalf("64 callers that sent 9 KiB of an announced MiB hold %d MiB", grew>>20)
	}
}

// TestACallerStillSendingReadsTheAnswer: the answer to an upload whose
// body was not all read (an instance's early 413, a 502 for an instance
// that hung up) reaches a net/http client that is still sending: the
// sidecar half-closes and reads on briefly before it closes, as net/http's
// server does. Closed at once, with the body's bytes unread, the
// connection sent a reset that overtook the answer, and the client saw
// "connection reset by peer" in place of it.
func TestACallerStillSendingReadsTheAnswer(t *testing.T) {
	f := newFrontend(t)
	f.set("a", earlyInstance(t, false, false, nil))
	f.set("b", "http://"+serveConns(t, func(c net.Conn) { io.CopyN(io.Discard, c, 1<<20) }))
	for _, tc := range []struct {
		service string
		status  int
	}{{"a", 413}, {"b", 502}} {
		for range 5 {
			req, _ := http.NewRequest("PUT", f.url+"/", io.LimitReader(zeros{}, 64<<20))
			req.ContentLength = 64 << 20
			req.Header.Set(ServiceHeader, tc.service)
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatalf("service %s: %v, want its %d", tc.service, err, tc.status)
			}
			io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != tc.status {
				t.Fatalf("service %s: %d, want %d", tc.service, res.StatusCode, tc.status)
			}
		}
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// The sidecar's own answer to a large upload (no instance, a bad header,
// an instance that refuses the connection) reaches a caller still sending
// the body: fasthttp closed the connection with the body unread, which
// sent a reset, and the caller saw "connection reset by peer" instead.
func TestTheSidecarsAnswerToALargeUploadIsNotReset(t *testing.T) {
	f := newFrontend(t)
	f.set("none") // no instance
	f.set("b", testBackend(t, "b").URL)
	f.set("dead", deadAddr(t))
	body := strings.Repeat("x", 4<<20)
	for _, tc := range []struct {
		service, timeout string
		want             int
	}{{"none", "", 503}, {"b", "bogus", 400}, {"dead", "", 502}} {
		for i := range 5 {
			req, _ := http.NewRequest("POST", f.url+"/", strings.NewReader(body))
			req.Header.Set(ServiceHeader, tc.service)
			if tc.timeout != "" {
				req.Header.Set(TimeoutHeader, tc.timeout)
			}
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatalf("POST of 4 MiB to %s (try %d): %v; want the sidecar's %d", tc.service, i, err, tc.want)
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			if res.StatusCode != tc.want {
				t.Fatalf("POST of 4 MiB to %s = %d; want %d", tc.service, res.StatusCode, tc.want)
			}
		}
	}
}

// A small chunked body the sidecar answers itself (here a bad header)
// keeps the connection, as fasthttp's own reading of an unread body keeps
// it: lingering after any chunked body closed it, and the caller's next
// request on it failed.
func TestASmallChunkedBodyTheSidecarAnswersKeepsTheConnection(t *testing.T) {
	f := newFrontend(t)
	f.set("b", testBackend(t, "b").URL)
	c := f.dial()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: b.localhost\r\nSwitchboard-Timeout: bogus\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != 400 || res.Close {
		t.Fatalf("chunked POST with a bad timeout = %d, close %v; want 400 on a connection kept", res.StatusCode, res.Close)
	}
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: b.localhost\r\n\r\n")
	if res, err = http.ReadResponse(br, nil); err != nil || res.StatusCode != 200 {
		t.Fatalf("the next request on the connection: %v %v; want 200", res, err)
	}
	res.Body.Close()
}

package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// newTransport returns a transport for many concurrent connections to one
// host on loopback: no proxy, no compression, no HTTP/2, and as many idle
// connections kept as there are callers.
func newTransport(conns int) *http.Transport {
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          conns + 16,
		MaxIdleConnsPerHost:   conns + 16,
		MaxConnsPerHost:       0,
		IdleConnTimeout:       90 * time.Second,
		DisableCompression:    true,
		ForceAttemptHTTP2:     false,
		ResponseHeaderTimeout: 0, // blocking queries answer late on purpose
	}
}

// throughput is the outcome of a bounded run of concurrent requests.
type throughput struct {
	clients  int
	done     int64 // successful requests
	errors   int64
	firstErr error
	elapsed  time.Duration
	atlasCPU time.Duration
	selfCPU  time.Duration
	otherCPU time.Duration   // used by every other process meanwhile
	capped   bool            // stopped by the time bound before the count
	lat      []time.Duration // of the successful requests
}

func (t *throughput) perSecond() float64 {
	if t == nil || t.elapsed <= 0 {
		return 0
	}
	return float64(t.done) / t.elapsed.Seconds()
}

// run calls do from clients goroutines with i = 0, 1, 2, ... until count
// calls were made (count < 0: no bound), maxDur has passed or ctx ends.
// It gives up early when more than 1% of the calls fail.
func (b *bench) run(ctx context.Context, clients, count int, maxDur time.Duration, do func(ctx context.Context, i int) error) (*throughput, error) {
	ctx, cancel := context.WithTimeout(ctx, maxDur)
	defer cancel()
	t := &throughput{clients: clients}
	var (
		next    atomic.Int64
		done    atomic.Int64
		errs    atomic.Int64
		errOnce sync.Once
		wg      sync.WaitGroup
		latMu   sync.Mutex
	)
	cpu0, self0, all0 := b.atlas.cpu(), selfCPU(), machineCPU()
	start := time.Now()
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lat []time.Duration
			defer func() {
				latMu.Lock()
				t.lat = append(t.lat, lat...)
				latMu.Unlock()
			}()
			for ctx.Err() == nil {
				i := next.Add(1) - 1
				if count >= 0 && i >= int64(count) {
					return
				}
				start := time.Now()
				if err := do(ctx, int(i)); err != nil {
					if ctx.Err() != nil {
						return // the time bound, not a failure
					}
					errOnce.Do(func() { t.firstErr = err })
					if n := errs.Add(1); n > 20 && n*100 > done.Load() {
						cancel()
						return
					}
					continue
				}
				lat = append(lat, time.Since(start))
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	t.elapsed = time.Since(start)
	t.atlasCPU, t.selfCPU = b.atlas.cpu()-cpu0, selfCPU()-self0
	t.otherCPU = max(0, machineCPU()-all0-t.atlasCPU-t.selfCPU)
	t.done, t.errors = done.Load(), errs.Load()
	t.capped = count >= 0 && t.done+t.errors < int64(count)
	if err := b.ctx.Err(); err != nil {
		return t, err
	}
	if err := b.atlas.alive(); err != nil {
		return t, err
	}
	if t.errors > 20 && t.errors*100 > t.done {
		return t, fmt.Errorf("%d of %d requests failed; the first: %v", t.errors, t.errors+t.done, t.firstErr)
	}
	if t.done == 0 {
		return t, fmt.Errorf("no request succeeded: %v", t.firstErr)
	}
	return t, nil
}

// do sends one request and reads the whole answer; anything but 200 is an
// error naming the answer.
func (b *bench) do(ctx context.Context, c *http.Client, method, path string, body []byte) (*http.Response, []byte, error) {
	return b.doAt(ctx, c, b.url, method, path, body)
}

// doAt is do against the Atlas at base.
func (b *bench) doAt(ctx context.Context, c *http.Client, base, method, path string, body []byte) (*http.Response, []byte, error) {
	resp, err := send(ctx, c, method, base+path, body)
	if err != nil {
		return resp, nil, err
	}
	data, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return resp, nil, fmt.Errorf("%s %s: reading the answer: %w", method, path, err)
	}
	return resp, data, nil
}

// put sends a small PUT and discards the answer.
func (b *bench) put(ctx context.Context, c *http.Client, path string, body []byte) error {
	resp, err := send(ctx, c, http.MethodPut, b.url+path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return err
}

// send sends one request (a body as JSON) and returns a 200 answer with
// its body for the caller to read and close; anything else is an error
// naming the request and the answer's first 512 bytes.
func send(ctx context.Context, c *http.Client, method, url string, body []byte) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		return resp, fmt.Errorf("%s %s: %s: %s", method, req.URL.RequestURI(), resp.Status, bytes.TrimSpace(data))
	}
	return resp, nil
}

// serviceOf names the service of instance i: querySize instances each.
func (b *bench) serviceOf(i int) string { return fmt.Sprintf("bench-%03d", i/b.o.querySize) }

// instanceID is the id of instance i.
func (b *bench) instanceID(i int) string { return fmt.Sprintf("bench-%07d", i) }

// asSidecar is the query of a sidecar's registrations and heartbeats: it
// makes them again if a crash of Atlas's machine takes them back, so Atlas
// may sync them after it answers.
const asSidecar = "?sync=later"

// registration is the body that registers instance i of service: one tag
// and one meta entry, as a sidecar sends them, and a one-hour lease so that
// nothing expires during the run.
func registration(service string, i int) []byte { return registrationAs(service, i, "1.4.2") }

// registrationAs is registration with version as its meta's.
func registrationAs(service string, i int, version string) []byte {
	buf := make([]byte, 0, 160)
	buf = append(buf, `{"service":"`...)
	buf = append(buf, service...)
	buf = append(buf, `","address":"10.`...)
	buf = strconv.AppendInt(buf, int64(i>>16&255), 10)
	buf = append(buf, '.')
	buf = strconv.AppendInt(buf, int64(i>>8&255), 10)
	buf = append(buf, '.')
	buf = strconv.AppendInt(buf, int64(i&255), 10)
	buf = append(buf, `","port":`...)
	buf = strconv.AppendInt(buf, int64(5000+i%1000), 10)
	buf = append(buf, `,"tags":["v2"],"meta":{"version":"`...)
	buf = append(buf, version...)
	buf = append(buf, `"},"ttl":"1h"}`...)
	return buf
}

// register registers instances first, first+1, ..., first+n-1 with the
// given number of clients, for at most maxDur.
func (b *bench) register(ctx context.Context, clients, first, n int, maxDur time.Duration) (*throughput, error) {
	return b.registerAs(ctx, clients, first, n, "1.4.2", maxDur)
}

// registerAs is register with version in each instance's meta.
func (b *bench) registerAs(ctx context.Context, clients, first, n int, version string, maxDur time.Duration) (*throughput, error) {
	return b.run(ctx, clients, n, maxDur, func(ctx context.Context, i int) error {
		i += first
		return b.put(ctx, b.load, "/v1/instances/"+b.instanceID(i)+asSidecar, registrationAs(b.serviceOf(i), i, version))
	})
}

// warmUp registers, queries, heartbeats and deregisters one instance per
// client, so that the empty Atlas measured next has run every path the
// phases use: the code those paths fault in, and the connections the
// clients keep open, are not charged to the instances registered after.
func (b *bench) warmUp(ctx context.Context) error {
	progress("warm-up: %d instances registered, read, renewed and deregistered", b.o.clients)
	id := func(i int) string { return fmt.Sprintf("warm-up-%02d", i) }
	_, err := b.run(ctx, b.o.clients, b.o.clients, 30*time.Second, func(ctx context.Context, i int) error {
		path := "/v1/instances/" + id(i)
		if err := b.put(ctx, b.load, path, registration("warm-up", i)); err != nil {
			return err
		}
		if err := b.put(ctx, b.load, path+"/status", []byte(`{"status":"passing","output":""}`)); err != nil {
			return err
		}
		if _, _, err := b.do(ctx, b.load, http.MethodGet, "/v1/services/warm-up", nil); err != nil {
			return err
		}
		_, _, err := b.do(ctx, b.load, http.MethodDelete, path, nil)
		return err
	})
	return err
}

// heartbeats sends unchanged heartbeats for instances 0..n-1, round robin,
// for d.
func (b *bench) heartbeats(ctx context.Context, clients, n int, d time.Duration) (*throughput, error) {
	paths := make([]string, n)
	for i := range paths {
		paths[i] = "/v1/instances/" + b.instanceID(i) + "/status" + asSidecar
	}
	body := []byte(`{"status":"passing","output":""}`)
	return b.run(ctx, clients, -1, d, func(ctx context.Context, i int) error {
		return b.put(ctx, b.load, paths[i%n], body)
	})
}

// queryLatency times count sequential GETs of path (after a few unmeasured
// ones), for at most maxDur. It returns the latencies and the size of the
// last answer.
func (b *bench) queryLatency(ctx context.Context, path string, count int, maxDur time.Duration) ([]time.Duration, int, error) {
	ctx, cancel := context.WithTimeout(ctx, maxDur)
	defer cancel()
	var size int
	for range 20 {
		_, body, err := b.do(ctx, b.load, http.MethodGet, path, nil)
		if err != nil {
			return nil, 0, err
		}
		size = len(body)
	}
	lat := make([]time.Duration, 0, count)
	for range count {
		start := time.Now()
		_, body, err := b.do(ctx, b.load, http.MethodGet, path, nil)
		if err != nil {
			if ctx.Err() != nil && b.ctx.Err() == nil && len(lat) > 0 {
				break // the time bound
			}
			return lat, size, err
		}
		lat = append(lat, time.Since(start))
		size = len(body)
	}
	return lat, size, nil
}

// batchHeartbeats sends unchanged heartbeats for instances 0..n-1 through
// PUT /v1/heartbeats, size per request, round robin, from clients clients
// for d. The throughput counts requests; beats is heartbeats accepted (a
// batch entry with an error is not counted).
func (b *bench) batchHeartbeats(ctx context.Context, clients, n, size int, d time.Duration) (*throughput, int64, error) {
	batches := (n + size - 1) / size
	bodies := make([][]byte, batches)
	per := make([]int, batches)
	for k := range bodies {
		buf := []byte(`{"heartbeats":[`)
		for i := k * size; i < min(n, (k+1)*size); i++ {
			if i > k*size {
				buf = append(buf, ',')
			}
			buf = append(buf, `{"id":"`...)
			buf = append(buf, b.instanceID(i)...)
			buf = append(buf, `","status":"passing"}`...)
			per[k]++
		}
		bodies[k] = append(buf, "]}"...)
	}
	var beats atomic.Int64
	errMark := []byte(`"error"`)
	t, err := b.run(ctx, clients, -1, d, func(ctx context.Context, i int) error {
		k := i % batches
		_, data, err := b.do(ctx, b.load, http.MethodPut, "/v1/heartbeats"+asSidecar, bodies[k])
		if err != nil {
			return err
		}
		bad := bytes.Count(data, errMark)
		beats.Add(int64(per[k] - bad))
		if bad > 0 {
			return fmt.Errorf("PUT /v1/heartbeats: %d of %d entries failed: %.300s", bad, per[k], data)
		}
		return nil
	})
	return t, beats.Load(), err
}

// leanConns is a pool of leanConn, one per concurrent caller, for the
// lean client's registrations.
type leanConns struct {
	host string
	idle chan *leanConn
}

func newLeanConns(base string, n int) *leanConns {
	return &leanConns{host: strings.TrimPrefix(base, "http://"), idle: make(chan *leanConn, n)}
}

// do is leanConn.do on a connection of the pool.
func (l *leanConns) do(ctx context.Context, method, path string, body []byte) error {
	var c *leanConn
	select {
	case c = <-l.idle:
	default:
		c = &leanConn{}
	}
	_, _, err := c.do(ctx, l.host, method, path, body)
	if err != nil {
		c.close()
	}
	select {
	case l.idle <- c:
	default:
		c.close()
	}
	return err
}

// close closes the idle connections.
func (l *leanConns) close() {
	for {
		select {
		case c := <-l.idle:
			c.close()
		default:
			return
		}
	}
}

// leanConn is a minimal HTTP/1.1 client on one kept-alive connection: each
// request written in one write, its answer read into a reused buffer.
// net/http's client costs the load generator about as much CPU per
// request as Atlas spends, on the same two cores; this one a fraction of
// it, so that a figure from it says more about Atlas.
type leanConn struct {
	conn net.Conn
	br   *bufio.Reader
	req  []byte
	body []byte
}

func (c *leanConn) close() {
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}

// do sends method path (a body as JSON), dialling host first when the
// connection is closed, and returns the answer's Switchboard-Index and
// body (good until the next call); anything but 200 is an error naming
// the request and the answer. ctx ending interrupts it. After an error
// the caller closes the connection.
func (c *leanConn) do(ctx context.Context, host, method, path string, body []byte) (index uint64, answer []byte, err error) {
	if c.conn == nil {
		conn, err := (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, "tcp", host)
		if err != nil {
			return 0, nil, err
		}
		c.conn, c.br = conn, bufio.NewReaderSize(conn, 32<<10)
	}
	conn := c.conn
	conn.SetDeadline(time.Time{})
	defer context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })()
	c.req = append(c.req[:0], method...)
	c.req = append(c.req, ' ')
	c.req = append(c.req, path...)
	c.req = append(c.req, " HTTP/1.1\r\nHost: "...)
	c.req = append(c.req, host...)
	if body != nil {
		c.req = append(c.req, "\r\nContent-Type: application/json\r\nContent-Length: "...)
		c.req = strconv.AppendInt(c.req, int64(len(body)), 10)
	}
	c.req = append(c.req, "\r\n\r\n"...)
	c.req = append(c.req, body...)
	if _, err := conn.Write(c.req); err != nil {
		return 0, nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	status, index, cl, err := readLeanHead(c.br)
	if err == nil && cl < 0 {
		err = errors.New("answer without Content-Length")
	}
	if err == nil {
		if cap(c.body) < cl {
			c.body = make([]byte, cl)
		}
		c.body = c.body[:cl]
		_, err = io.ReadFull(c.br, c.body)
	}
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if status != http.StatusOK {
		return 0, nil, fmt.Errorf("%s %s: status %d: %s", method, path, status, bytes.TrimSpace(c.body[:min(len(c.body), 512)]))
	}
	return index, c.body, nil
}

// registerLean registers n instances of their own (lean-0000000...) with
// the lean client from clients goroutines, for at most maxDur, then
// deregisters them (not timed), so that the phases after it find Atlas
// as they would without it.
func (b *bench) registerLean(ctx context.Context, clients, n int, maxDur time.Duration) (*throughput, error) {
	lean := newLeanConns(b.url, clients)
	defer lean.close()
	id := func(i int) string { return fmt.Sprintf("/v1/instances/lean-%07d", i) }
	t, err := b.run(ctx, clients, n, maxDur, func(ctx context.Context, i int) error {
		return lean.do(ctx, http.MethodPut, id(i)+asSidecar, registration(b.serviceOf(i), i))
	})
	if t == nil {
		return t, err
	}
	done := int(t.done + t.errors)
	if _, derr := b.run(ctx, clients, done, 2*maxDur, func(ctx context.Context, i int) error {
		err := lean.do(ctx, http.MethodDelete, id(i), nil)
		if err != nil && strings.Contains(err.Error(), "status 404") {
			return nil // one whose registration failed
		}
		return err
	}); derr != nil && err == nil {
		err = fmt.Errorf("deregistering them: %w", derr)
	}
	return t, err
}

package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// watchedService is the service the propagation phases watch and change.
const watchedService = "watched"

// propagation is the outcome of one propagation phase.
type propagation struct {
	mode      string // "sse" or "blocking"
	watchers  int
	changes   int
	lat       []time.Duration // one per (watcher, change) pair seen
	missed    int             // pairs never seen
	answers   int64           // events or answers the watchers got after connecting
	useless   int64           // of which carried no change the watcher had not seen
	errors    int64
	firstErr  error
	connect   time.Duration   // until every watcher was connected and waiting
	changeReq []time.Duration // how long each change's PUT took
	atlasCPU  time.Duration   // during the changes
	selfCPU   time.Duration
	otherCPU  time.Duration
	elapsed   time.Duration // of the changes
	bodyBytes int64         // size of the last answer watcher 0 got
	// rssPerWatcher is how much Atlas's RSS grew, in KiB per watcher,
	// from before the watchers connected until all of them waited. Only
	// for the first phase (event streams), before any watcher's memory was
	// there to reuse, and with one replica; else 0.
	rssPerWatcher float64
}

// propagate connects o.watchers watchers of the watched service (mode "sse":
// event streams; "blocking": blocking queries re-issued after each answer),
// then registers o.changes new instances of it one at a time and measures,
// for every watcher and change, the time from just before the change's
// request was sent until the watcher got an answer that contains it.
func (b *bench) propagate(ctx context.Context, mode string) (*propagation, error) {
	o := b.o
	p := &propagation{mode: mode, watchers: o.watchers, changes: o.changes}
	ids := make([]string, o.changes)
	needles := make([][]byte, o.changes)
	for k := range ids {
		ids[k] = fmt.Sprintf("%s-%s-%03d", watchedService, mode, k)
		// The id and its closing quote, not `"id":"ID"`: a needle that
		// starts with a quote, the commonest byte of JSON, made the
		// search cost the load generator 12% of its CPU.
		needles[k] = []byte(ids[k] + `"`)
	}
	t0 := make([]time.Time, o.changes)
	var sent atomic.Int32 // changes whose t0 is set
	seen := make([]atomic.Int32, o.changes)
	lat := make([][]time.Duration, o.watchers)
	var (
		ready, connected   atomic.Int32
		answers, useless   atomic.Int64
		errs               atomic.Int64
		errMu              sync.Mutex
		lastBody           atomic.Int64
		wg                 sync.WaitGroup
		wctx, stopWatchers = context.WithCancel(ctx)
	)
	defer stopWatchers()
	onErr := func(err error) {
		errs.Add(1)
		errMu.Lock()
		if p.firstErr == nil {
			p.firstErr = err
		}
		errMu.Unlock()
	}
	tr := newTransport(o.watchers)
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}

	var rss0 int64
	if mode == "sse" && len(b.watchURLs()) == 1 {
		m, err := b.atlas.memory()
		if err != nil {
			return p, err
		}
		rss0 = m.RSS
	}
	start := time.Now()
	for w := range o.watchers {
		lat[w] = make([]time.Duration, o.changes)
		next := 0
		// check records every change, in order, that body is the first
		// answer of watcher w to contain.
		check := func(body []byte, now time.Time) {
			if connected.Load() != 0 {
				answers.Add(1)
			}
			if w == 0 {
				lastBody.Store(int64(len(body)))
			}
			n, before := int(sent.Load()), next
			for next < n && bytes.Contains(body, needles[next]) {
				lat[w][next] = now.Sub(t0[next])
				seen[next].Add(1)
				next++
			}
			if next == before && connected.Load() != 0 {
				useless.Add(1)
			}
		}
		onReady := func() { ready.Add(1) }
		base := b.watchURLs()[w%len(b.watchURLs())]
		wg.Add(1)
		go func() {
			defer wg.Done()
			switch mode {
			case "sse":
				b.sseWatcher(wctx, client, base, onReady, check, onErr)
			case "blocking-lean":
				b.leanBlockingWatcher(wctx, base, onReady, check, onErr)
			default:
				b.blockingWatcher(wctx, client, base, onReady, check, onErr)
			}
		}()
		// Open the connections in steps rather than all in one burst.
		if w%100 == 99 {
			if err := sleep(ctx, 10*time.Millisecond); err != nil {
				return p, err
			}
		}
	}
	stop := func() error {
		stopWatchers()
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
			tr.CloseIdleConnections()
			return nil
		case <-time.After(15 * time.Second):
			return errors.New("watchers did not stop within 15s")
		}
	}
	defer stop()

	// Wait until every watcher has its first answer and Atlas holds every
	// stream or blocking query.
	gauge := "switchboard_atlas_event_streams"
	if mode != "sse" {
		gauge = "switchboard_atlas_blocking_queries"
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if err := b.atlas.alive(); err != nil {
			return p, err
		}
		if int(ready.Load()) >= o.watchers {
			held := 0
			for _, u := range b.watchURLs() {
				m, err := metrics(ctx, b.ctl, u)
				if err != nil {
					return p, err
				}
				held += int(m[gauge])
			}
			if held >= o.watchers {
				break
			}
		}
		if time.Now().After(deadline) {
			return p, fmt.Errorf("%d of %d watchers connected in 60s (errors: %d, first: %v)", ready.Load(), o.watchers, errs.Load(), p.firstErr)
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return p, err
		}
	}
	p.connect = time.Since(start)
	connected.Store(1)
	if rss0 > 0 {
		m, err := b.atlas.memory()
		if err != nil {
			return p, err
		}
		p.rssPerWatcher = float64(m.RSS-rss0) / float64(o.watchers)
	}

	cpu0, self0, all0, start := b.atlas.cpu(), selfCPU(), machineCPU(), time.Now()
	for k := range o.changes {
		body := registration(watchedService, 1<<20+k)
		t0[k] = time.Now()
		sent.Store(int32(k + 1))
		err := b.put(ctx, b.ctl, "/v1/instances/"+ids[k], body)
		p.changeReq = append(p.changeReq, time.Since(t0[k]))
		if err != nil {
			return p, err
		}
		// Wait until every watcher saw it (5 s at most), then let the
		// blocking queries be issued again before the next change.
		deadline := time.Now().Add(5 * time.Second)
		for int(seen[k].Load()) < o.watchers && time.Now().Before(deadline) {
			if err := sleep(ctx, time.Millisecond); err != nil {
				return p, err
			}
		}
		if err := sleep(ctx, o.spacing); err != nil {
			return p, err
		}
	}
	p.atlasCPU, p.selfCPU = b.atlas.cpu()-cpu0, selfCPU()-self0
	p.otherCPU = max(0, machineCPU()-all0-p.atlasCPU-p.selfCPU)
	p.elapsed = time.Since(start)
	if err := stop(); err != nil {
		return p, err
	}
	// The watchers have stopped: their results may be read.
	for w := range lat {
		for _, d := range lat[w] {
			if d > 0 {
				p.lat = append(p.lat, d)
			} else {
				p.missed++
			}
		}
	}
	p.answers, p.useless, p.errors = answers.Load(), useless.Load(), errs.Load()
	p.bodyBytes = lastBody.Load()
	// Take this phase's instances out again, so that every phase starts
	// from the same -watch-size instances and sends answers of the same size.
	for _, id := range ids[:sent.Load()] {
		if _, _, err := b.do(ctx, b.ctl, http.MethodDelete, "/v1/instances/"+id, nil); err != nil {
			return p, err
		}
	}
	return p, b.atlas.alive()
}

// streamQuery is the query of an SSE watcher's stream: the watched service
// and -stream-services - 1 others.
func (b *bench) streamQuery() string {
	q := "service=" + watchedService
	for i := 1; i < b.o.streamSvcs; i++ {
		q += fmt.Sprintf("&service=other-%02d", i)
	}
	return q
}

// sseWatcher reads GET /v1/watch?service=watched (and the others of
// -stream-services), reconnecting after an error, until ctx ends.
func (b *bench) sseWatcher(ctx context.Context, c *http.Client, base string, ready func(), check func([]byte, time.Time), onErr func(error)) {
	isReady := false
	for ctx.Err() == nil {
		err := func() error {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/watch?"+b.streamQuery(), nil)
			if err != nil {
				return err
			}
			req.Header.Set("Accept", "text/event-stream")
			resp, err := c.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				data, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
				return fmt.Errorf("GET /v1/watch: %s: %s", resp.Status, bytes.TrimSpace(data))
			}
			sc := bufio.NewScanner(resp.Body)
			sc.Buffer(make([]byte, 16<<10), 64<<20)
			for sc.Scan() {
				data, ok := bytes.CutPrefix(sc.Bytes(), []byte("data:"))
				if !ok {
					continue
				}
				now := time.Now()
				if !isReady {
					isReady = true
					ready()
				}
				check(data, now)
			}
			if err := sc.Err(); err != nil {
				return err
			}
			return errors.New("GET /v1/watch: the stream ended")
		}()
		if ctx.Err() != nil {
			return
		}
		onErr(err)
		if sleep(ctx, 100*time.Millisecond) != nil {
			return
		}
	}
}

// blockingWatcher polls GET /v1/services/watched as a blocking query,
// issuing it again after every answer, until ctx ends.
func (b *bench) blockingWatcher(ctx context.Context, c *http.Client, base string, ready func(), check func([]byte, time.Time), onErr func(error)) {
	var body []byte
	blockingLoop(ctx, func(path string) (uint64, []byte, error) {
		resp, err := getInto(ctx, c, base+path, &body)
		if err != nil {
			return 0, nil, err
		}
		n, err := strconv.ParseUint(resp.Header.Get("Switchboard-Index"), 10, 64)
		if err != nil {
			// The answer still counts; the next query starts again.
			onErr(fmt.Errorf("GET %s: Switchboard-Index: %v", path, err))
			n = 0
		}
		return n, body, nil
	}, ready, check, onErr)
}

// blockingLoop asks get for the watched service, as a blocking query from
// the index of the answer before, until ctx ends. get returns an answer's
// index and body, or an error, which goes to onErr before the next try
// 100 ms later.
func blockingLoop(ctx context.Context, get func(path string) (uint64, []byte, error), ready func(), check func([]byte, time.Time), onErr func(error)) {
	var (
		index   uint64
		isReady bool
	)
	for ctx.Err() == nil {
		path := "/v1/services/" + watchedService
		if index > 0 {
			path += "?index=" + strconv.FormatUint(index, 10) + "&wait=60s"
		}
		n, body, err := get(path)
		now := time.Now()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			onErr(err)
			if sleep(ctx, 100*time.Millisecond) != nil {
				return
			}
			continue
		}
		if n < index {
			index = 0 // SPEC: an index that goes backwards means start again
		} else {
			index = n
		}
		check(body, now)
		if !isReady {
			isReady = true
			ready()
		}
	}
}

// getInto GETs url with c and reads a 200 answer's body into *buf, reused
// from one answer to the next (io.ReadAll would grow a new buffer from 512
// bytes for each, costing the load generator, which shares the cores with
// Atlas, more than it need). Anything but 200 is an error naming the answer.
func getInto(ctx context.Context, c *http.Client, url string, buf *[]byte) (*http.Response, error) {
	resp, err := send(ctx, c, http.MethodGet, url, nil)
	if err != nil {
		return resp, err
	}
	defer resp.Body.Close()
	if cl := resp.ContentLength; cl >= 0 && cl <= 64<<20 {
		if int64(cap(*buf)) < cl {
			*buf = make([]byte, cl)
		}
		*buf = (*buf)[:cl]
		if _, err := io.ReadFull(resp.Body, *buf); err != nil {
			return resp, fmt.Errorf("GET %s: reading the answer: %w", resp.Request.URL.Path, err)
		}
		return resp, nil
	}
	data, err := io.ReadAll(resp.Body)
	*buf = data
	if err != nil {
		return resp, fmt.Errorf("GET %s: reading the answer: %w", resp.Request.URL.Path, err)
	}
	return resp, nil
}

// leanBlockingWatcher is blockingWatcher with a leanConn of its own: the
// same work as a watcher, less of the load generator's CPU (net/http's
// client costs about as much per answer as Atlas does on this machine, on
// the same cores), so that the figure says more about Atlas.
func (b *bench) leanBlockingWatcher(ctx context.Context, base string, ready func(), check func([]byte, time.Time), onErr func(error)) {
	host := strings.TrimPrefix(base, "http://")
	var c leanConn
	defer c.close()
	blockingLoop(ctx, func(path string) (uint64, []byte, error) {
		n, body, err := c.do(ctx, host, http.MethodGet, path, nil)
		if err != nil {
			c.close()
		}
		return n, body, err
	}, ready, check, onErr)
}

// readLeanHead reads an answer's status line and headers: the status, the
// Switchboard-Index and the Content-Length (-1 when absent).
func readLeanHead(br *bufio.Reader) (status int, index uint64, cl int, err error) {
	cl = -1
	line, err := br.ReadSlice('\n')
	if err != nil {
		return 0, 0, 0, err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.1 ")) {
		return 0, 0, 0, fmt.Errorf("bad status line %q", line)
	}
	status, err = strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, 0, 0, fmt.Errorf("bad status line %q", line)
	}
	for {
		line, err = br.ReadSlice('\n')
		if err != nil {
			return 0, 0, 0, err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			return status, index, cl, nil
		}
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		v = bytes.TrimSpace(v)
		switch {
		case bytes.EqualFold(k, []byte("Content-Length")):
			if cl, err = strconv.Atoi(string(v)); err != nil {
				return 0, 0, 0, fmt.Errorf("Content-Length %q", v)
			}
		case bytes.EqualFold(k, []byte("Switchboard-Index")):
			if index, err = strconv.ParseUint(string(v), 10, 64); err != nil {
				return 0, 0, 0, fmt.Errorf("Switchboard-Index %q", v)
			}
		}
	}
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// watchURLs are the Atlas replicas the watchers spread over: every replica
// (b.urls) or, with one, b.url.
func (b *bench) watchURLs() []string {
	if len(b.urls) > 0 {
		return b.urls
	}
	return []string{b.url}
}

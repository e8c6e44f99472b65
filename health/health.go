// Package health runs named checks and serves them four ways from one
// definition: Runscope-compatible healthcheck JSON (200 when every check
// passes, 500 or 503 otherwise, each result cached 27 s after a pass and
// 9 s after a failure), Kubernetes /livez and /readyz (?verbose, ?exclude=,
// /readyz/NAME), and gRPC grpc.health.v1 (Check, Watch, List).
//
// Every check counts for readiness and /healthcheck; a check declared
// Liveness counts for /livez too (liveness must not depend on other
// services: a dependency that is down makes an instance unready, not
// broken). While draining, readiness and /healthcheck fail with a
// "shutdown" result, so that sidecars stop routing to the instance.
package health

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"
)

// Func is a check: it returns an output for people, and an error when the
// check fails (the error text becomes the output).
type Func func(ctx context.Context) (string, error)

// Result is one check's result, as Runscope's healthcheck reports it.
type Result struct {
	Checker   string  `json:"checker"`
	Output    string  `json:"output"`
	Passed    bool    `json:"passed"`
	Timestamp float64 `json:"timestamp"`
	Expires   float64 `json:"expires"`
}

// Report is the whole healthcheck answer.
type Report struct {
	Hostname  string   `json:"hostname"`
	Status    string   `json:"status"` // "success" or "failure"
	Timestamp float64  `json:"timestamp"`
	Results   []Result `json:"results"`
}

// Passed reports whether every check passed (no checks is a pass).
func (r *Report) Passed() bool { return r.Status == "success" }

// Default cache times, as Runscope's healthcheck has them.
const (
	DefaultSuccessTTL = 27 * time.Second
	DefaultFailureTTL = 9 * time.Second
	DefaultTimeout    = 10 * time.Second
)

// Checker holds named checks. Use New for Runscope's defaults; in a
// Checker built by hand, zero TTLs mean no caching.
type Checker struct {
	// Hostname is reported in every answer; empty means os.Hostname().
	Hostname string
	// SuccessTTL and FailureTTL are how long a result is reused after a
	// pass and after a failure. Zero means not at all.
	SuccessTTL, FailureTTL time.Duration
	// Timeout bounds each check. Zero means DefaultTimeout.
	Timeout time.Duration
	// FailedStatus is the HTTP status of a failed report, 400-599: zero
	// (or any other value, which would not say failed) means 500; 503
	// suits load balancers and Kubernetes.
	FailedStatus int
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	// mu guards checks, cache, draining, asked, changed and flights.
	mu       sync.Mutex
	checks   []Check
	cache    map[string]Result
	draining bool
	asked    time.Time          // when readiness was last asked for
	changed  chan struct{}      // closed when a result or draining changes
	flights  map[string]*flight // the run in flight of each check
}

// Check is one named check.
type Check struct {
	Name string
	Func Func
	// Liveness makes the check decide /livez too.
	Liveness bool
	// Timeout overrides the Checker's for this check.
	Timeout time.Duration
}

// New returns a Checker with Runscope's cache times.
func New() *Checker {
	return &Checker{SuccessTTL: DefaultSuccessTTL, FailureTTL: DefaultFailureTTL}
}

// Add registers a readiness check. Adding a name twice is an error, as in
// Runscope's healthcheck.
func (c *Checker) Add(name string, fn Func) error {
	return c.AddCheck(Check{Name: name, Func: fn})
}

// ShutdownCheck is the name of the result that fails while draining.
const ShutdownCheck = "shutdown"

// AddCheck registers a check.
func (c *Checker) AddCheck(ch Check) error {
	if ch.Name == "" || ch.Func == nil {
		return fmt.Errorf("health: a check needs a name and a func")
	}
	if ch.Name == ShutdownCheck {
		return fmt.Errorf("health: the name %q is reserved", ch.Name)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if slices.ContainsFunc(c.checks, func(x Check) bool { return x.Name == ch.Name }) {
		return fmt.Errorf("health: the name %q is already taken", ch.Name)
	}
	c.checks = append(c.checks, ch)
	return nil
}

// SetDraining makes readiness and /healthcheck fail (true) or not (false):
// the first step of a graceful shutdown.
func (c *Checker) SetDraining(on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.draining != on {
		c.draining = on
		c.signalLocked()
	}
}

// isDraining reports whether SetDraining(true) is in force.
func (c *Checker) isDraining() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.draining
}

func (c *Checker) signalLocked() {
	if c.changed != nil {
		close(c.changed)
	}
	c.changed = make(chan struct{})
}

// changedChan returns a channel closed at the next change of a result.
func (c *Checker) changedChan() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.changed == nil {
		c.changed = make(chan struct{})
	}
	return c.changed
}

func (c *Checker) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func unix(t time.Time) float64 { return float64(t.Unix()) + float64(t.Nanosecond())/1e9 }

// Run runs every check (readiness) whose cached result has expired,
// concurrently, each under its timeout, and returns the report.
func (c *Checker) Run(ctx context.Context) *Report {
	return c.run(ctx, func(Check) bool { return true }, true)
}

// run runs the checks keep selects; withShutdown adds the shutdown result
// while draining.
func (c *Checker) run(ctx context.Context, keep func(Check) bool, withShutdown bool) *Report {
	c.mu.Lock()
	var checks []Check
	for _, ch := range c.checks {
		if keep(ch) {
			checks = append(checks, ch)
		}
	}
	draining := c.draining
	now := c.now()
	if withShutdown {
		c.asked = now
	}
	c.mu.Unlock()
	results := make([]Result, len(checks))
	var wg sync.WaitGroup
	for i, ch := range checks {
		c.mu.Lock()
		cached, ok := c.cache[ch.Name]
		c.mu.Unlock()
		if ok && cached.Expires >= unix(now) {
			results[i] = cached
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = c.runOne(ctx, ch)
		}()
	}
	wg.Wait()
	if withShutdown && draining {
		now := unix(c.now())
		results = append(results, Result{Checker: ShutdownCheck, Output: "draining: taking no new requests", Timestamp: now, Expires: now})
	}
	rep := &Report{Hostname: c.Hostname, Status: "success", Timestamp: unix(c.now()), Results: results}
	if rep.Hostname == "" {
		rep.Hostname, _ = os.Hostname()
	}
	for _, r := range results {
		if !r.Passed {
			rep.Status = "failure"
		}
	}
	return rep
}

// ReadinessAskedAt returns when readiness, the report that fails while
// draining, was last asked for: by /healthcheck, /readyz or gRPC health's
// service "". Zero means never. A sidecar whose check asks for something
// else (a TCP connection, /livez, a path of the service's own) cannot see
// the service drain.
func (c *Checker) ReadinessAskedAt() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.asked
}

// flight is one run of a check's Func. Callers that want the check while
// it runs wait for it instead of starting another: concurrent probes do
// not multiply the work on a dependency, and a Func that ignores its
// context holds one goroutine, not one per call.
type flight struct {
	start time.Time
	done  chan struct{} // closed once res is set: the Func returned or timed out
	res   Result
}

func (c *Checker) runOne(ctx context.Context, ch Check) Result {
	c.mu.Lock()
	f := c.flights[ch.Name]
	if f == nil {
		f = &flight{start: c.now(), done: make(chan struct{})}
		if c.flights == nil {
			c.flights = make(map[string]*flight)
		}
		c.flights[ch.Name] = f
		go c.fly(ctx, ch, f)
	} else {
		select {
		case <-f.done:
			// The last run timed out and its Func has still not returned.
			c.mu.Unlock()
			return c.record(ch.Name, c.now(), "", fmt.Errorf("check timed out: the run started %s ago has not returned yet",
				c.now().Sub(f.start).Round(time.Millisecond)))
		default:
		}
	}
	c.mu.Unlock()
	<-f.done
	return f.res
}

// fly runs ch for f under the check's timeout, and forgets f once the Func
// has returned, however long after the timeout that is.
func (c *Checker) fly(ctx context.Context, ch Check, f *flight) {
	timeout := ch.Timeout
	if timeout <= 0 {
		timeout = c.Timeout
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	// Bounded by the check's own timeout only: a caller that gives up
	// early (a client gone, a probe with a shorter timeout, a gRPC watch
	// that ends) must not cache a failure every other caller then sees.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	type res struct {
		out string
		err error
	}
	ret := make(chan res, 1)
	go func() {
		defer func() {
			if v := recover(); v != nil {
				ret <- res{err: fmt.Errorf("check panicked: %v", v)}
			}
		}()
		out, err := ch.Func(ctx)
		ret <- res{out, err}
	}()
	var r res
	returned := true
	select {
	case r = <-ret:
	case <-ctx.Done():
		r, returned = res{err: fmt.Errorf("check timed out: %w", ctx.Err())}, false
	}
	f.res = c.record(ch.Name, f.start, r.out, r.err)
	if !returned {
		// Callers get the timeout now; those that come while the Func
		// still runs get a timeout of their own rather than a second run.
		close(f.done)
		<-ret
	}
	c.mu.Lock()
	delete(c.flights, ch.Name)
	c.mu.Unlock()
	if returned {
		close(f.done)
	}
}

// record makes a check's result, caches it and signals a change.
func (c *Checker) record(name string, start time.Time, out string, err error) Result {
	r := Result{Checker: name, Output: out, Passed: err == nil, Timestamp: unix(start)}
	ttl := c.SuccessTTL
	if err != nil {
		r.Output = err.Error()
		ttl = c.FailureTTL
	}
	r.Expires = unix(start.Add(ttl))
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cache == nil {
		c.cache = make(map[string]Result)
	}
	if prev, ok := c.cache[name]; !ok || prev.Passed != r.Passed {
		c.signalLocked()
	}
	if ttl > 0 {
		c.cache[name] = r
	} else {
		// Not reused, but kept to notice changes.
		r2 := r
		r2.Expires = 0
		c.cache[name] = r2
	}
	return r
}

// ServeHTTP answers with the Runscope healthcheck JSON.
func (c *Checker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rep := c.Run(r.Context())
	status := http.StatusOK
	if !rep.Passed() {
		status = c.FailedStatus
		if status < 400 || status > 599 {
			status = http.StatusInternalServerError
		}
	}
	body, _ := json.Marshal(rep)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(append(body, '\n'))
}

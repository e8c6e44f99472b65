// Package health runs named checks and serves their results as
// Runscope-compatible healthcheck JSON: 200 when every check passes, 500
// (or 503) otherwise, each result cached 27 s after a pass and 9 s after a
// failure.
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
	// FailedStatus is the HTTP status of a failed report: zero means 500;
	// 503 suits load balancers and Kubernetes.
	FailedStatus int
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	// mu guards checks and cache.
	mu     sync.Mutex
	checks []check
	cache  map[string]Result
}

type check struct {
	name string
	fn   Func
}

// New returns a Checker with Runscope's cache times.
func New() *Checker {
	return &Checker{SuccessTTL: DefaultSuccessTTL, FailureTTL: DefaultFailureTTL}
}

// Add registers a check. Adding a name twice is an error, as in Runscope's
// healthcheck.
func (c *Checker) Add(name string, fn Func) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if slices.ContainsFunc(c.checks, func(ch check) bool { return ch.name == name }) {
		return fmt.Errorf("health: the name %q is already taken", name)
	}
	c.checks = append(c.checks, check{name, fn})
	return nil
}

func (c *Checker) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func unix(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

// Run runs every check whose cached result has expired, concurrently, each
// under its timeout, and returns the report.
func (c *Checker) Run(ctx context.Context) *Report {
	c.mu.Lock()
	checks := slices.Clone(c.checks)
	c.mu.Unlock()
	now := c.now()
	results := make([]Result, len(checks))
	var wg sync.WaitGroup
	for i, ch := range checks {
		c.mu.Lock()
		cached, ok := c.cache[ch.name]
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

func (c *Checker) runOne(ctx context.Context, ch check) Result {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := c.now()
	out, err := safeRun(ctx, ch.fn)
	r := Result{Checker: ch.name, Output: out, Passed: err == nil, Timestamp: unix(start)}
	ttl := c.SuccessTTL
	if err != nil {
		r.Output = err.Error()
		ttl = c.FailureTTL
	}
	r.Expires = unix(start.Add(ttl))
	if ttl > 0 {
		c.mu.Lock()
		if c.cache == nil {
			c.cache = make(map[string]Result)
		}
		c.cache[ch.name] = r
		c.mu.Unlock()
	}
	return r
}

// safeRun runs fn, turning a panic into a failure and returning when ctx
// ends even if fn does not.
func safeRun(ctx context.Context, fn Func) (string, error) {
	type res struct {
		out string
		err error
	}
	done := make(chan res, 1)
	go func() {
		defer func() {
			if v := recover(); v != nil {
				done <- res{err: fmt.Errorf("check panicked: %v", v)}
			}
		}()
		out, err := fn(ctx)
		done <- res{out, err}
	}()
	select {
	case r := <-done:
		return r.out, r.err
	case <-ctx.Done():
		return "", fmt.Errorf("check timed out: %w", ctx.Err())
	}
}

// ServeHTTP answers with the Runscope healthcheck JSON.
func (c *Checker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rep := c.Run(r.Context())
	status := http.StatusOK
	if !rep.Passed() {
		status = c.FailedStatus
		if status == 0 {
			status = http.StatusInternalServerError
		}
	}
	body, _ := json.Marshal(rep)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(append(body, '\n'))
}

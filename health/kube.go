package health

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
)

// Livez serves the Kubernetes liveness endpoint: the checks declared
// Liveness, plus "ping". 200 "ok" or 500; ?verbose lists every check as
// [+]name ok / [-]name failed: output; ?exclude=NAME skips one;
// /livez/NAME runs one.
func (c *Checker) Livez() http.Handler {
	return c.kube("livez", func(ch Check) bool { return ch.Liveness }, false)
}

// Readyz serves the Kubernetes readiness endpoint: every check, and the
// shutdown result while draining. Same forms as Livez.
func (c *Checker) Readyz() http.Handler {
	return c.kube("readyz", func(Check) bool { return true }, true)
}

// Register serves /healthcheck, /livez, /readyz and their per-check forms
// on mux.
func (c *Checker) Register(mux *http.ServeMux) {
	mux.Handle("GET /healthcheck", c)
	for _, p := range []string{"/livez", "/livez/{check}"} {
		mux.Handle("GET "+p, c.Livez())
	}
	for _, p := range []string{"/readyz", "/readyz/{check}"} {
		mux.Handle("GET "+p, c.Readyz())
	}
}

func (c *Checker) kube(name string, keep func(Check) bool, withShutdown bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		exclude := q["exclude"]
		only := r.PathValue("check")
		if only != "" {
			c.mu.Lock()
			known := slices.ContainsFunc(c.checks, func(ch Check) bool { return ch.Name == only && keep(ch) })
			c.mu.Unlock()
			if !known && !(only == "ping" || only == ShutdownCheck && withShutdown) {
				http.Error(w, fmt.Sprintf("%s: no check named %q", name, only), http.StatusNotFound)
				return
			}
		}
		rep := c.run(r.Context(), func(ch Check) bool {
			return keep(ch) && !slices.Contains(exclude, ch.Name) && (only == "" || ch.Name == only)
		}, withShutdown && !slices.Contains(exclude, ShutdownCheck) && (only == "" || only == ShutdownCheck))
		var b strings.Builder
		failed := false
		if only == "" || only == "ping" {
			b.WriteString("[+]ping ok\n")
		}
		for _, res := range rep.Results {
			if res.Passed {
				fmt.Fprintf(&b, "[+]%s ok\n", res.Checker)
			} else {
				failed = true
				fmt.Fprintf(&b, "[-]%s failed: %s\n", res.Checker, strings.ReplaceAll(res.Output, "\n", " "))
			}
		}
		for _, x := range exclude {
			fmt.Fprintf(&b, "[+]%s excluded: ok\n", x)
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		status := http.StatusOK
		if failed {
			status = http.StatusInternalServerError
		}
		w.WriteHeader(status)
		_, verbose := q["verbose"]
		switch {
		case verbose || failed:
			if failed {
				fmt.Fprintf(&b, "%s check failed\n", name)
			} else {
				fmt.Fprintf(&b, "%s check passed\n", name)
			}
			fmt.Fprint(w, b.String())
		default:
			fmt.Fprint(w, "ok")
		}
	})
}

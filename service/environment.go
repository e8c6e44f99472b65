package service

import (
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"time"
)

// Masked replaces every value /environment does not know to be safe.
const Masked = "********"

// publicEnv lists the environment variables /environment shows.
var publicEnv = []string{
	"HOSTNAME", "PATH", "HOME", "USER", "LANG", "TZ", "GOMAXPROCS", "GOMEMLIMIT", "GOGC",
	"SWITCHBOARD_REALM", "SWITCHBOARD_LISTEN", "SWITCHBOARD_ATLAS", "SWITCHBOARD_SIDECAR", "SWITCHBOARD_INSTANCE", "SWITCHBOARD_CONFIG_FILE",
}

// public reports whether config key path may be shown.
func (s *Service) public(path string) bool {
	allowed := slices.Clone(s.PublicConfig)
	var extra []string
	if s.cfg != nil && s.Config().Decode("public_config", &extra) == nil {
		allowed = append(allowed, extra...)
	}
	for _, a := range allowed {
		if path == a || (strings.HasSuffix(a, ".") && strings.HasPrefix(path, a)) {
			return true
		}
	}
	return false
}

// environment serves /environment: build, Go, process, and the merged
// config with every value's source; values are masked unless their key is
// on the allow-list (PublicConfig, config key public_config), and so are
// environment variables not on the kit's list.
func (s *Service) environment(w http.ResponseWriter, r *http.Request) {
	out := map[string]any{}
	out["service"] = map[string]any{
		"name": s.Name, "realm": s.Realm, "instance": s.Instance, "listen": s.addr,
		"started_at": s.started.UTC().Format(time.RFC3339), "uptime_seconds": int(time.Since(s.started).Seconds()),
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		settings := map[string]string{}
		for _, st := range bi.Settings {
			settings[st.Key] = st.Value
		}
		deps := map[string]string{}
		for _, d := range bi.Deps {
			deps[d.Path] = d.Version
		}
		out["build"] = map[string]any{"path": bi.Path, "main": bi.Main.Path, "version": bi.Main.Version, "settings": settings, "deps": deps}
	}
	out["go"] = map[string]any{
		"version": runtime.Version(), "os": runtime.GOOS, "arch": runtime.GOARCH,
		"gomaxprocs": runtime.GOMAXPROCS(0), "goroutines": runtime.NumGoroutine(),
	}
	host, _ := os.Hostname()
	cwd, _ := os.Getwd()
	env := map[string]string{}
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		if slices.Contains(publicEnv, k) {
			env[k] = redactURLs(v)
		} else {
			env[k] = Masked
		}
	}
	out["process"] = map[string]any{"pid": os.Getpid(), "uid": os.Getuid(), "hostname": host, "cwd": cwd, "argv0": os.Args[0], "environ": env}
	v := s.Config()
	values := map[string]any{}
	for path, src := range v.Sources() {
		val := any(Masked)
		if s.public(path) {
			val = v.Get(path)
			if str, ok := val.(string); ok {
				val = redactURLs(str)
			}
		}
		values[path] = map[string]any{"value": val, "source": src}
	}
	out["config"] = map[string]any{"from_atlas": s.cfg != nil && s.cfg.FromAtlas(), "atlas_index": v.AtlasIndex, "keys": values}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(out)
}

// redactURLs masks the password of every URL in v, a list of them
// separated by commas included (SWITCHBOARD_ATLAS=http://u:p@h:4400,...):
// a value shown for its host must not publish credentials with it.
//
// A password may hold commas too (SWITCHBOARD_SIDECAR, one URL, may be
// http://u:p,q@h), which cut it into "http://u:p" and "q@h": in a list,
// a part with an @ that is no URL with user info may be the end of a
// password, and the part before it the start, so the whole value is
// masked.
func redactURLs(v string) string {
	if !strings.Contains(v, "@") {
		return v
	}
	parts := strings.Split(v, ",")
	for i, p := range parts {
		u, err := url.Parse(strings.TrimSpace(p))
		switch {
		case err == nil && u.User != nil:
			parts[i] = u.Redacted()
		case !strings.Contains(p, "@"):
		case len(parts) > 1:
			return Masked
		case err != nil:
			parts[i] = Masked // what precedes the @ may be a password
		}
	}
	return strings.Join(parts, ",")
}

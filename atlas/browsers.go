package atlas

import (
	"net/http"
	"net/url"
	"strings"

	sb "github.com/switchboard-go/switchboard"
)

// refuseBrowsers guards an Atlas without auth from the browsers that can
// reach it. With auth on, a page cannot call the API: it has no token to
// send (the dashboard keeps its own per origin). Without auth, any page a
// browser on the same machine opens could: a form posted from another
// site takes a port or writes config (a cross-site request), and a page
// whose name an attacker points at 127.0.0.1 reads and writes everything
// as if it were Atlas's own (DNS rebinding). So, with Insecure, a
// browser's request from another site or origin is refused, and with
// LoopbackHosts a Host that is neither an IP address nor a localhost name.
// The dashboard, served by Atlas itself, is same-origin; the CLI, the
// sidecar and the kit send neither Origin nor Sec-Fetch-Site.
func (s *Server) refuseBrowsers(r *http.Request) error {
	if !s.cfg.Insecure {
		return nil
	}
	const why = "Atlas runs without auth (--insecure), so it answers a browser only on pages it serves itself"
	if site := r.Header.Get("Sec-Fetch-Site"); site == "cross-site" || site == "same-site" {
		return sb.Errorf(sb.EPermissionDenied, "a request from another site's page (Sec-Fetch-Site: %s): %s", site, why)
	}
	if o := r.Header.Get("Origin"); o != "" {
		if u, err := url.Parse(o); err != nil || !strings.EqualFold(u.Host, r.Host) {
			return sb.Errorf(sb.EPermissionDenied, "a request from a page of origin %q, not this Atlas's (%s): %s", o, r.Host, why)
		}
	}
	if s.cfg.LoopbackHosts && !sb.LocalHost(r.Host) {
		return sb.Errorf(sb.EPermissionDenied, "Host %q: Atlas runs without auth on loopback, so it answers only an IP address or a localhost name (a page whose name points at 127.0.0.1 could otherwise use it)", r.Host)
	}
	return nil
}

package atlas

import (
	"net/http"

	sb "github.com/switchboard-go/switchboard"
)

// refuseBrowsers guards an Atlas without auth from the browsers that can
// reach it. With auth on, a page cannot call the API: it has no token to
// send (the dashboard keeps its own per origin). Without auth, any page a
// browser on the same machine opens could: a form posted from another
// site takes a port or writes config (a cross-origin write, which
// net/http's CrossOriginProtection refuses, as for any server), and a page
// whose name an attacker points at 127.0.0.1 reads and writes everything
// as if it were Atlas's own (DNS rebinding), which LoopbackHosts refuses:
// a Host that is neither an IP address nor a localhost name. The
// dashboard, served by Atlas itself, is same-origin; the CLI, the sidecar
// and the kit send neither Origin nor Sec-Fetch-Site.
func (s *Server) refuseBrowsers(r *http.Request) error {
	if !s.cfg.Insecure {
		return nil
	}
	if err := crossOrigin.Check(r); err != nil {
		return sb.Errorf(sb.EPermissionDenied, "%v: Atlas runs without auth (--insecure), so it takes a browser's writes only from pages it serves itself", err)
	}
	if s.cfg.LoopbackHosts && !sb.LocalHost(r.Host) {
		return sb.Errorf(sb.EPermissionDenied, "Host %q: Atlas runs without auth on loopback, so it answers only an IP address or a localhost name (a page whose name points at 127.0.0.1 could otherwise use it)", r.Host)
	}
	return nil
}

// crossOrigin refuses cross-origin writes from browsers.
var crossOrigin = http.NewCrossOriginProtection()

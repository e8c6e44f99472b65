package atlas_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/switchboard-go/switchboard/atlas"
)

// TestInsecureAtlasRefusesOtherSitesPages: without auth, any page a
// browser opens could call Atlas. A write from another origin's page (a
// form posted across sites took a port), or, on loopback, a request under
// a name that is not localhost's (DNS rebinding read and wrote
// everything), is refused; Atlas's own dashboard, the CLI and sidecars are
// not.
func TestInsecureAtlasRefusesOtherSitesPages(t *testing.T) {
	a := startIn(t, t.TempDir(), true, func(c *atlas.Config) { c.LoopbackHosts = true })
	own := strings.TrimPrefix(a.http.URL, "http://")
	for _, c := range []struct {
		name, method, path, host string
		header                   map[string]string
		want                     int
	}{
		{"the CLI", "POST", "/v1/services/web/port", "", nil, 200},
		{"localhost", "GET", "/v1/services", "localhost:4100", nil, 200},
		{"a .localhost name", "GET", "/v1/services", "atlas.localhost", nil, 200},
		{"an IPv6 literal", "GET", "/v1/services", "[::1]:4100", nil, 200},
		{"the dashboard", "PUT", "/v1/config/layer?realm=dev", "", map[string]string{"Origin": "http://" + own, "Sec-Fetch-Site": "same-origin"}, 200},
		{"the dashboard's GET", "GET", "/v1/services", "", map[string]string{"Sec-Fetch-Site": "same-origin"}, 200},
		{"a form from another site", "POST", "/v1/services/evil/port", "", map[string]string{"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}, 403},
		{"an older browser's cross-origin post", "POST", "/v1/services/evil/port", "", map[string]string{"Origin": "https://evil.example"}, 403},
		{"a sandboxed page", "POST", "/v1/tokens", "", map[string]string{"Origin": "null"}, 403},
		{"a same-site page's write", "PUT", "/v1/config/layer?realm=dev", "", map[string]string{"Origin": "http://localhost:3000", "Sec-Fetch-Site": "same-site"}, 403},
		// A read across origins is not a page's to see without CORS,
		// which Atlas does not grant; a link to the API may be followed.
		{"a link from another site", "GET", "/v1/services", "", map[string]string{"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}, 200},
		{"DNS rebinding", "GET", "/v1/config?service=billing", "rebind.attacker.example:4100", map[string]string{"Sec-Fetch-Site": "same-origin"}, 403},
		{"DNS rebinding without browser headers", "POST", "/v1/tokens", "rebind.attacker.example", nil, 403},
	} {
		body := ""
		switch c.path {
		case "/v1/config/layer?realm=dev":
			body = `{"log":"debug"}`
		case "/v1/tokens":
			body = `{"name":"x","role":"admin"}`
		}
		req, _ := http.NewRequest(c.method, a.http.URL+c.path, strings.NewReader(body))
		if c.host != "" {
			req.Host = c.host
		}
		for k, v := range c.header {
			req.Header.Set(k, v)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != c.want {
			t.Errorf("%s: %s %s = %d %s; want %d", c.name, c.method, c.path, res.StatusCode, b, c.want)
		}
	}
}

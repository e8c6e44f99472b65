// Package atlastest runs a real Atlas for the tests of the packages that
// talk to one: the embedded store in a temp dir, the API over HTTP on
// 127.0.0.1, everything stopped when the test ends.
package atlastest

import (
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/switchboard-go/switchboard/atlas"
	"github.com/switchboard-go/switchboard/atlas/boltstore"
	"github.com/switchboard-go/switchboard/client"
)

// Atlas is a running test Atlas.
type Atlas struct {
	// URL is the API's base URL.
	URL string
	// AdminToken is the bootstrap admin token ("" when insecure).
	AdminToken string
	Server     *atlas.Server
	// Store is the Server's store, for a test that writes to it directly.
	Store atlas.Store

	dir      string
	insecure bool
	stop     func()
}

// Start runs an Atlas; with insecure false, auth is on.
func Start(t testing.TB, insecure bool) *Atlas {
	t.Helper()
	a := &Atlas{dir: t.TempDir(), insecure: insecure}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a.start(t, ln)
	t.Cleanup(func() { a.stop() })
	if !insecure {
		b, err := os.ReadFile(filepath.Join(a.dir, "admin.token"))
		if err != nil {
			t.Fatal(err)
		}
		a.AdminToken = strings.TrimSpace(string(b))
	}
	return a
}

// open opens the store and a server on it.
func (a *Atlas) open(t testing.TB) (*atlas.Server, atlas.Store) {
	t.Helper()
	st, err := boltstore.Open(boltstore.Config{Path: filepath.Join(a.dir, "atlas.db")})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := atlas.New(atlas.Config{Store: st, DataDir: a.dir, Insecure: a.insecure})
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	return srv, st
}

// start opens the store and the server and serves on ln.
func (a *Atlas) start(t testing.TB, ln net.Listener) {
	t.Helper()
	srv, st := a.open(t)
	// As switchboard atlas serves it: HTTPServer on Listener.
	hs := httptest.NewUnstartedServer(nil)
	hs.Config = srv.HTTPServer()
	hs.Listener.Close()
	hs.Listener = atlas.Listener(ln)
	hs.Start()
	a.URL, a.Server, a.Store = hs.URL, srv, st
	a.stop = func() {
		srv.StopWaiting()
		hs.CloseClientConnections()
		hs.Close()
		srv.Close()
		st.Close()
	}
}

// Restart stops this Atlas, as a shutdown does (its clients' connections
// break), and starts it again on the same data and address. offline, when
// set, is handed the handler of a run between the two that serves no
// client: it makes changes that no client saw, and that the restarted
// Atlas has in its data but not in its history of changes.
func (a *Atlas) Restart(t testing.TB, offline func(http.Handler)) {
	t.Helper()
	a.stop()
	if offline != nil {
		srv, st := a.open(t)
		offline(srv.Handler())
		srv.Close()
		st.Close()
	}
	ln, err := net.Listen("tcp", strings.TrimPrefix(a.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	a.start(t, ln)
}

// Client returns an API client of this Atlas, with the admin token.
func (a *Atlas) Client() *client.Atlas {
	return &client.Atlas{URLs: []string{a.URL}, Token: a.AdminToken}
}

// Package atlastest runs a real Atlas for the tests of the packages that
// talk to one: the embedded store in a temp dir, the API over HTTP on
// 127.0.0.1, everything stopped when the test ends.
package atlastest

import (
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
}

// Start runs an Atlas; with insecure false, auth is on.
func Start(t testing.TB, insecure bool) *Atlas {
	t.Helper()
	dir := t.TempDir()
	st, err := boltstore.Open(boltstore.Config{Path: filepath.Join(dir, "atlas.db")})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := atlas.New(atlas.Config{Store: st, DataDir: dir, Insecure: insecure})
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	// As switchboard atlas serves it: HTTPServer on Listener.
	hs := httptest.NewUnstartedServer(nil)
	hs.Config = srv.HTTPServer()
	hs.Listener = atlas.Listener(hs.Listener)
	hs.Start()
	t.Cleanup(func() {
		srv.StopWaiting()
		hs.CloseClientConnections()
		hs.Close()
		srv.Close()
		st.Close()
	})
	a := &Atlas{URL: hs.URL, Server: srv, Store: st}
	if !insecure {
		b, err := os.ReadFile(filepath.Join(dir, "admin.token"))
		if err != nil {
			t.Fatal(err)
		}
		a.AdminToken = strings.TrimSpace(string(b))
	}
	return a
}

// Client returns an API client of this Atlas, with the admin token.
func (a *Atlas) Client() *client.Atlas {
	return &client.Atlas{URLs: []string{a.URL}, Token: a.AdminToken}
}

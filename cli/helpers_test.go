package cli_test

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeFile(path, body string) error { return os.WriteFile(path, []byte(body), 0o600) }

func runWithFile(t *testing.T, url string, args ...string) (string, string, int) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "in.json")
	if err := writeFile(path, args[len(args)-1]); err != nil {
		t.Fatal(err)
	}
	args[len(args)-1] = path
	return run(t, url, args...)
}

// TestMain lets the test binary stand in for an editor that races with
// another writer: with SB_RACE_EDITOR=URL it changes the layer through the
// API, then edits the file it was given.
func TestMain(m *testing.M) {
	if url := os.Getenv("SB_RACE_EDITOR"); url != "" {
		req, _ := http.NewRequest("PUT", url+"/v1/config/layer?realm=dev", strings.NewReader(`{"pool":9}`))
		req.Header.Set("Content-Type", "application/json")
		res, err := http.DefaultClient.Do(req)
		if err != nil || res.StatusCode != 200 {
			fmt.Fprintln(os.Stderr, "race editor: PUT failed", err)
			os.Exit(1)
		}
		path := os.Args[len(os.Args)-1]
		b, _ := os.ReadFile(path)
		os.WriteFile(path, bytes.Replace(b, []byte("2"), []byte("3"), 1), 0o600)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

package sidecar

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-go/switchboard/internal/syncbuf"
)

// An Atlas URL in sidecar.yaml may carry a password: neither the log nor
// the admin listener's /healthcheck (which says why Atlas is unreachable)
// shows it.
func TestAtlasURLPasswordIsNotShown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String() // Atlas unreachable: the healthcheck says why
	ln.Close()
	var logs syncbuf.Buffer
	s, err := New(Config{Atlas: StringList{"http://ops:hunter2@" + closed}, StateDir: t.TempDir(),
		Listen: "127.0.0.1:0", Admin: "127.0.0.1:0"}, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(logs.String(), "sidecar: running"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("sidecar not running after 20s: %s", logs.String())
		}
	}
	res, err := http.Get("http://" + s.AdminAddr + "/healthcheck")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if !strings.Contains(string(body), "atlas unreachable") || strings.Contains(string(body), "hunter2") {
		t.Errorf("/healthcheck = %s; want Atlas unreachable, without the URL's password", body)
	}
	if !strings.Contains(logs.String(), "ops:xxxxx@") || strings.Contains(logs.String(), "hunter2") {
		t.Errorf("log shows the Atlas URL's password (or no Atlas URL at all):\n%s", logs.String())
	}
}

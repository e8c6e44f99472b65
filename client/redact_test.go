package client_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/switchboard-go/switchboard/client"
)

// An Atlas URL may carry a password (Atlas behind a proxy that asks for
// one; SWITCHBOARD_ATLAS=http://ops:PASSWORD@host:4400): the client's
// errors, which the CLI prints and the sidecar and the kit log and serve
// on their healthchecks, name the replica without it.
func TestErrorsDoNotShowTheURLPassword(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	garbled := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("not json")) // forces the decoding error
	}))
	defer garbled.Close()
	withPassword := func(hostport string) *client.Atlas {
		return &client.Atlas{URLs: []string{"http://ops:hunter2@" + hostport}}
	}
	ctx := context.Background()
	noop := func(client.Event) error { return nil }
	for name, call := range map[string]func() error{
		"call, refused": func() error { _, err := withPassword(closed).Services(ctx, "dev", client.QueryOptions{}); return err },
		"call, garbled answer": func() error {
			_, err := withPassword(strings.TrimPrefix(garbled.URL, "http://")).Services(ctx, "dev", client.QueryOptions{})
			return err
		},
		"watch, refused": func() error { _, err := withPassword(closed).Watch(ctx, "dev", []string{"web"}, "", noop); return err },
		"propagation, refused": func() error {
			_, err := withPassword(closed).Propagation(ctx, "dev", "web", 1)
			return err
		},
	} {
		err := call()
		if err == nil {
			t.Errorf("%s: no error", name)
			continue
		}
		if strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "ops:xxxxx@") {
			t.Errorf("%s: error = %q; want the replica named with its password redacted", name, err)
		}
	}
}

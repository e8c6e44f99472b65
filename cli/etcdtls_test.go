package cli_test

import (
	"context"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-go/switchboard/cli"
	"github.com/switchboard-go/switchboard/internal/etcdtest"
	"github.com/switchboard-go/switchboard/internal/syncbuf"
)

// TestAtlasOverEtcdTLS runs `switchboard atlas --store etcd://...` against
// an etcd that only takes TLS clients with a certificate, with the TLS
// flags; and refuses bad combinations of them with a usage error.
func TestAtlasOverEtcdTLS(t *testing.T) {
	cluster, pki := etcdtest.StartTLS(t, 1)
	u, err := url.Parse(cluster.Endpoints()[0])
	if err != nil {
		t.Fatal(err)
	}
	store := "etcd://" + u.Host
	data := t.TempDir()

	for _, tt := range []struct {
		args  []string
		errIn string
	}{
		{[]string{"--etcd-cert", pki.ClientCert, "--etcd-key", pki.ClientKey}, "--etcd-cert and --etcd-key: need --etcd-ca"},
		{[]string{"--etcd-ca", pki.CA, "--etcd-cert", pki.ClientCert}, "--etcd-cert and --etcd-key: give both or neither"},
		{[]string{"--etcd-ca", data + "/missing.pem"}, "--etcd-ca: open"},
		{[]string{"--etcd-ca", pki.ClientKey}, "holds no PEM certificate"},
		{[]string{"--etcd-ca", pki.CA, "--etcd-cert", pki.ClientCert, "--etcd-key", pki.ServerKey}, "--etcd-cert, --etcd-key:"},
	} {
		args := append([]string{"atlas", "--store", store, "--listen", "127.0.0.1:0", "--data", data, "--insecure"}, tt.args...)
		if _, errs, code := run(t, "", args...); code != 2 || !strings.Contains(errs, tt.errIn) {
			t.Errorf("switchboard %s = exit %d, %q; want exit 2 naming %q", strings.Join(args, " "), code, errs, tt.errIn)
		}
	}
	if _, errs, code := run(t, "", "atlas", "--etcd-ca", pki.CA, "--listen", "127.0.0.1:0", "--data", data); code != 2 || !strings.Contains(errs, "--etcd-ca: goes with --store etcd://") {
		t.Errorf("--etcd-ca without --store: exit %d, %q", code, errs)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var out, errs syncbuf.Buffer
	go func() {
		done <- cli.Run(ctx, []string{"atlas", "--store", store, "--etcd-ca", pki.CA, "--etcd-cert", pki.ClientCert,
			"--etcd-key", pki.ClientKey, "--listen", "127.0.0.1:0", "--data", data, "--insecure"}, &out, &errs)
	}()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("atlas exited with %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("atlas did not stop")
		}
	}()
	listening := regexp.MustCompile(`"url":"(http://[^"]+)"`)
	var base string
	for deadline := time.Now().Add(20 * time.Second); base == ""; time.Sleep(20 * time.Millisecond) {
		if m := listening.FindStringSubmatch(errs.String()); m != nil {
			base = m[1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("atlas over etcd with TLS did not start: %s", errs.String())
		}
	}
	req, _ := http.NewRequest("PUT", base+"/v1/instances/a-1", strings.NewReader(`{"service":"a","address":"127.0.0.1","port":5000}`))
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("register through Atlas on etcd over TLS: %d", res.StatusCode)
	}
}

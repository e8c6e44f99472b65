// Package etcdtest starts real etcd members in the test process (the
// embedded server of go.etcd.io/etcd/server/v3), on loopback ports, for
// the tests of the etcd store and of Atlas replicas.
package etcdtest

import (
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
)

// Cluster is a running etcd cluster.
type Cluster struct {
	Members []*Member
}

// Member is one etcd member.
type Member struct {
	Name      string
	ClientURL string
	cfg       *embed.Config
	etcd      *embed.Etcd
	stopped   bool
}

func freeURL(t testing.TB) *url.URL {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	u, _ := url.Parse("http://" + ln.Addr().String())
	return u
}

// Start starts an n-member cluster and stops it when the test ends.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	return start(t, n, nil)
}

// StartAt starts a new one-member cluster, with a fresh data directory,
// serving clients at clientURL (a member's, stopped): to its clients, etcd
// restored from an old backup.
func StartAt(t testing.TB, clientURL string) *Cluster {
	t.Helper()
	u, err := url.Parse(clientURL)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tryStart(t, t.TempDir(), 1, nil, u)
	if err != nil {
		t.Fatalf("etcd: %v", err)
	}
	t.Cleanup(c.Stop)
	return c
}

// StartTLS starts an n-member cluster whose clients must use TLS and
// present a certificate signed by the returned PKI's CA.
func StartTLS(t testing.TB, n int) (*Cluster, TLSFiles) {
	t.Helper()
	files := WriteTLSFiles(t, t.TempDir())
	return start(t, n, &files), files
}

// start starts the cluster on free loopback ports. A port found free can
// be taken by another test process before etcd binds it: then the cluster
// is started again on other ports.
func start(t testing.TB, n int, pki *TLSFiles) *Cluster {
	t.Helper()
	dir := t.TempDir()
	for attempt := 1; ; attempt++ {
		c, err := tryStart(t, filepath.Join(dir, fmt.Sprint(attempt)), n, pki, nil)
		if err == nil {
			t.Cleanup(c.Stop)
			return c
		}
		if attempt == 5 || !strings.Contains(err.Error(), "address already in use") {
			t.Fatalf("etcd: %v", err)
		}
	}
}

// tryStart starts n members; the client URL of the first is client, when
// given.
func tryStart(t testing.TB, dir string, n int, pki *TLSFiles, client0 *url.URL) (*Cluster, error) {
	t.Helper()
	c := &Cluster{}
	var initial []string
	for i := range n {
		cfg := embed.NewConfig()
		cfg.Name = fmt.Sprintf("m%d", i)
		cfg.Dir = filepath.Join(dir, cfg.Name)
		peer, client := freeURL(t), freeURL(t)
		if i == 0 && client0 != nil {
			client = client0
		}
		if pki != nil {
			client.Scheme = "https"
			cfg.ClientTLSInfo = transport.TLSInfo{CertFile: pki.ServerCert, KeyFile: pki.ServerKey,
				TrustedCAFile: pki.CA, ClientCertAuth: true}
		}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*client}
		cfg.LogLevel = "panic" // its shutdown logs errors that are not
		cfg.InitialClusterToken = "switchboard-test"
		initial = append(initial, cfg.Name+"="+peer.String())
		c.Members = append(c.Members, &Member{Name: cfg.Name, ClientURL: client.String(), cfg: cfg})
	}
	for _, m := range c.Members {
		m.cfg.InitialCluster = strings.Join(initial, ",")
	}
	// Members of a new cluster wait for each other: start them together.
	errc := make(chan error, n)
	for _, m := range c.Members {
		go func() {
			e, err := embed.StartEtcd(m.cfg)
			if err == nil {
				m.etcd = e
			}
			errc <- err
		}()
	}
	var err error
	for range n {
		if e := <-errc; e != nil && err == nil {
			err = e
		}
	}
	if err != nil {
		c.Stop()
		return nil, err
	}
	for _, m := range c.Members {
		select {
		case <-m.etcd.Server.ReadyNotify():
		case <-time.After(60 * time.Second):
			c.Stop()
			return nil, fmt.Errorf("member %s did not become ready in 60s", m.Name)
		}
	}
	return c, nil
}

// Endpoints returns every member's client URL.
func (c *Cluster) Endpoints() []string {
	var out []string
	for _, m := range c.Members {
		out = append(out, m.ClientURL)
	}
	return out
}

// Stop stops every member still running.
func (c *Cluster) Stop() {
	for _, m := range c.Members {
		m.Stop()
	}
}

// Stop stops one member, as losing it would.
func (m *Member) Stop() {
	if m.stopped || m.etcd == nil {
		return
	}
	m.stopped = true
	m.etcd.Close()
}

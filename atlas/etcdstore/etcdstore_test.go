package etcdstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/switchboard-go/switchboard/atlas"
	"github.com/switchboard-go/switchboard/atlas/etcdstore"
	"github.com/switchboard-go/switchboard/atlas/storetest"
	"github.com/switchboard-go/switchboard/internal/etcdtest"
)

// TestConformance runs the store suite on a real (embedded) etcd, each
// test under a prefix of its own.
func TestConformance(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	n := 0
	storetest.Run(t, func(t *testing.T) atlas.Store {
		n++
		s, err := etcdstore.Open(etcdstore.Config{Endpoints: cluster.Endpoints(), Prefix: "/t" + string(rune('a'+n)) + "/"})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// TestManyRenewalsShareOneStream renews many leases at once, several
// renewals of each in flight together, then a deleted one, then after
// Close: every renewal is answered, none hangs.
func TestManyRenewalsShareOneStream(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	s, err := etcdstore.Open(etcdstore.Config{Endpoints: cluster.Endpoints(), Prefix: "/renew/"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const keys = 20
	for i := range keys {
		if _, err := s.Txn(ctx, []atlas.Op{{Key: fmt.Sprintf("k%d", i), Value: []byte("v"), TTL: time.Minute}}); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, keys*10)
	for i := range keys * 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			until, err := s.KeepAlive(ctx, fmt.Sprintf("k%d", i%keys))
			if err == nil && time.Until(until) < 50*time.Second {
				err = fmt.Errorf("renewed until %v only", until)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Txn(ctx, []atlas.Op{{Key: "k0", Delete: true}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.KeepAlive(ctx, "k0"); !errors.Is(err, atlas.ErrNotFound) {
		t.Fatalf("renewing a deleted key: %v, want not found", err)
	}
	s.Close()
	done := make(chan error, 1)
	go func() { _, err := s.KeepAlive(ctx, "k1"); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a renewal after Close succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a renewal after Close hung")
	}
}

// TestTLS: a store reaches an etcd that takes only TLS clients with a
// certificate; without the client certificate it fails at Open, with an
// unavailable error rather than a hang.
func TestTLS(t *testing.T) {
	cluster, pki := etcdtest.StartTLS(t, 1)
	s, err := etcdstore.Open(etcdstore.Config{Endpoints: cluster.Endpoints(), Prefix: "/tls/", TLS: pki.ClientConfig(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if _, err := s.Txn(ctx, []atlas.Op{{Key: "k", Value: []byte("v"), TTL: time.Minute}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.KeepAlive(ctx, "k"); err != nil {
		t.Fatalf("renewal over TLS: %v", err)
	}
	noCert := pki.ClientConfig(t)
	noCert.Certificates = nil
	if _, err := etcdstore.Open(etcdstore.Config{Endpoints: cluster.Endpoints(), Prefix: "/tls/", TLS: noCert, Timeout: 2 * time.Second}); !errors.Is(err, atlas.ErrUnavailable) {
		t.Fatalf("without a client certificate: %v, want unavailable", err)
	}
}

package atlas_test

import (
	"context"
	"testing"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/atlas"
	"github.com/switchboard-go/switchboard/atlas/atlastest"
	"github.com/switchboard-go/switchboard/client"
)

// A damaged operator switch (a hand edit of etcd, another version's format)
// was taken as gone, so that an instance an operator had drained went back
// in rotation. It still disables the instance, until enabled again.
func TestADamagedSwitchKeepsItsInstanceDisabled(t *testing.T) {
	a := atlastest.Start(t, true)
	ctx := context.Background()
	c := a.Client()
	if _, err := c.Register(ctx, "web-1", sb.Registration{Service: "web", Address: "10.0.0.1", Port: 5000}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SetEnabled(ctx, "web-1", false, "bad disk"); err != nil {
		t.Fatal(err)
	}
	index, err := a.Store.Txn(ctx, []atlas.Op{{Key: "e/web-1", Value: []byte(`{"reason":"bad disk","service":"web","realm":"DEV"}`)}})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Server.WaitApplied(ctx, index); err != nil {
		t.Fatal(err)
	}
	in, err := c.Instance(ctx, "web-1")
	if err != nil || in.Enabled {
		t.Fatalf("with its switch's entry damaged: %+v, %v; want the instance still disabled", in, err)
	}
	if in, err = c.SetEnabled(ctx, "web-1", true, ""); err != nil || !in.Enabled {
		t.Fatalf("enabling it: %+v, %v", in, err)
	}
}

// A damaged instance entry was replaced by whoever registered its id: a
// token of another service took over the id of an instance whose stored
// entry another version had written, and locked its service out of it.
// Only a caller that may act for the service the entry names may replace
// it; an entry that names none, only an admin.
func TestADamagedInstanceIsReplacedOnlyByItsOwner(t *testing.T) {
	a := atlastest.Start(t, false)
	ctx := context.Background()
	admin := a.Client()
	tok := func(svc string) *client.Atlas {
		tk, err := admin.CreateToken(ctx, sb.TokenRequest{Name: svc, Role: sb.RoleService, Services: []string{svc}, Realms: []string{"dev"}})
		if err != nil {
			t.Fatal(err)
		}
		return &client.Atlas{URLs: []string{a.URL}, Token: tk.Secret}
	}
	billing, evil := tok("billing"), tok("evil")
	damage := func(id, value string) {
		idx, err := a.Store.Txn(ctx, []atlas.Op{{Key: "i/" + id, Value: []byte(value)}})
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Server.WaitApplied(ctx, idx); err != nil {
			t.Fatal(err)
		}
	}
	// Names billing, breaks a rule (a TTL of 0).
	damage("billing-h-5000", `{"id":"billing-h-5000","service":"billing","realm":"dev","address":"10.0.0.1","port":5000,"status":"passing","ttl":"0s"}`)
	if _, err := evil.Register(ctx, "billing-h-5000", sb.Registration{Service: "evil", Address: "10.6.6.6", Port: 5000}); sb.ErrorCode(err) != sb.EPermissionDenied {
		t.Fatalf("another service's token registering billing's damaged id: %v; want permission_denied", err)
	}
	if _, err := billing.Register(ctx, "billing-h-5000", sb.Registration{Service: "billing", Address: "10.0.0.1", Port: 5000}); err != nil {
		t.Fatalf("billing registering its own damaged id: %v", err)
	}
	// Names no service at all: an admin's to replace.
	damage("x-1", `{"port":"five"}`)
	if _, err := billing.Register(ctx, "x-1", sb.Registration{Service: "billing", Address: "10.0.0.1", Port: 5001}); sb.ErrorCode(err) != sb.EPermissionDenied {
		t.Fatalf("a service token registering a damaged id that names no service: %v; want permission_denied", err)
	}
	if _, err := admin.Register(ctx, "x-1", sb.Registration{Service: "billing", Address: "10.0.0.1", Port: 5001}); err != nil {
		t.Fatalf("an admin registering a damaged id that names no service: %v", err)
	}
}

// A damaged token or config layer is in no answer, and its DELETE answered
// 404: the key stayed in the store, logged at every start. It is deleted
// on demand, as a valid one is.
func TestDamagedTokensAndLayersCanBeDeleted(t *testing.T) {
	a := atlastest.Start(t, true)
	ctx := context.Background()
	c := a.Client()
	idx, err := a.Store.Txn(ctx, []atlas.Op{
		{Key: "t/0123456789abcdef", Value: []byte(`{"id":"0123456789abcdef","role":"root"}`)},
		{Key: "c/dev/web", Value: []byte(`[1,2]`)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Server.WaitApplied(ctx, idx); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteToken(ctx, "0123456789abcdef"); err != nil {
		t.Fatalf("deleting a damaged token: %v", err)
	}
	if err := c.DeleteLayer(ctx, sb.LayerKey{Realm: "dev", Service: "web"}); err != nil {
		t.Fatalf("deleting a damaged layer: %v", err)
	}
	_, kvs, err := a.Store.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range kvs {
		if kv.Key == "t/0123456789abcdef" || kv.Key == "c/dev/web" {
			t.Fatalf("%s is still in the store", kv.Key)
		}
	}
	if err := c.DeleteToken(ctx, "0123456789abcdef"); sb.ErrorCode(err) != sb.ENotFound {
		t.Fatalf("deleting it again: %v; want not_found", err)
	}
}

// A service whose p/ entry is damaged while its q/ entry is whole keeps
// its port: asking for one again gives the same, where it gave a new one
// and left the old reserved for good.
func TestADamagedPortEntryKeepsItsPort(t *testing.T) {
	a := atlastest.Start(t, false)
	ctx := context.Background()
	c := a.Client()
	port, err := c.AssignPort(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	index, err := a.Store.Txn(ctx, []atlas.Op{{Key: "p/web", Value: []byte(`"not a port"`)}})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Server.WaitApplied(ctx, index); err != nil {
		t.Fatal(err)
	}
	again, err := c.AssignPort(ctx, "web")
	if err != nil || again != port {
		t.Fatalf("a port for web with its p/ entry damaged: %d, %v; want its port %d kept", again, err, port)
	}
	if other, err := c.AssignPort(ctx, "api"); err != nil || other == port {
		t.Fatalf("a port for api: %d, %v; want one other than web's %d", other, err, port)
	}
}

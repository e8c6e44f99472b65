package atlas_test

import (
	"context"
	"testing"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/atlas"
	"github.com/switchboard-go/switchboard/atlas/atlastest"
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

package health

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// GRPC serves grpc.health.v1 from a Checker: the service "" is the whole
// server's readiness; a check's name is that check. Register it with
// healthpb.RegisterHealthServer(server, checker.GRPC()).
func (c *Checker) GRPC() healthpb.HealthServer { return grpcHealth{c: c} }

type grpcHealth struct {
	healthpb.UnimplementedHealthServer
	c *Checker
}

var _ healthpb.HealthServer = grpcHealth{}

// statusOf returns the serving status of service, or ok=false when no
// check has that name.
func (g grpcHealth) statusOf(ctx context.Context, service string) (healthpb.HealthCheckResponse_ServingStatus, bool) {
	keep := func(ch Check) bool { return true }
	if service != "" {
		g.c.mu.Lock()
		found := false
		for _, ch := range g.c.checks {
			found = found || ch.Name == service
		}
		g.c.mu.Unlock()
		if !found {
			return healthpb.HealthCheckResponse_SERVICE_UNKNOWN, false
		}
		keep = func(ch Check) bool { return ch.Name == service }
	}
	rep := g.c.run(ctx, keep, service == "")
	if rep.Passed() {
		return healthpb.HealthCheckResponse_SERVING, true
	}
	return healthpb.HealthCheckResponse_NOT_SERVING, true
}

// Check implements grpc.health.v1: NOT_FOUND for an unknown service.
func (g grpcHealth) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	st, ok := g.statusOf(ctx, req.GetService())
	if !ok {
		return nil, status.Errorf(codes.NotFound, "unknown service %q", req.GetService())
	}
	return &healthpb.HealthCheckResponse{Status: st}, nil
}

// List implements grpc.health.v1 (gRFC A90): "" and every check.
func (g grpcHealth) List(ctx context.Context, _ *healthpb.HealthListRequest) (*healthpb.HealthListResponse, error) {
	out := &healthpb.HealthListResponse{Statuses: map[string]*healthpb.HealthCheckResponse{}}
	g.c.mu.Lock()
	names := []string{""}
	for _, ch := range g.c.checks {
		names = append(names, ch.Name)
	}
	g.c.mu.Unlock()
	for _, n := range names {
		st, _ := g.statusOf(ctx, n)
		out.Statuses[n] = &healthpb.HealthCheckResponse{Status: st}
	}
	return out, nil
}

// WatchInterval is how often Watch runs the checks when nothing else does.
var WatchInterval = time.Second

// Watch implements grpc.health.v1: the current status at once, then one
// message per change; SERVICE_UNKNOWN (not an error) for an unknown
// service. While draining it sends the current status and ends the
// stream: a stream that never ends would keep the gRPC server's
// GracefulStop waiting for ever.
func (g grpcHealth) Watch(req *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	ctx := stream.Context()
	var last healthpb.HealthCheckResponse_ServingStatus = -1
	t := time.NewTicker(WatchInterval)
	defer t.Stop()
	for {
		changed := g.c.changedChan()
		st, _ := g.statusOf(ctx, req.GetService())
		if st != last {
			if err := stream.Send(&healthpb.HealthCheckResponse{Status: st}); err != nil {
				return err
			}
			last = st
		}
		if g.c.isDraining() {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-t.C:
		}
	}
}

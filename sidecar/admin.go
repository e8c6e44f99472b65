package sidecar

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/health"
)

// RouteEndpoint is one instance in GET /routes.
type RouteEndpoint struct {
	ID           string     `json:"id"`
	Address      string     `json:"address"`
	Status       sb.Status  `json:"status"`
	Enabled      bool       `json:"enabled"`
	Ejected      bool       `json:"ejected"`
	EjectedUntil *time.Time `json:"ejected_until,omitempty"`
	Inflight     int64      `json:"inflight"`
	Requests     uint64     `json:"requests"`
}

// RouteService is one service in GET /routes.
type RouteService struct {
	Service string `json:"service"`
	Realm   string `json:"realm"`
	// Index is the Atlas index of the instances applied (0: none yet).
	Index     uint64          `json:"index"`
	Instances []RouteEndpoint `json:"instances"`
}

// Routes is the answer of GET /routes.
type Routes struct {
	Realm    string         `json:"realm"`
	Services []RouteService `json:"services"`
}

// Routes returns what the sidecar routes to now.
func (s *Sidecar) Routes() Routes {
	now := time.Now()
	out := Routes{Realm: s.cfg.Realm, Services: []RouteService{}}
	for _, p := range s.table.All() {
		rs := RouteService{Service: p.Service, Realm: p.Realm, Index: p.Index(), Instances: []RouteEndpoint{}}
		for _, e := range p.Endpoints() {
			info := e.Info()
			re := RouteEndpoint{ID: e.ID, Address: e.Addr, Status: info.Status, Enabled: info.Enabled, Inflight: e.Inflight(), Requests: e.Requests()}
			if ej, until := e.Ejected(now); ej {
				re.Ejected, re.EjectedUntil = true, &until
			}
			rs.Instances = append(rs.Instances, re)
		}
		out.Services = append(out.Services, rs)
	}
	return out
}

func (s *Sidecar) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /routes", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(s.Routes())
	})
	hc := &health.Checker{Hostname: s.cfg.Host, Timeout: 2 * time.Second, FailedStatus: http.StatusServiceUnavailable, SuccessTTL: 2 * time.Second}
	_ = hc.AddCheck(health.Check{Name: "frontend", Liveness: true, Func: func(ctx context.Context) (string, error) {
		if ended := s.ended.Load(); ended != nil {
			return "", fmt.Errorf("%s; restart the sidecar", *ended)
		}
		return "routing on " + s.ListenAddr, nil
	}})
	// Accepting fails while a listener cannot take connections (too many
	// open files): not /livez, as it passes (a restart would end the
	// requests in progress).
	_ = hc.Add("accepting", func(ctx context.Context) (string, error) {
		if err := s.front.AcceptErr(); err != nil {
			return "", fmt.Errorf("the frontend on %s cannot accept connections: %w", s.ListenAddr, err)
		}
		for _, t := range s.l4 {
			if err := t.AcceptErr(); err != nil {
				return "", fmt.Errorf("an l4 listener cannot accept connections: %w", err)
			}
		}
		return "accepting connections", nil
	})
	_ = hc.Add("atlas", func(ctx context.Context) (string, error) {
		// Atlas being down is not the sidecar failing: it routes on the
		// last known instances. Say so, and pass. An Atlas that hangs is
		// down too: Ping must give up before the check's own timeout,
		// which would fail the check.
		ctx, cancel := context.WithTimeout(ctx, hc.Timeout/2)
		defer cancel()
		if err := s.atlas.Ping(ctx); err != nil {
			return "atlas unreachable: routing on the last known instances (" + sb.ErrorMessage(err) + ")", nil
		}
		if refused := s.token.refused.Load(); refused != nil {
			return "", fmt.Errorf("atlas does not take this sidecar's token (deleted, or not valid): calls are refused and instances not announced until the sidecar is restarted with a token it takes (%s)", *refused)
		}
		return "atlas reachable", nil
	})
	for _, a := range s.announcers {
		_ = hc.Add("service "+a.id, func(ctx context.Context) (string, error) {
			st, out := a.current()
			return fmt.Sprintf("%s: %s", st, out), nil
		})
	}
	hc.Register(mux) // /healthcheck, /livez, /readyz
	s.health = hc
	// In haproxy mode HAProxy routes the calls, and its own metrics of
	// them are served with the sidecar's; a HAProxy restarting leaves them
	// out (logged).
	haproxyMetrics := prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		if hap := s.hap.Load(); hap != nil {
			return hap.Gather()
		}
		return nil, nil
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(prometheus.Gatherers{s.m.reg, haproxyMetrics}, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}))
	return mux
}

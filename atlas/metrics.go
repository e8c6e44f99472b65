package atlas

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	sb "github.com/switchboard-go/switchboard"
)

// metrics are one Server's Prometheus metrics, on a registry of its own so
// that several servers can live in one process (tests, switchboard dev).
type metrics struct {
	handler                   http.Handler
	requests                  *prometheus.CounterVec
	latency                   *prometheus.HistogramVec
	writes                    prometheus.Counter
	registrations, heartbeats prometheus.Counter
	blocking, streams         prometheus.Gauge
}

func newMetrics(s *Server) *metrics {
	reg := prometheus.NewRegistry()
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_atlas_http_requests_total", Help: "API requests by route and status code.",
		}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "switchboard_atlas_http_request_duration_seconds", Help: "API request latency by route (blocking queries and streams included).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5, 30, 300},
		}, []string{"route"}),
		writes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_atlas_store_writes_total", Help: "Writes committed to the store through this server.",
		}),
		registrations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_atlas_registrations_total", Help: "Instance registrations.",
		}),
		heartbeats: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_atlas_heartbeats_total", Help: "Heartbeats accepted.",
		}),
		blocking: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "switchboard_atlas_blocking_queries", Help: "Blocking queries waiting now.",
		}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "switchboard_atlas_event_streams", Help: "Event streams open now.",
		}),
	}
	reg.MustRegister(m.requests, m.latency, m.writes, m.registrations, m.heartbeats, m.blocking, m.streams,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		stateCollector{s})
	m.handler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	return m
}

func (m *metrics) observe(route string, status int, d time.Duration) {
	if status == 0 {
		status = http.StatusOK
	}
	m.requests.WithLabelValues(route, strconv.Itoa(status)).Inc()
	m.latency.WithLabelValues(route).Observe(d.Seconds())
}

// stateCollector reports what Atlas holds, computed at scrape time.
type stateCollector struct{ s *Server }

var (
	descInstances = prometheus.NewDesc("switchboard_atlas_instances", "Instances by realm and status (disabled counted apart).", []string{"realm", "status"}, nil)
	descIndex     = prometheus.NewDesc("switchboard_atlas_index", "The store index applied in memory.", nil, nil)
	descLayers    = prometheus.NewDesc("switchboard_atlas_config_layers", "Config layers stored.", nil, nil)
)

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descInstances
	ch <- descIndex
	ch <- descLayers
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.st
	st.mu.RLock()
	defer st.mu.RUnlock()
	for realm, svcs := range st.byService {
		counts := map[string]int{string(sb.Passing): 0, string(sb.Warning): 0, string(sb.Critical): 0, "disabled": 0}
		for _, ids := range svcs {
			for id, r := range ids {
				counts[string(r.status())]++
				if _, off := st.switches[id]; off {
					counts["disabled"]++
				}
			}
		}
		for status, n := range counts {
			ch <- prometheus.MustNewConstMetric(descInstances, prometheus.GaugeValue, float64(n), realm, status)
		}
	}
	ch <- prometheus.MustNewConstMetric(descIndex, prometheus.GaugeValue, float64(st.applied))
	ch <- prometheus.MustNewConstMetric(descLayers, prometheus.GaugeValue, float64(len(st.layers)))
}

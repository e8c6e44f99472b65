package sidecar

import (
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the sidecar's Prometheus metrics, on a registry of its own.
type metrics struct {
	reg         *prometheus.Registry
	requests    *prometheus.CounterVec
	latency     *prometheus.HistogramVec
	retries     *prometheus.CounterVec
	ejections   *prometheus.CounterVec
	tcp         *prometheus.CounterVec
	watchErrors *prometheus.CounterVec
	index       *prometheus.GaugeVec
	updates     *prometheus.CounterVec
	counters    sync.Map // codeKey -> prometheus.Counter
	observers   sync.Map // service -> prometheus.Observer
}

func newMetrics(s *Sidecar) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_sidecar_requests_total", Help: "Requests through the HTTP frontend by service and status code.",
		}, []string{"service", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "switchboard_sidecar_request_duration_seconds", Help: "Time to the answer's headers (streams: their whole life), by service.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"service"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_sidecar_retries_total", Help: "Retries on another instance, by service.",
		}, []string{"service"}),
		ejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_sidecar_ejections_total", Help: "Instances ejected by outlier detection, by service.",
		}, []string{"service"}),
		tcp: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_sidecar_tcp_connections_total", Help: "L4 connections by upstream and result.",
		}, []string{"service", "result"}),
		watchErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_sidecar_watch_errors_total", Help: "Event streams from Atlas that broke, by service.",
		}, []string{"service"}),
		index: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "switchboard_sidecar_atlas_index", Help: "The Atlas index of the instances applied, by service.",
		}, []string{"service"}),
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_sidecar_route_updates_total", Help: "Updates of a service's instances applied.",
		}, []string{"service"}),
	}
	hapCounter := func(name, help string, get func() int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 {
			if hap := s.hap.Load(); hap != nil {
				return float64(get())
			}
			return 0
		})
	}
	m.reg.MustRegister(
		hapCounter("switchboard_sidecar_haproxy_reloads_total", "HAProxy reloads (haproxy mode).", func() int64 { return s.hap.Load().Reloads() }),
		hapCounter("switchboard_sidecar_haproxy_refused_configs_total", "Configs haproxy -c refused (haproxy mode).", func() int64 { return s.hap.Load().RefusedConfigs() }),
		hapCounter("switchboard_sidecar_haproxy_failed_reloads_total", "Reloads that brought no new HAProxy worker (haproxy mode); the old one routes on.", func() int64 { return s.hap.Load().FailedReloads() }),
		hapCounter("switchboard_sidecar_haproxy_runtime_commands_total", "Runtime API commands sent (haproxy mode).", func() int64 { return s.hap.Load().RuntimeCommands() }),
		hapCounter("switchboard_sidecar_haproxy_restarts_total", "HAProxy restarts after it died (haproxy mode).", func() int64 { return s.hap.Load().Restarts() }),
	)
	for _, kind := range []string{"shared", "own"} {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "switchboard_sidecar_event_streams",
			Help:        "Event streams open to Atlas: shared by several services, or a service's own.",
			ConstLabels: prometheus.Labels{"kind": kind},
		}, func() float64 {
			shared, own := s.streams.count()
			if kind == "shared" {
				return float64(shared)
			}
			return float64(own)
		}))
	}
	m.reg.MustRegister(m.requests, m.latency, m.retries, m.ejections, m.tcp, m.watchErrors, m.index, m.updates,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// codeKey names one requests counter; counters and histograms are looked
// up once and kept, so that a request costs no label formatting.
type codeKey struct {
	service string
	code    int
}

func (m *metrics) observeHTTP(service string, code int, d time.Duration, retries int) {
	if service == "" {
		service = "(none)"
	}
	c, ok := m.counters.Load(codeKey{service, code})
	if !ok {
		c, _ = m.counters.LoadOrStore(codeKey{service, code}, m.requests.WithLabelValues(service, strconv.Itoa(code)))
	}
	c.(prometheus.Counter).Inc()
	o, ok := m.observers.Load(service)
	if !ok {
		o, _ = m.observers.LoadOrStore(service, m.latency.WithLabelValues(service))
	}
	o.(prometheus.Observer).Observe(d.Seconds())
	if retries > 0 {
		m.retries.WithLabelValues(service).Add(float64(retries))
	}
}

func (m *metrics) observeTCP(service string, ok bool, _ time.Duration) {
	result := "ok"
	if !ok {
		result = "error"
	}
	m.tcp.WithLabelValues(service, result).Inc()
}

// forget drops every series of a service the sidecar no longer follows,
// so that names called once (typos included) do not stay in /metrics.
func (m *metrics) forget(service string) {
	l := prometheus.Labels{"service": service}
	for _, v := range []interface{ DeletePartialMatch(prometheus.Labels) int }{
		m.requests, m.latency, m.retries, m.ejections, m.tcp, m.watchErrors, m.index, m.updates,
	} {
		v.DeletePartialMatch(l)
	}
	m.counters.Range(func(k, _ any) bool {
		if k.(codeKey).service == service {
			m.counters.Delete(k)
		}
		return true
	})
	m.observers.Delete(service)
}

func (m *metrics) applied(service string, index uint64) {
	m.index.WithLabelValues(service).Set(float64(index))
	m.updates.WithLabelValues(service).Inc()
}

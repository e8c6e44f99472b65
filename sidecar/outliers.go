package sidecar

import (
	"context"
	"time"

	"github.com/switchboard-go/switchboard/balance"
	"github.com/switchboard-go/switchboard/sidecar/haproxy"
)

// Outlier ejection in haproxy mode. HAProxy balances the calls it routes
// by itself, so the sidecar never sees how they end: it reads HAProxy's
// counters of each server instead (haproxy.Driver.Outcomes), every
// outlierEvery, and reports them to the service's pool as the built-in
// proxy reports each request, so that the same rules eject
// (balance.Pool.Report: 5 failures in a row, 30 s × ejections, never more
// than half of a service's instances). An ejected instance takes no new
// requests from HAProxy (weight 0, balance.Choosable) until its ejection
// ends, when the service is handed to HAProxy again.

// outlierEvery is how often HAProxy's counters are read.
var outlierEvery = time.Second

// watchOutliers reads HAProxy's counters until the sidecar stops.
func (s *Sidecar) watchOutliers(hap *haproxy.Driver) {
	t := time.NewTicker(outlierEvery)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
		outcomes, err := hap.Outcomes(ctx)
		cancel()
		if err != nil {
			// HAProxy restarting: the driver logs that. The next look
			// counts from then on.
			continue
		}
		for service, byID := range outcomes {
			s.reportOutcomes(service, byID)
		}
	}
}

// reportOutcomes reports what HAProxy counted of a service's instances.
// An instance this ejects is handed to HAProxy at once, and again when
// its ejection ends.
func (s *Sidecar) reportOutcomes(service string, byID map[string]haproxy.Outcomes) {
	p := s.table.Lookup(service)
	if p == nil {
		return
	}
	ejected := false
	for _, e := range p.Endpoints() {
		o, ok := byID[e.ID]
		if !ok {
			continue
		}
		was, _ := e.Ejected(time.Now())
		reportCounts(p, e, o.Answered, o.Failed)
		if is, until := e.Ejected(time.Now()); is && !was {
			ejected = true
			time.AfterFunc(time.Until(until)+10*time.Millisecond, func() { s.pushHAProxy(service) })
		}
	}
	if ejected {
		s.pushHAProxy(service)
	}
}

// reportCounts reports answered and failed requests of e, counted in an
// order HAProxy does not say. The failures are taken as spread evenly
// among the answers: their longest run, ceil(failed / (answered + 1)),
// comes last.
func reportCounts(p *balance.Pool, e *balance.Endpoint, answered, failed uint64) {
	if answered > 0 {
		p.Report(e, balance.Answered)
	}
	run := (failed + answered) / (answered + 1)
	for range min(run, balance.EjectAfter) {
		p.Report(e, balance.Failed)
	}
}

package sidecar

import (
	"context"
	"math/rand/v2"
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
// ends: the service is handed to HAProxy again at both moments (ejected),
// whichever proxy's requests ejected it.

// outlierEvery is how often HAProxy's counters are read.
var outlierEvery = time.Second

// maxReplayed bounds the results one look replays for an instance (at a
// higher rate they are scaled down to it, in the same ratio), so that a
// look stays cheap however busy the instance.
const maxReplayed = 10_000

// watchOutliers reads HAProxy's counters until the sidecar stops.
func (s *Sidecar) watchOutliers(hap *haproxy.Driver) {
	r := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
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
			p := s.table.Lookup(service)
			if p == nil {
				continue
			}
			for _, e := range p.Endpoints() {
				if o, ok := byID[e.ID]; ok {
					reportCounts(p, e, o.Answered, o.Failed, r)
				}
			}
		}
	}
}

// ejected hands service to HAProxy, in haproxy mode, when outlier
// ejection takes out one of its instances, and again when the ejection
// ends (armEjectEnd). It is the table's OnEject: the built-in proxy routes
// the calls HAProxy does not (a service HAProxy does not route yet), and
// reports them to the same pools.
func (s *Sidecar) ejected(service string) {
	if s.hap.Load() == nil {
		return
	}
	go s.pushHAProxy(service)
	s.armEjectEnd(service)
}

// armEjectEnd sets service's one timer to hand it to HAProxy when the
// first of its ejections ends, then the next; Shutdown stops them all.
func (s *Sidecar) armEjectEnd(service string) {
	var end time.Time
	if p := s.table.Lookup(service); p != nil {
		now := time.Now()
		for _, e := range p.Endpoints() {
			if ej, until := e.Ejected(now); ej && (end.IsZero() || until.Before(end)) {
				end = until
			}
		}
	}
	s.ejectMu.Lock()
	defer s.ejectMu.Unlock()
	if t := s.ejectEnds[service]; t != nil {
		t.Stop()
		delete(s.ejectEnds, service)
	}
	if end.IsZero() || s.ctx.Err() != nil {
		return
	}
	if s.ejectEnds == nil {
		s.ejectEnds = map[string]*time.Timer{}
	}
	s.ejectEnds[service] = time.AfterFunc(time.Until(end)+10*time.Millisecond, func() {
		s.pushHAProxy(service)
		s.armEjectEnd(service)
	})
}

// stopEjectEnds stops the timers of armEjectEnd.
func (s *Sidecar) stopEjectEnds() {
	s.ejectMu.Lock()
	defer s.ejectMu.Unlock()
	for _, t := range s.ejectEnds {
		t.Stop()
	}
	s.ejectEnds = nil
}

// reportCounts reports answered and failed requests of e, which HAProxy
// counted in an order it does not say: they are replayed in a random
// order (r), as independent results come, so that failures in a row eject
// as often as they would where each request is seen (the built-in proxy).
func reportCounts(p *balance.Pool, e *balance.Endpoint, answered, failed uint64, r *rand.Rand) {
	if n := answered + failed; n > maxReplayed {
		failed = uint64(float64(failed) / float64(n) * maxReplayed)
		answered = maxReplayed - failed
	}
	for answered+failed > 0 {
		if r.Uint64N(answered+failed) < failed {
			failed--
			p.Report(e, balance.Failed)
		} else {
			answered--
			p.Report(e, balance.Answered)
		}
	}
}

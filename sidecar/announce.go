package sidecar

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/client"
)

// announcer registers one local service, checks it, heartbeats its status
// and, at the end, drains and deregisters it (Nerve's role).
type announcer struct {
	id       string
	reg      sb.Registration
	interval time.Duration
	timeout  time.Duration
	check    checker
	atlas    *client.Atlas
	log      *slog.Logger
	// drainReason is this sidecar's reason for the switch it sets while
	// it drains.
	drainReason string

	// warned: the last failure to register or heartbeat the instance
	// that was logged.
	warned failureLog
	// token is told whether Atlas took the token (nil: not followed).
	token *tokenState

	// mu guards status, output, registered and checked.
	mu         sync.Mutex
	rf         riseFall
	status     sb.Status
	output     string
	registered bool
	checked    bool // a check has run
}

func newAnnouncer(sc ServiceConfig, host, advertise, realm string, atlas *client.Atlas, log *slog.Logger) (*announcer, error) {
	addr := sc.Address
	if addr == "" {
		addr = advertise
	}
	// The check dials what is announced, as Nerve does: a service that
	// listens on loopback only, announced at the host's address, fails
	// its check rather than pass it and take calls it cannot answer.
	ck, err := newChecker(sc.Check, net.JoinHostPort(addr, strconv.Itoa(sc.Port)))
	if err != nil {
		return nil, err
	}
	c := sc.Check
	a := &announcer{
		id:          fmt.Sprintf("%s-%s-%d", sc.Name, host, sc.Port),
		drainReason: drainReason(host),
		interval:    durOr(c.Interval, 2*time.Second),
		timeout:     durOr(c.Timeout, time.Second),
		check:       ck,
		atlas:       atlas,
		log:         log.With("service", sc.Name),
		rf:          riseFall{rise: intOr(c.Rise, 2), fall: intOr(c.Fall, 2), status: sb.Critical},
		status:      sb.Critical,
		output:      "not checked yet",
	}
	if c.None {
		a.rf.status, a.status, a.output = sb.Passing, sb.Passing, "not checked (check: none)"
	}
	a.reg = sb.Registration{
		Service: sc.Name, Realm: realm, Address: addr, Port: sc.Port, Tags: sc.Tags, Meta: sc.Meta,
		// A lease of three intervals, and never under Atlas's minimum.
		TTL: sb.Duration(max(3*a.interval, sb.MinTTL)),
	}
	if err := sb.ValidateID(a.id); err != nil {
		return nil, fmt.Errorf("instance id %q: %s", a.id, sb.ErrorMessage(err))
	}
	return a, nil
}

func durOr(d Duration, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return time.Duration(d)
}

func intOr(n, def int) int {
	if n == 0 {
		return def
	}
	return n
}

// current returns the status and output to announce.
func (a *announcer) current() (sb.Status, string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.status, a.output
}

// checkOnce runs the check and applies rise and fall. It reports whether
// the status to announce changed (a new output alone waits for the next
// heartbeat).
func (a *announcer) checkOnce(ctx context.Context) bool {
	cctx, cancel := context.WithTimeout(ctx, a.timeout)
	raw, out := a.check.check(cctx)
	cancel()
	if ctx.Err() != nil {
		return false
	}
	a.mu.Lock()
	before := a.status
	wasFlapping := a.rf.flapping()
	a.status = a.rf.observe(raw)
	a.output = sb.TruncateOutput(out)
	flapping := a.rf.flapping()
	if a.status == sb.Critical && raw != sb.Critical {
		flap := ""
		if flapping {
			flap = "flapping: "
		}
		a.output = withNote(a.output, fmt.Sprintf(" (%srising: %d of %d good checks)", flap, a.rf.good, a.rf.need()))
	}
	status, output := a.status, a.output
	first := !a.checked
	a.checked = true
	a.mu.Unlock()
	switch {
	case flapping && !wasFlapping:
		a.log.Warn("sidecar: the instance is flapping (in and out of critical again and again); it needs more good checks in a row to come back", "id", a.id,
			"moves", flapLimit, "within_checks", flapWindow, "rise", a.rf.need(), "status", status)
	case !flapping && wasFlapping:
		a.log.Info("sidecar: the instance is steady again", "id", a.id, "status", status)
	}
	switch {
	case status != before && status == sb.Critical:
		a.log.Warn("sidecar: status changed", "id", a.id, "from", before, "to", status, "output", output)
	case status != before:
		a.log.Info("sidecar: status changed", "id", a.id, "from", before, "to", status, "output", output)
	case first && raw == sb.Critical:
		// Registered critical, and the first check fails: without this
		// no line would say why it never passes.
		a.log.Warn("sidecar: the first check failed; the instance stays critical", "id", a.id, "output", output)
	}
	return status != before
}

func (a *announcer) isRegistered() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.registered
}

// announceGroup keeps the announcers that share an interval announced:
// each is checked on its own, so that a check that hangs until its
// timeout delays nobody's heartbeat, not even its own; their heartbeats go
// in one request every interval, and at once when a status changes. Those
// Atlas does not know (a lease that expired, an Atlas that lost its data)
// register again.
func announceGroup(ctx context.Context, interval time.Duration, as []*announcer, atlas *client.Atlas, log *slog.Logger) {
	changed := make(chan struct{}, 1)
	var checking, firstChecks sync.WaitGroup
	defer func() {
		checking.Wait()
		for _, a := range as {
			a.check.close()
		}
	}()
	for _, a := range as {
		checking.Add(1)
		firstChecks.Add(1)
		go func() {
			defer checking.Done()
			a.checkLoop(ctx, &firstChecks, changed)
		}()
	}
	// The first heartbeat waits for the first checks, so that instances
	// register with a status rather than "not checked yet", but at most one
	// interval: a check that hangs must not keep the others unannounced.
	first := make(chan struct{})
	go func() {
		firstChecks.Wait()
		close(first)
	}()
	wait := time.NewTimer(interval)
	select {
	case <-ctx.Done():
		wait.Stop()
		return
	case <-first:
	case <-wait.C:
	}
	wait.Stop()
	t := time.NewTicker(interval)
	defer t.Stop()
	var hbLog failureLog
	for {
		heartbeatGroup(ctx, interval, as, atlas, log, &hbLog)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-changed:
		}
	}
}

// checkLoop checks a every interval until ctx ends. It marks first done
// after the first check and tells changed (without waiting) when the
// status to announce changes.
func (a *announcer) checkLoop(ctx context.Context, first *sync.WaitGroup, changed chan<- struct{}) {
	a.adopt(ctx)
	t := time.NewTicker(a.interval)
	defer t.Stop()
	for i := 0; ; i++ {
		if a.checkOnce(ctx) {
			select {
			case changed <- struct{}{}:
			default:
			}
		}
		if i == 0 {
			first.Done()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// adopt carries on with the status Atlas has for the instance when a
// sidecar before this one left it registered, passing or warning, at the
// same address: one killed or crashed and started again, which did not
// drain. Rise and fall go on from that status, so the instance stays in
// rotation while its checks keep passing, rather than go critical for
// rise × interval on every host whose sidecar restarts.
func (a *announcer) adopt(ctx context.Context) {
	if a.rf.status != sb.Critical { // check: none
		return
	}
	ctx, cancel := context.WithTimeout(ctx, min(a.interval, 2*time.Second))
	defer cancel()
	in, err := a.atlas.Instance(ctx, a.id)
	if err != nil || in.Service != a.reg.Service || in.Realm != a.reg.Realm || in.Address != a.reg.Address ||
		in.Port != a.reg.Port || (in.Status != sb.Passing && in.Status != sb.Warning) {
		return
	}
	a.mu.Lock()
	a.rf.status, a.status, a.output = in.Status, in.Status, in.Output
	a.mu.Unlock()
	a.log.Info("sidecar: carrying on with the status Atlas has for the instance, which a sidecar before this one registered", "id", a.id, "status", in.Status)
}

// withNote is out and then note, out cut short (on a rune's start) so
// that both fit in Atlas's limit on an output.
func withNote(out, note string) string {
	return sb.Truncate(out, sb.MaxOutputBytes-len(note)) + note
}

// batchBytes bounds the body of one PUT /v1/heartbeats, well under Atlas's
// limit (sb.MaxBodyBytes): beyond it, a group's heartbeats go in several
// requests. Over the limit, Atlas refused the whole request, and every
// instance in it lost its lease.
const batchBytes = sb.MaxBodyBytes / 2

// batchSize is at most what a heartbeat of id with output takes in a
// request's JSON, where one byte of the output may take six (\u003c).
func batchSize(id, output string) int { return len(id) + 6*len(output) + 64 }

// heartbeatGroup sends the heartbeats of the registered announcers (in one
// request unless they take more than batchBytes) and registers the others,
// each registration with its own time budget, so that one slow answer does
// not leave the rest unregistered. hbLog keeps the heartbeats' failures
// from being logged every interval.
func heartbeatGroup(ctx context.Context, interval time.Duration, as []*announcer, atlas *client.Atlas, log *slog.Logger, hbLog *failureLog) {
	budget := max(interval, 2*time.Second)
	// A heartbeat goes an interval after the last: it must reach Atlas
	// within the rest of the lease it renews, wherever its time goes (the
	// client shares it among Atlas's addresses, so that a hung first one
	// leaves the next time to answer).
	hbBudget := min(budget, max(3*interval, sb.MinTTL)-interval)
	var registering sync.WaitGroup
	defer registering.Wait()
	register := func(a *announcer) {
		registering.Add(1)
		go func() {
			defer registering.Done()
			rctx, cancel := context.WithTimeout(ctx, budget)
			defer cancel()
			st, out := a.current()
			a.register(rctx, st, out)
		}()
	}
	type batch struct {
		beats []sb.BatchHeartbeat
		sent  []*announcer
		size  int
	}
	var batches []*batch
	for _, a := range as {
		if !a.isRegistered() {
			register(a)
			continue
		}
		st, out := a.current()
		size := batchSize(a.id, out)
		if len(batches) == 0 || batches[len(batches)-1].size+size > batchBytes || len(batches[len(batches)-1].beats) == sb.MaxBatch {
			batches = append(batches, &batch{})
		}
		b := batches[len(batches)-1]
		b.beats = append(b.beats, sb.BatchHeartbeat{ID: a.id, Status: st, Output: out})
		b.sent = append(b.sent, a)
		b.size += size
	}
	if len(batches) == 0 {
		return
	}
	// The requests go at once, each with the whole budget: one slow
	// answer leaves the others their time. They are logged as one.
	errs := make([]error, len(batches))
	var sending sync.WaitGroup
	for i, b := range batches {
		sending.Go(func() {
			hctx, cancel := context.WithTimeout(ctx, hbBudget)
			defer cancel()
			errs[i] = sendHeartbeats(hctx, atlas, b.beats, b.sent, register)
		})
	}
	sending.Wait()
	var (
		first             error
		failed, instances int
	)
	for i, err := range errs {
		instances += len(batches[i].beats)
		if err != nil {
			failed += len(batches[i].beats)
			first = cmp.Or(first, err)
		}
	}
	switch {
	case first != nil:
		if hbLog.failed(first) {
			log.Warn("sidecar: heartbeats failed; will retry every interval, and log again only when the error changes", "instances", failed, "of", instances, "err", first)
		}
	case hbLog.ok():
		log.Info("sidecar: heartbeats reach Atlas again", "instances", instances)
	}
}

// sendHeartbeats sends one request of heartbeats, of the announcers sent,
// and registers again those Atlas does not know. It returns the request's
// error.
func sendHeartbeats(ctx context.Context, atlas *client.Atlas, batch []sb.BatchHeartbeat, sent []*announcer, register func(*announcer)) error {
	results, err := atlas.Heartbeats(ctx, batch)
	sent[0].token.note(err)
	if err != nil {
		return err
	}
	for i, r := range results {
		if i >= len(sent) {
			continue
		}
		a := sent[i]
		if r.Error == nil {
			if a.warned.ok() {
				a.log.Info("sidecar: Atlas takes the instance's heartbeats again", "id", a.id)
			}
			continue
		}
		if r.Error.Code != sb.ENotFound {
			if a.warned.failed(r.Error) {
				a.log.Warn("sidecar: heartbeat refused; will retry every interval, and log again only when the error changes", "id", a.id, "err", r.Error)
			}
			continue
		}
		a.log.Info("sidecar: Atlas does not know the instance (lease expired?); registering again", "id", a.id)
		register(a)
	}
	return nil
}

func (a *announcer) register(ctx context.Context, status sb.Status, output string) {
	reg := a.reg
	reg.Status, reg.Output = status, output
	in, err := a.atlas.Announce(ctx, a.id, reg)
	a.token.note(err)
	if err == nil && !in.Enabled && in.DisabledReason == a.drainReason {
		// A sidecar stopped between its drain's disable and its
		// deregistration (killed after SIGTERM, say) left this switch;
		// the switch outlives the lease by design, so the instance would
		// stay out of rotation for good. An operator's switch, with a
		// reason of its own, stays.
		if _, err = a.atlas.SetEnabled(ctx, a.id, true, ""); err == nil {
			a.log.Info("sidecar: enabled the instance a previous sidecar left disabled while it drained", "id", a.id)
		}
	}
	if err != nil {
		if a.warned.failed(err) {
			msg := "sidecar: register failed; will retry every interval, and log again only when the error changes"
			switch sb.ErrorCode(err) {
			case sb.EUnauthenticated:
				msg = "sidecar: register failed: Atlas takes no call without a valid token (auth is on): token_file (or --token) must hold a service token for this host's services; will retry every interval"
			case sb.EPermissionDenied:
				msg = "sidecar: register failed: this host's token may not register this service (a service token names the services it may act for); will retry every interval"
			}
			a.log.Warn(msg, "id", a.id, "err", err)
		}
		a.mu.Lock()
		a.registered = false
		a.mu.Unlock()
		return
	}
	if a.warned.ok() {
		a.log.Info("sidecar: Atlas reached again; instance registered", "id", a.id)
	}
	a.mu.Lock()
	a.registered = true
	a.mu.Unlock()
}

// tokenState is whether Atlas took this sidecar's token at the last call
// that told: a 401 says it did not (the token was deleted, or is not
// valid), and an answer that needed it says it did.
type tokenState struct {
	refused atomic.Pointer[string] // Atlas's message; nil: taken
}

// note records what err says of the token; a failure for another cause
// (Atlas down, say) tells nothing. A nil *tokenState notes nothing.
func (t *tokenState) note(err error) {
	switch {
	case t == nil:
	case err == nil:
		t.refused.Store(nil)
	case sb.ErrorCode(err) == sb.EUnauthenticated:
		msg := sb.ErrorMessage(err)
		t.refused.Store(&msg)
	}
}

// failureLog keeps a call that is tried again and again (a registration,
// a heartbeat, a watch of Atlas) from logging the same failure each time:
// an Atlas down for an hour is said once, not 1,800 times.
type failureLog struct {
	// mu guards last.
	mu sync.Mutex
	// last is the failure logged last; "" while the call succeeds.
	last string
}

// failed notes a failure and reports whether to log it: it is not the
// one logged last.
func (f *failureLog) failed(err error) bool {
	msg := err.Error()
	f.mu.Lock()
	defer f.mu.Unlock()
	if msg == f.last {
		return false
	}
	f.last = msg
	return true
}

// ok notes a success and reports whether the call was failing until now.
func (f *failureLog) ok() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	was := f.last != ""
	f.last = ""
	return was
}

// drainReason is the reason of the switch a sidecar on host sets while it
// drains.
func drainReason(host string) string { return "sidecar on " + host + " is shutting down" }

// drain takes the instance out of rotation: disabled first, then, once the
// watchers have seen it (or timeout), deregistered.
func (a *announcer) drain(ctx context.Context, timeout time.Duration) {
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if in, err := a.atlas.Instance(dctx, a.id); err == nil && !in.Enabled && in.DisabledReason != a.drainReason {
		// An operator's switch (maintenance, say): the instance takes no
		// traffic already. Deregistering would clear the switch, and
		// draining would put this sidecar's reason in its place, which the
		// next sidecar clears: either put the instance back in rotation
		// when this host comes back. Its lease runs out instead, which
		// keeps the switch.
		a.log.Info("sidecar: the instance is disabled by an operator; leaving it to expire, which keeps the switch", "id", a.id, "reason", in.DisabledReason)
		return
	}
	p, err := a.atlas.Drain(dctx, a.id, a.drainReason)
	switch {
	case client.IsNotFound(err):
	case err != nil:
		a.log.Warn("sidecar: could not drain before deregistering", "id", a.id, "err", err)
	case p.Confirmed < p.Watchers:
		a.log.Warn("sidecar: not every watcher confirmed the drain in time", "id", a.id, "watchers", p.Watchers, "confirmed", p.Confirmed)
	default:
		a.log.Info("sidecar: drained", "id", a.id, "watchers", p.Watchers)
	}
	rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
	defer rcancel()
	if err := a.atlas.Deregister(rctx, a.id); err != nil && !client.IsNotFound(err) {
		a.log.Warn("sidecar: deregister failed; the lease will expire", "id", a.id, "err", err)
	}
}

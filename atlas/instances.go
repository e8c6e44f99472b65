package atlas

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"strconv"
	"time"

	sb "github.com/switchboard-go/switchboard"
)

// jsonMarshal is json.Marshal, but writes the two types that carry
// instances directly: encoding/json would check their own MarshalJSON's
// output byte by byte again.
func jsonMarshal(v any) ([]byte, error) {
	switch v := v.(type) {
	case *sb.Instance:
		if v == nil {
			return []byte("null"), nil // as encoding/json writes a nil pointer
		}
		return v.MarshalJSON()
	case *sb.ServiceInstances:
		if v == nil {
			return []byte("null"), nil
		}
		return v.MarshalJSON()
	}
	return json.Marshal(v)
}

// leaseInfo is what this server knows of an instance's lease beyond the
// store: kept in memory only, per replica.
// Times are Unix nanoseconds (0: none), which keeps it at 24 bytes an
// instance where three time.Time took 72.
type leaseInfo struct {
	heartbeat int64 // last heartbeat seen here; 0: none since start
	expires   int64 // lease expiry as last known here; 0: not renewed here
	published int64 // when its output was last written
}

// renewedLocked records a write that renewed the lease. Call with lmu
// held.
func (l *leaseInfo) renewedLocked(now time.Time, ttl sb.Duration) {
	l.heartbeat, l.expires, l.published = now.UnixNano(), now.Add(time.Duration(ttl)).UnixNano(), now.UnixNano()
}

// outputDueLocked reports whether a check output may be written at now:
// none was for interval. Call with lmu held.
func (l *leaseInfo) outputDueLocked(now time.Time, interval time.Duration) bool {
	return now.UnixNano()-l.published >= int64(interval)
}

// leaseOf returns the lease info of instance id, nil when it is gone. Its
// fields are guarded by lmu, which is taken after st.mu, never before.
func (s *Server) leaseOf(id string) *leaseInfo {
	s.st.mu.RLock()
	defer s.st.mu.RUnlock()
	if r := s.st.instances[id]; r != nil {
		return r.lease
	}
	return nil
}

// sameRegistration reports whether in, a registration of r's id, changes
// only what heartbeats carry (status, output) and the times.
func sameRegistration(r *instRecord, in *sb.Instance) bool {
	return r.service() == in.Service && r.realm() == in.Realm && r.address == in.Address &&
		int(r.port) == in.Port && r.ttl == in.TTL && slices.Equal(r.tags, in.Tags) && maps.Equal(r.meta, in.Meta)
}

// idTaken refuses to register id for a service when it belongs to
// another one the caller may not act for.
func idTaken(id string) error {
	return sb.Errorf(sb.EPermissionDenied, "instance %s: the id belongs to another service (or realm), which this token may not act for; register under another id", id)
}

// register puts an instance and starts its lease. Registering an id again
// keeps its registered_at (and status_changed_at when the status is the
// same) and its operator switch. An id registered for another service or
// realm may be taken over only by a caller that may act for that one too
// (may, which is asked about the record the write is conditional on).
//
// later is the caller's word that it heartbeats and registers again when a
// heartbeat gets not_found (?sync=later).
func (s *Server) register(ctx context.Context, id string, reg sb.Registration, may func(realm, service string) error, later bool) (*sb.Instance, error) {
	for attempt := 0; ; attempt++ {
		now := s.cfg.Now().UTC() // a retry may have waited
		s.st.mu.RLock()
		old := s.st.instances[id]
		// Refusing a takeover must say the id is taken, but not whose
		// it is (a service token would learn other services' ids).
		if old != nil && (old.service() != reg.Service || old.realm() != reg.Realm) {
			if err := may(old.realm(), old.service()); err != nil {
				s.st.mu.RUnlock()
				return nil, idTaken(id)
			}
		}
		// An id gone with its operator switch still set is its service's
		// until the switch is cleared: another service taking it over
		// could clear the switch, and the drained instance come back in
		// rotation.
		if sw, ok := s.st.switches[id]; old == nil && ok && sw.Service != "" && (sw.Service != reg.Service || sw.Realm != reg.Realm) {
			if err := may(sw.Realm, sw.Service); err != nil {
				s.st.mu.RUnlock()
				return nil, idTaken(id)
			}
		}
		// A damaged entry under the id (not a valid record; see
		// state.damaged) is replaced, by a caller that may act for the
		// service it names; one that names none, by an admin only.
		var prev uint64
		if d, ok := s.st.damaged[pfxInstance+id]; ok && old == nil {
			prev = d.index
			if err := may(d.realm, d.service); err != nil {
				s.st.mu.RUnlock()
				if d.service == "" {
					return nil, sb.Errorf(sb.EPermissionDenied, "instance %s: its stored entry is damaged and names no service it belongs to: only an admin may register the id again", id)
				}
				return nil, err
			}
		}
		in := &sb.Instance{
			ID: id, Service: reg.Service, Realm: reg.Realm, Address: reg.Address, Port: reg.Port,
			Tags: reg.Tags, Meta: reg.Meta, Status: reg.Status, Output: reg.Output, TTL: reg.TTL,
			RegisteredAt: now, StatusChangedAt: now,
		}
		// A registration that a crash of the machine took back is made
		// again by a caller that heartbeats, so it may be synced after
		// it is answered (Op.SyncLater): a new id's (the next heartbeat
		// gets 404 and registers again), or one that changes only what
		// a heartbeat carries too. One that changes the address, tags,
		// meta or TTL of a record would leave the old one in place:
		// synced.
		later := later && (old == nil && prev == 0 || old != nil && sameRegistration(old, in))
		if old != nil {
			prev = old.index
			if old.service() == in.Service && old.realm() == in.Realm {
				in.RegisteredAt = fromNanos(old.registered)
				if old.status() == in.Status {
					in.StatusChangedAt = fromNanos(old.statusChanged)
				}
			}
		}
		s.st.mu.RUnlock()
		if in.Tags == nil {
			in.Tags = []string{}
		}
		if in.Meta == nil {
			in.Meta = map[string]string{}
		}
		val, err := jsonMarshal(in)
		if err != nil {
			return nil, err
		}
		s.st.hint(pfxInstance+id, val, in)
		_, err = s.txn(ctx, Op{Key: pfxInstance + id, Value: val, TTL: time.Duration(in.TTL), IfIndex: IfIndex(prev), SyncLater: later})
		s.st.unhint(pfxInstance+id, val)
		if errors.Is(err, ErrConflict) && attempt < 5 {
			s.awaitChange(ctx, id, old)
			continue
		}
		if errors.Is(err, ErrConflict) {
			return nil, sb.Errorf(sb.EConflict, "instance %s is being changed by other calls; retry", id)
		}
		if err != nil {
			return nil, err
		}
		if l := s.leaseOf(id); l != nil {
			s.lmu.Lock()
			l.renewedLocked(now, in.TTL)
			s.lmu.Unlock()
		}
		s.metrics.registrations.Inc()
		return s.instance(id, true)
	}
}

// heartbeat renews an instance's lease and records its status. A
// heartbeat that changes nothing writes nothing; a change of output alone
// is written at most once per OutputInterval.
func (s *Server) heartbeat(ctx context.Context, id string, hb sb.Heartbeat, later bool) (*sb.Instance, error) {
	if err := s.beat(ctx, id, hb, later); err != nil {
		return nil, err
	}
	return s.instance(id, true)
}

// leaseUnavailable is the error of a heartbeat the store could not take:
// not the store's own words, as for writes (txn); Atlas's health and log
// say what is wrong with the store.
func leaseUnavailable(id string) error {
	return sb.Errorf(sb.EUnavailable, "renewing the lease of %s failed: the store is unavailable (etcd without quorum, or not reached); retry", id)
}

// beat is a heartbeat without the answer. later says that the caller
// heartbeats again: its status or output may be synced after the answer.
func (s *Server) beat(ctx context.Context, id string, hb sb.Heartbeat, later bool) error {
	hb.Output = sb.TruncateOutput(hb.Output)
	for attempt := 0; ; attempt++ {
		now := s.cfg.Now().UTC() // a retry may have waited
		s.st.mu.RLock()
		r := s.st.instances[id]
		s.st.mu.RUnlock()
		if r == nil {
			var err error
			if r, err = s.awaitInstance(ctx, id); err != nil {
				return leaseUnavailable(id)
			}
		}
		if r == nil {
			return sb.Errorf(sb.ENotFound, "instance %s: not registered or its lease expired; register it again", id)
		}
		// The record changes with every write; its lease info stays.
		l := r.lease
		s.lmu.Lock()
		outputDue := l.outputDueLocked(now, s.cfg.OutputInterval)
		s.lmu.Unlock()
		statusChanged := r.status() != hb.Status
		outputChanged := r.output != hb.Output
		if statusChanged || (outputChanged && outputDue) {
			in := r.stored(id)
			in.Status, in.Output = hb.Status, hb.Output
			if statusChanged {
				in.StatusChangedAt = now
			}
			val, err := jsonMarshal(in)
			if err != nil {
				return err
			}
			s.st.hint(pfxInstance+id, val, in)
			// The next heartbeat carries the status and output again:
			// a crash of the machine may take this write back.
			_, err = s.txn(ctx, Op{Key: pfxInstance + id, Value: val, TTL: time.Duration(in.TTL), IfIndex: IfIndex(r.index), SyncLater: later})
			s.st.unhint(pfxInstance+id, val)
			if errors.Is(err, ErrConflict) && attempt < 5 {
				s.awaitChange(ctx, id, r)
				continue
			}
			if errors.Is(err, ErrConflict) {
				// Deleted (expired) or re-registered under us.
				return sb.Errorf(sb.ENotFound, "instance %s: changed or expired during the heartbeat; register it again", id)
			}
			if err != nil {
				return err
			}
			s.lmu.Lock()
			l.renewedLocked(now, in.TTL)
			s.lmu.Unlock()
		} else {
			if _, elsewhere := s.store.(LeaseReader); elsewhere && !s.Stale().IsZero() {
				// etcd does not answer (the probe says so every second):
				// each renewal would wait out its deadline, and a batch
				// of them one after another.
				return leaseUnavailable(id)
			}
			exp, err := s.store.KeepAlive(ctx, pfxInstance+id)
			if errors.Is(err, ErrNotFound) {
				return sb.Errorf(sb.ENotFound, "instance %s: not registered or its lease expired; register it again", id)
			}
			if err != nil {
				return leaseUnavailable(id)
			}
			// The lease the store renewed is the key's now: the record
			// read above may since have been deleted and registered anew.
			if l = s.leaseOf(id); l == nil {
				return sb.Errorf(sb.ENotFound, "instance %s: expired or deleted during the heartbeat; register it again", id)
			}
			// A new output held back is written by the first heartbeat
			// that carries it once the interval is up. Not before, and
			// never by a write of Atlas's own: that would renew the lease
			// of an instance that has stopped heartbeating.
			s.lmu.Lock()
			l.heartbeat, l.expires = now.UnixNano(), exp.UnixNano()
			s.lmu.Unlock()
		}
		s.metrics.heartbeats.Inc()
		return nil
	}
}

// awaitInstance is for an instance this server does not know: when the
// store has it (registered an instant ago through another replica, whose
// write has not reached this one yet), it waits for it to arrive here, a
// few seconds at most. It returns nil when the store does not have it, and
// the store's error when the store cannot tell (etcd unreachable, say).
func (s *Server) awaitInstance(ctx context.Context, id string) (*instRecord, error) {
	if _, err := s.store.KeepAlive(ctx, pfxInstance+id); errors.Is(err, ErrNotFound) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	return s.awaitRecord(ctx, id, func(r *instRecord) bool { return r != nil }), nil
}

// catchUpWait bounds how long a replica waits for a write made through
// another one to reach it.
const catchUpWait = 3 * time.Second

// awaitChange waits until the record of instance id in memory is no longer
// r (nil: none), a few seconds at most. A conditional write on r failed
// because the store has a newer write, which reaches memory a moment
// later: retrying before it does would only fail again.
func (s *Server) awaitChange(ctx context.Context, id string, r *instRecord) {
	s.awaitRecord(ctx, id, func(cur *instRecord) bool { return cur != r })
}

// awaitRecord waits until the record of instance id in memory (nil: none)
// is one done accepts, and returns it; nil when catchUpWait or ctx ends
// first.
func (s *Server) awaitRecord(ctx context.Context, id string, done func(*instRecord) bool) *instRecord {
	timer := time.NewTimer(catchUpWait)
	defer timer.Stop()
	for {
		ch := s.st.appliedChan()
		s.st.mu.RLock()
		r := s.st.instances[id]
		s.st.mu.RUnlock()
		if done(r) {
			return r
		}
		select {
		case <-ch:
		case <-timer.C:
			return nil
		case <-ctx.Done():
			return nil
		}
	}
}

// setEnabled flips the operator switch of an instance.
// byService (the caller is a service token, acting for its own instance)
// may set a switch, and clear one a service token set, but not touch an
// operator's: the switch is the operator's (the SPEC), and a sidecar or a
// service must not put an instance an operator took out back in rotation.
func (s *Server) setEnabled(ctx context.Context, id string, sw sb.EnabledSwitch, byService bool) (*sb.Instance, error) {
	var (
		cur            switchRecord
		disabled       bool
		service, realm string
	)
	exists, err := s.found(ctx, func() bool {
		s.st.mu.RLock()
		defer s.st.mu.RUnlock()
		r, exists := s.st.instances[id]
		cur, disabled = s.st.switches[id]
		if exists {
			service, realm = r.service(), r.realm()
		}
		return exists
	})
	if err != nil {
		return nil, err
	}
	if !exists {
		return nil, sb.Errorf(sb.ENotFound, "instance %s: not registered", id)
	}
	operators := disabled && !cur.ByService
	switch {
	case byService && operators && *sw.Enabled:
		return nil, sb.Errorf(sb.EPermissionDenied, "instance %s: disabled by an operator (%q); a service token may clear only a switch a service token set", id, cur.Reason)
	case byService && operators:
		// Out of rotation already, for the operator's reason, which stays.
	case *sw.Enabled && disabled:
		_, err = s.txn(ctx, Op{Key: pfxSwitch + id, Delete: true})
	case !*sw.Enabled:
		val, _ := jsonMarshal(switchRecord{Reason: sw.Reason, Service: service, Realm: realm, ByService: byService})
		_, err = s.txn(ctx, Op{Key: pfxSwitch + id, Value: val})
	}
	if err != nil {
		return nil, err
	}
	return s.instance(id, true)
}

// deregister deletes instance id and its enabled switch. The switch of an
// instance whose lease ran out is kept, so that it comes back drained; a
// DELETE of the id clears it too, but for an operator's switch when
// byService (a service token deregistering its own instance): that stays.
func (s *Server) deregister(ctx context.Context, id string, byService bool) (uint64, error) {
	var keep bool
	exists, err := s.found(ctx, func() bool {
		s.st.mu.RLock()
		defer s.st.mu.RUnlock()
		_, exists := s.st.instances[id]
		sw, switched := s.st.switches[id]
		keep = switched && byService && !sw.ByService
		return exists || switched
	})
	if err != nil {
		return 0, err
	}
	if !exists {
		return 0, sb.Errorf(sb.ENotFound, "instance %s: not registered", id)
	}
	if keep {
		return s.txn(ctx, Op{Key: pfxInstance + id, Delete: true})
	}
	return s.txn(ctx, Op{Key: pfxInstance + id, Delete: true}, Op{Key: pfxSwitch + id, Delete: true})
}

// instance returns one instance, with its lease fields when leases is set.
func (s *Server) instance(id string, leases bool) (*sb.Instance, error) {
	s.st.mu.RLock()
	in := s.st.visibleLocked(id)
	s.st.mu.RUnlock()
	if in == nil {
		return nil, sb.Errorf(sb.ENotFound, "instance %s: not registered", id)
	}
	if leases {
		s.addLease(in)
	}
	return in, nil
}

func (s *Server) addLease(in *sb.Instance) { s.addLeases([]*sb.Instance{in}) }

// readLease fills the lease fields of in for a read of it: from the store
// too when its leases are renewed elsewhere as well (LeaseReader).
// Answers to this server's own writes need not ask: it has just renewed
// the lease itself.
//
// A store that does not answer is not asked (a read would wait out the
// store's deadline, 5 s on etcd, for fields it has without them); one that
// is slow gets a second.
func (s *Server) readLease(ctx context.Context, in *sb.Instance) {
	var store storeLease
	if lr, ok := s.store.(LeaseReader); ok && s.Stale().IsZero() {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		if renewed, expires, err := lr.LeaseEnd(ctx, pfxInstance+in.ID); err == nil {
			store = storeLease{renewed: renewed, expires: expires}
		}
		cancel()
	}
	s.st.mu.RLock()
	defer s.st.mu.RUnlock()
	s.lmu.Lock()
	defer s.lmu.Unlock()
	s.leaseLocked(in, store)
}

// storeLease is a lease as a LeaseReader store tells it; zero when it
// was not asked.
type storeLease struct{ renewed, expires time.Time }

// addLeases fills the lease fields of instances from this server's own
// bookkeeping, under one lock.
func (s *Server) addLeases(ins []*sb.Instance) {
	s.st.mu.RLock()
	defer s.st.mu.RUnlock()
	s.lmu.Lock()
	defer s.lmu.Unlock()
	for _, in := range ins {
		s.leaseLocked(in, storeLease{})
	}
}

// leaseLocked fills in's lease fields: the later of this server's times
// and store's. Call with st.mu read-locked and lmu held.
func (s *Server) leaseLocked(in *sb.Instance, store storeLease) {
	var exp, hb time.Time
	if r := s.st.instances[in.ID]; r != nil {
		l := r.lease
		hb = fromNanos(l.heartbeat)
		exp = fromNanos(l.expires)
	}
	if store.renewed.After(hb) {
		hb = store.renewed.UTC()
		// etcd counts a lease's time in whole seconds: the renewal it
		// implies may fall before the registration that granted it.
		if hb.Before(in.RegisteredAt) {
			hb = in.RegisteredAt
		}
	}
	if store.expires.After(exp) {
		exp = store.expires.UTC()
	}
	if !hb.IsZero() {
		in.LastHeartbeat = &hb
	}
	if exp.IsZero() {
		if _, elsewhere := s.store.(LeaseReader); elsewhere {
			// Renewed, if at all, through other replicas: unknown here
			// (a listing; a single instance asks the store).
			return
		}
		// Not renewed since this server started: the store gave it a
		// full TTL from then.
		exp = s.started.Add(time.Duration(in.TTL)).UTC()
	}
	if g, ok := s.store.(LeaseGracer); ok {
		// Every lease then held got one TTL from then; any later has a
		// later end of its own.
		if at := g.LeasesGraced(); !at.IsZero() {
			if end := at.Add(time.Duration(in.TTL)).UTC(); end.After(exp) {
				exp = end
			}
		}
	}
	in.ExpiresAt = &exp
}

// serviceQuery is a parsed GET /v1/services/{name}.
type serviceQuery struct {
	realm, service string
	statuses       []sb.Status
	tags           []string
	leases         bool
}

// cacheKey names q's answer in the render cache. Tags may hold any byte,
// a separator included, so each is written with its length (canonical).
func (q serviceQuery) cacheKey() string {
	k := "svc\x00" + q.realm + "\x00" + q.service
	for _, st := range q.statuses {
		k += "\x00s=" + string(st)
	}
	return k + "\x00t=" + canonical(q.tags...)
}

// serviceInstancesLocked answers q from memory, without lease fields.
func (s *Server) serviceInstancesLocked(q serviceQuery) *sb.ServiceInstances {
	out := &sb.ServiceInstances{
		Index:     s.st.indexOfLocked(svcKey(q.realm, q.service)),
		Service:   q.service,
		Realm:     q.realm,
		Instances: []*sb.Instance{},
	}
	for id := range s.st.byService[q.realm][q.service] {
		in := s.st.visibleLocked(id)
		if len(q.statuses) > 0 && !slices.Contains(q.statuses, in.Status) {
			continue
		}
		if !hasAll(in.Tags, q.tags) {
			continue
		}
		out.Instances = append(out.Instances, in)
	}
	slices.SortFunc(out.Instances, func(a, b *sb.Instance) int {
		if a.ID < b.ID {
			return -1
		}
		if a.ID > b.ID {
			return 1
		}
		return 0
	})
	return out
}

func hasAll(have, want []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

// servicesLocked answers GET /v1/services for a realm.
func (s *Server) servicesLocked(realm string) *sb.ServiceList {
	out := &sb.ServiceList{Index: s.st.indexOfLocked(listKey(realm)), Services: []sb.ServiceSummary{}}
	for name, ids := range s.st.byService[realm] {
		sum := sb.ServiceSummary{Name: name}
		for id := range ids {
			in := s.st.visibleLocked(id)
			sum.Instances++
			switch in.Status {
			case sb.Passing:
				sum.Passing++
			case sb.Warning:
				sum.Warning++
			case sb.Critical:
				sum.Critical++
			}
			if !in.Enabled {
				sum.Disabled++
			}
		}
		out.Services = append(out.Services, sum)
	}
	slices.SortFunc(out.Services, func(a, b sb.ServiceSummary) int {
		if a.Name < b.Name {
			return -1
		}
		return 1
	})
	return out
}

// assignPort gives a service its port, once: the same service always gets
// the same port, no two services share one, and none is given that an
// instance of another service is registered at.
func (s *Server) assignPort(ctx context.Context, service string) (*sb.PortAssignment, error) {
	for attempt := 0; attempt < 20; attempt++ {
		s.st.mu.RLock()
		port, ok := s.st.ports[service]
		kept := 0 // a port q/ still gives service, its p/ damaged
		if !ok {
			for p, svc := range s.st.portUsed {
				if svc == service && (kept == 0 || p < kept) {
					kept = p
				}
			}
		}
		if !ok && kept == 0 {
			// Nor a port another service has (its q/ damaged), or an
			// instance of another service is registered at (without
			// asking for one): on one host the two would clash.
			taken := map[int]bool{}
			for _, p := range s.st.ports {
				taken[p] = true
			}
			for _, r := range s.st.instances {
				if r.service() != service {
					taken[int(r.port)] = true
				}
			}
			for p := s.cfg.PortMin; p <= s.cfg.PortMax; p++ {
				if _, used := s.st.portUsed[p]; !used && !taken[p] {
					port = p
					break
				}
			}
		}
		s.st.mu.RUnlock()
		if ok {
			return &sb.PortAssignment{Service: service, Port: port}, nil
		}
		var used Op // q/PORT
		switch {
		case kept != 0:
			// The service keeps its port: its p/ entry was damaged, and
			// q/ says the port is its own (rewritten, unconditionally).
			port = kept
			used = Op{Key: pfxPortUsed + strconv.Itoa(port)}
		case port == 0:
			return nil, sb.Errorf(sb.EConflict, "port: every port in %d-%d is taken; start Atlas with a wider --ports", s.cfg.PortMin, s.cfg.PortMax)
		default:
			used = Op{Key: pfxPortUsed + strconv.Itoa(port), IfIndex: IfIndex(s.st.damagedIndex(pfxPortUsed + strconv.Itoa(port)))}
		}
		val, _ := jsonMarshal(port)
		name, _ := jsonMarshal(service)
		used.Value = name
		_, err := s.txn(ctx, Op{Key: pfxPort + service, Value: val, IfIndex: IfIndex(s.st.damagedIndex(pfxPort + service))}, used)
		if errors.Is(err, ErrConflict) {
			continue
		}
		if err != nil {
			return nil, err
		}
	}
	return nil, sb.Errorf(sb.EConflict, "port: too many concurrent assignments; retry")
}

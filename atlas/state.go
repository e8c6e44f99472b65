package atlas

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unique"

	sb "github.com/switchboard-go/switchboard"
)

// Keys in the store. Names and ids never contain '/', so the layout is
// unambiguous.
const (
	pfxInstance = "i/" // i/ID: storedInstance
	pfxSwitch   = "e/" // e/ID: switchRecord, present only while disabled
	pfxLayer    = "c/" // c/REALM/SERVICE: a config layer (either part may be empty)
	pfxToken    = "t/" // t/ID: tokenRecord
	pfxPort     = "p/" // p/SERVICE: port
	pfxPortUsed = "q/" // q/PORT: service, so that no port is given twice
	pfxPolicy   = "a/" // a/REALM/SERVICE: policy
	keyBoot     = "m/bootstrap"
)

type switchRecord struct {
	Reason string `json:"reason"`
	// Service and Realm are those of the instance when it was disabled:
	// the switch outlives the lease, and only a caller that may act for
	// them may register the id again while it is gone. Empty in records
	// written before they were kept.
	Service string `json:"service,omitempty"`
	Realm   string `json:"realm,omitempty"`
	// ByService is set when a service token set it (a sidecar draining
	// its own instance): such a token may clear only such a switch, not
	// an operator's.
	ByService bool `json:"by_service,omitempty"`
}

// validate checks a switch stored for instance id.
func (sw *switchRecord) validate(id string) error {
	if err := sb.ValidateID(id); err != nil {
		return err
	}
	if sw.Service != "" || sw.Realm != "" {
		return errors.Join(sb.ValidateName("service", sw.Service), sb.ValidateName("realm", sw.Realm))
	}
	return nil
}

type tokenRecord struct {
	sb.Token
	Hash string `json:"hash"` // hex SHA-256 of the secret
}

// validate checks a token stored under id as its creation checked it.
func (t *tokenRecord) validate(id string) error {
	if t.ID != id {
		return fmt.Errorf("id: must be the key's, %q, got %q", id, t.ID)
	}
	req := sb.TokenRequest{Name: t.Name, Role: t.Role, Services: t.Services, Realms: t.Realms}
	if err := req.Validate(); err != nil {
		return err
	}
	if b, err := hex.DecodeString(t.Hash); err != nil || len(b) != sha256.Size {
		return errors.New("hash: must be a hex SHA-256")
	}
	return nil
}

// validPort checks a port given to a service.
func validPort(service string, port int) error {
	if err := sb.ValidateName("service", service); err != nil {
		return err
	}
	if port < 1 || port > 65535 {
		return fmt.Errorf("port: must be 1-65535, got %d", port)
	}
	return nil
}

// instRecord is an instance as the state keeps it: the fields it is stored
// with, in one allocation of about 150 bytes (an sb.Instance and a record
// took 264), times in Unix nanoseconds (0: none); the id is its map key,
// and what the API derives (enabled, the lease fields) is not kept.
type instRecord struct {
	index         uint64 // of the write that stored it
	res           uint64 // of the last change to its answer (its watch key's)
	svc           unique.Handle[svcName]
	address       string
	tags          []string // shared between instances with equal tags
	meta          map[string]string
	output        string
	ttl           sb.Duration
	registered    int64
	statusChanged int64
	// lease is this server's lease bookkeeping (guarded by Server.lmu),
	// handed from each record of the instance to the next.
	lease  *leaseInfo
	port   int32
	health uint8 // index in statuses
}

// svcName is a service of a realm. Records and history events keep a
// unique.Handle of one: 8 bytes where the two strings took 32, which
// brings a record down to the 128-byte size class.
type svcName struct{ realm, service string }

func makeSvcName(realm, service string) unique.Handle[svcName] {
	return unique.Make(svcName{realm: realm, service: service})
}

// realm and service are the record's.
func (r *instRecord) realm() string   { return r.svc.Value().realm }
func (r *instRecord) service() string { return r.svc.Value().service }

// statuses numbers the statuses for records, which keep one in a byte.
// Every write validates its status, so no other is stored; one would
// read as critical (never routed).
var statuses = [...]sb.Status{sb.Critical, sb.Passing, sb.Warning}

func healthOf(st sb.Status) uint8 {
	switch st {
	case sb.Passing:
		return 1
	case sb.Warning:
		return 2
	}
	return 0
}

// status is the instance's status.
func (r *instRecord) status() sb.Status { return statuses[r.health] }

// stored returns the instance as it was stored (Enabled false, no lease
// fields): a new value the caller may change.
func (r *instRecord) stored(id string) *sb.Instance {
	return &sb.Instance{
		ID: id, Service: r.service(), Realm: r.realm(), Address: r.address, Port: int(r.port),
		Tags: r.tags, Meta: r.meta, Status: r.status(), Output: r.output, TTL: r.ttl,
		RegisteredAt: fromNanos(r.registered), StatusChangedAt: fromNanos(r.statusChanged),
	}
}

func toNanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

type layerRecord struct {
	raw   json.RawMessage
	index uint64
}

// watchKey names a resource whose answers blocking queries wait on.
func svcKey(realm, service string) string { return "s/" + realm + "/" + service }
func listKey(realm string) string         { return "l/" + realm }
func instKey(id string) string            { return instWatchPfx + id }
func layerKey(k sb.LayerKey) string       { return "c/" + k.Realm + "/" + k.Service }

// instWatchPfx begins an instance's watch key (instKey).
const instWatchPfx = "i/"

const (
	layersKey   = "layers"
	tokensKey   = "tokens"
	policiesKey = "policies"
)

// event is one entry of the history that lets an event stream resume.
type event struct {
	index uint64
	svc   unique.Handle[svcName]
}

// state is Atlas's in-memory copy of the store, kept current by apply.
type state struct {
	// mu guards every field below it.
	mu        sync.RWMutex
	applied   uint64 // index of the last change applied
	instances map[string]*instRecord
	switches  map[string]switchRecord
	layers    map[sb.LayerKey]layerRecord
	tokens    map[string]tokenRecord
	ports     map[string]int      // p/SERVICE: each service's port
	portUsed  map[int]string      // q/PORT: the ports given, to which service
	policies  map[string][]string // REALM/SERVICE -> may_call
	// damaged holds, by store key, the index of each entry that is not a
	// valid record (a damaged file, a hand edit of etcd, another version's
	// format): it is in no answer, and the next write of its key replaces
	// it (damagedIndex).
	damaged map[string]damagedEntry
	// onDamaged, when set, hears of each damaged entry and the rule it
	// breaks (under mu).
	onDamaged func(key, rule string)
	// booted: the store holds keyBoot, written with the first admin token.
	booted bool
	// byService indexes instances: realm -> service -> id -> record.
	byService map[string]map[string]map[string]*instRecord
	// res is, per watch key, the index of the last change to its answer
	// (a live instance's is in its record, a gone one's nowhere:
	// setResLocked).
	res map[string]uint64
	// floor is the index every resource starts at: the snapshot's.
	floor uint64
	// metas and tagLists: shared meta maps and tag lists by their
	// contents (newRecord).
	metas    map[string]map[string]string
	tagLists map[string][]string
	// history of service changes, oldest first, for event stream resume.
	history      []event
	historyFloor uint64

	// hmu guards hints: instances being written here, by store key.
	hmu   sync.Mutex
	hints map[string]decodedHint

	// wmu guards waits: per watch key that someone waits on, a channel
	// closed at the next change; and subs: per watch key, the event
	// streams subscribed to it (subscribe).
	wmu   sync.Mutex
	waits map[string]*waiter
	subs  map[string]map[chan struct{}]struct{}
	// appliedCh is closed after every apply (guarded by wmu).
	appliedCh chan struct{}
}

// historyLen is how many service changes, at least, the history keeps.
const historyLen = 16384

// changedSinceLocked returns the services of realm changed after index,
// each once, in the order of their first change; want filters them.
func (s *state) changedSinceLocked(realm string, after uint64, want func(string) bool) []string {
	var out []string
	i := sort.Search(len(s.history), func(i int) bool { return s.history[i].index > after })
	for _, e := range s.history[i:] {
		if n := e.svc.Value(); n.realm == realm && want(n.service) && !slices.Contains(out, n.service) {
			out = append(out, n.service)
		}
	}
	return out
}

func newState() *state {
	s := &state{waits: make(map[string]*waiter), subs: make(map[string]map[chan struct{}]struct{}), appliedCh: make(chan struct{}), hints: make(map[string]decodedHint)}
	s.reset(0)
	return s
}

func (s *state) reset(index uint64) {
	s.applied = index
	s.instances = make(map[string]*instRecord)
	s.switches = make(map[string]switchRecord)
	s.layers = make(map[sb.LayerKey]layerRecord)
	s.tokens = make(map[string]tokenRecord)
	s.ports = make(map[string]int)
	s.portUsed = make(map[int]string)
	s.policies = make(map[string][]string)
	s.damaged = make(map[string]damagedEntry)
	s.booted = false
	s.byService = make(map[string]map[string]map[string]*instRecord)
	s.metas = make(map[string]map[string]string)
	s.tagLists = make(map[string][]string)
	s.res = make(map[string]uint64)
	s.floor = index
	s.history = nil
	s.historyFloor = index
}

// load replaces the whole state with a snapshot and wakes every waiter.
func (s *state) load(index uint64, kvs []KV) {
	s.mu.Lock()
	before := s.instances
	s.reset(index)
	for _, kv := range kvs {
		s.putLocked(kv, nil)
	}
	// This server's lease bookkeeping is not in the store: carry it over
	// to the instances the snapshot still has.
	for id, r := range s.instances {
		if old := before[id]; old != nil {
			r.lease = old.lease
		}
	}
	s.mu.Unlock()
	s.wakeAll()
}

// apply applies changes, in order, and then wakes the waiters of what
// they changed, once: a batch of writes the store committed together wakes
// the writers waiting for them (and the blocking queries) once, not once
// per write.
func (s *state) apply(cs ...Change) {
	var wake, woken []string
	s.mu.Lock()
	for _, c := range cs {
		if c.Index <= s.applied {
			continue
		}
		woken = woken[:0]
		for _, kv := range c.KVs {
			if kv.Deleted {
				s.deleteLocked(kv.Key, c.Index, &woken)
			} else {
				s.putLocked(kv.KV, &woken)
			}
		}
		s.applied = c.Index
		for _, k := range woken {
			s.setResLocked(k, c.Index)
		}
		wake = append(wake, woken...)
	}
	s.mu.Unlock()
	s.wake(wake)
}

// decodedHint is an instance this server is writing, with the JSON it
// wrote it as.
type decodedHint struct {
	val []byte
	in  *sb.Instance
}

// hint tells apply that the instance stored under key as val is in, so
// that applying this server's own write does not decode the JSON it has
// just encoded. The caller must not change in afterwards, and must call
// unhint when its write is done (or failed).
func (s *state) hint(key string, val []byte, in *sb.Instance) {
	s.hmu.Lock()
	s.hints[key] = decodedHint{val: val, in: in}
	s.hmu.Unlock()
}

func (s *state) unhint(key string, val []byte) {
	s.hmu.Lock()
	if h, ok := s.hints[key]; ok && bytes.Equal(h.val, val) {
		delete(s.hints, key)
	}
	s.hmu.Unlock()
}

// decodeInstance decodes and checks the stored value of an instance, or
// takes the hint for exactly that value.
func (s *state) decodeInstance(key string, val []byte) (*sb.Instance, error) {
	s.hmu.Lock()
	h, ok := s.hints[key]
	ok = ok && bytes.Equal(h.val, val)
	if ok {
		delete(s.hints, key)
	}
	s.hmu.Unlock()
	if ok {
		return h.in, nil // newRecord only reads it
	}
	// As a registration is checked: what is in the store was, unless it
	// was written some other way.
	if err := sb.ValidateID(key[len(pfxInstance):]); err != nil {
		return nil, err
	}
	var in sb.Instance
	if err := json.Unmarshal(val, &in); err != nil {
		return nil, err
	}
	reg := sb.Registration{Service: in.Service, Realm: in.Realm, Address: in.Address, Port: in.Port,
		Tags: in.Tags, Meta: in.Meta, Status: in.Status, TTL: in.TTL}
	if err := reg.Validate(); err != nil {
		return nil, err
	}
	if len(in.Output) > sb.MaxOutputBytes {
		return nil, fmt.Errorf("output: must be at most %d bytes, got %d", sb.MaxOutputBytes, len(in.Output))
	}
	return &in, nil
}

// visibleLocked returns the instance as the API shows it (without lease
// fields), or nil.
func (s *state) visibleLocked(id string) *sb.Instance {
	r := s.instances[id]
	if r == nil {
		return nil
	}
	in := r.stored(id)
	in.Enabled = true
	if sw, ok := s.switches[id]; ok {
		in.Enabled = false
		in.DisabledReason = sw.Reason
	}
	return in
}

// touchInstanceLocked records that instance id may have changed between
// before and after (either may be nil): when what watchers see differs,
// every affected answer is marked changed.
func (s *state) touchInstanceLocked(id string, before, after *sb.Instance, index uint64, woken *[]string) {
	if woken == nil || sameInstance(before, after) {
		return
	}
	*woken = append(*woken, instKey(id))
	for _, in := range []*sb.Instance{before, after} {
		if in == nil {
			continue
		}
		k := svcKey(in.Realm, in.Service)
		if !slices.Contains(*woken, k) {
			*woken = append(*woken, k, listKey(in.Realm))
			s.history = append(s.history, event{index: index, svc: makeSvcName(in.Realm, in.Service)})
		}
	}
	// Trim in halves, so that keeping the history costs O(1) a change.
	if len(s.history) > 2*historyLen {
		over := len(s.history) - historyLen
		s.historyFloor = s.history[over-1].index
		s.history = append(s.history[:0:0], s.history[over:]...)
	}
}

// sameInstance reports whether watchers would see no difference between
// a and b (nil is no instance).
func sameInstance(a, b *sb.Instance) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.ID == b.ID && a.Service == b.Service && a.Realm == b.Realm && a.Address == b.Address &&
		a.Port == b.Port && a.Status == b.Status && a.Output == b.Output && a.Enabled == b.Enabled &&
		a.DisabledReason == b.DisabledReason && a.TTL == b.TTL && a.RegisteredAt.Equal(b.RegisteredAt) &&
		a.StatusChangedAt.Equal(b.StatusChangedAt) && slices.Equal(a.Tags, b.Tags) && maps.Equal(a.Meta, b.Meta)
}

// damagedSwitchReason is the reason of an operator switch whose stored
// entry is not a valid record.
const damagedSwitchReason = "the stored operator switch is damaged (Atlas's log says how); enable the instance to clear it"

// putLocked applies a stored entry. One that is not a valid record is
// taken as gone, and kept in damaged; but a damaged operator switch still
// disables its instance, as the entry's presence says: taken as gone, it
// put an instance an operator had drained back in rotation.
func (s *state) putLocked(kv KV, woken *[]string) {
	if err := s.putValidLocked(kv, woken); err != nil {
		if id, ok := strings.CutPrefix(kv.Key, pfxSwitch); ok && sb.ValidateID(id) == nil {
			delete(s.damaged, kv.Key)
			before := s.visibleLocked(id)
			s.switches[id] = switchRecord{Reason: damagedSwitchReason}
			s.touchInstanceLocked(id, before, s.visibleLocked(id), kv.Index, woken)
		} else {
			s.deleteLocked(kv.Key, kv.Index, woken) // what it replaced is gone
		}
		d := damagedEntry{index: kv.Index}
		if strings.HasPrefix(kv.Key, pfxInstance) {
			// Whose it was, as far as it says: only a caller that may act
			// for that service registers the id again.
			var owner struct{ Service, Realm string }
			if json.Unmarshal(kv.Value, &owner) == nil && sb.ValidateName("service", owner.Service) == nil &&
				sb.ValidateName("realm", cmp.Or(owner.Realm, sb.DefaultRealm)) == nil {
				d.service, d.realm = owner.Service, cmp.Or(owner.Realm, sb.DefaultRealm)
			}
		}
		s.damaged[kv.Key] = d
		if s.onDamaged != nil {
			rule := err.Error()
			if e := (*sb.Error)(nil); errors.As(err, &e) {
				rule = e.Message // without its API code
			}
			s.onDamaged(kv.Key, rule)
		}
		return
	}
	delete(s.damaged, kv.Key)
}

// damagedEntry is a stored entry that is not a valid record.
type damagedEntry struct {
	index uint64
	// service and realm: those an instance's entry names, when it names
	// valid ones ("" otherwise, and for other keys).
	service, realm string
}

// damagedIndex returns the index of the damaged entry under key, or 0: a
// write that replaces the key's record replaces such an entry too.
func (s *state) damagedIndex(key string) uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.damaged[key].index
}

func (s *state) putValidLocked(kv KV, woken *[]string) error {
	key := kv.Key
	switch {
	case key == keyBoot:
		s.booted = true
	case strings.HasPrefix(key, pfxInstance):
		id := key[len(pfxInstance):]
		in, err := s.decodeInstance(key, kv.Value)
		if err != nil {
			return err
		}
		r := s.newRecord(in, kv.Index)
		if old := s.instances[id]; old != nil {
			r.res, r.lease = old.res, old.lease
		} else {
			r.lease = &leaseInfo{}
		}
		before := s.visibleLocked(id)
		s.unindexLocked(id)
		s.instances[id] = r
		name := r.svc.Value()
		svcs := s.byService[name.realm]
		if svcs == nil {
			svcs = make(map[string]map[string]*instRecord)
			s.byService[name.realm] = svcs
		}
		if svcs[name.service] == nil {
			svcs[name.service] = make(map[string]*instRecord)
		}
		svcs[name.service][id] = r
		s.touchInstanceLocked(id, before, s.visibleLocked(id), kv.Index, woken)
	case strings.HasPrefix(key, pfxSwitch):
		id := key[len(pfxSwitch):]
		var sw switchRecord
		if err := json.Unmarshal(kv.Value, &sw); err != nil {
			return err
		}
		if err := sw.validate(id); err != nil {
			return err
		}
		before := s.visibleLocked(id)
		s.switches[id] = sw
		s.touchInstanceLocked(id, before, s.visibleLocked(id), kv.Index, woken)
	case strings.HasPrefix(key, pfxLayer):
		lk, ok := parseLayerKey(key)
		if !ok {
			return errors.New("key: must be c/REALM/SERVICE")
		}
		if err := lk.Validate(); err != nil {
			return err
		}
		if _, err := ParseLayer(kv.Value); err != nil {
			return err
		}
		s.layers[lk] = layerRecord{raw: kv.Value, index: kv.Index}
		addWoken(woken, layerKey(lk), layersKey)
	case strings.HasPrefix(key, pfxToken):
		var t tokenRecord
		if err := json.Unmarshal(kv.Value, &t); err != nil {
			return err
		}
		if err := t.validate(key[len(pfxToken):]); err != nil {
			return err
		}
		s.tokens[key[len(pfxToken):]] = t
		addWoken(woken, tokensKey)
	case strings.HasPrefix(key, pfxPort):
		service := key[len(pfxPort):]
		var port int
		if err := json.Unmarshal(kv.Value, &port); err != nil {
			return err
		}
		if err := validPort(service, port); err != nil {
			return err
		}
		s.ports[service] = port
	case strings.HasPrefix(key, pfxPortUsed):
		// Written with p/SERVICE, and only so that no port is given
		// twice: kept for that alone.
		port, err := strconv.Atoi(key[len(pfxPortUsed):])
		var service string
		if err == nil {
			err = json.Unmarshal(kv.Value, &service)
		}
		if err == nil {
			err = validPort(service, port)
		}
		if err != nil {
			return err
		}
		s.portUsed[port] = service
	case strings.HasPrefix(key, pfxPolicy):
		realm, service, ok := strings.Cut(key[len(pfxPolicy):], "/")
		if !ok {
			return errors.New("key: must be a/REALM/SERVICE")
		}
		p := sb.Policy{Service: service, Realm: realm}
		if err := json.Unmarshal(kv.Value, &p.MayCall); err != nil {
			return err
		}
		if err := p.Validate(); err != nil {
			return err
		}
		s.policies[key[len(pfxPolicy):]] = p.MayCall
		addWoken(woken, policiesKey)
	}
	return nil
}

// addWoken adds keys to the watch keys a change woke, when they are counted
// (not while loading a snapshot, which wakes everyone).
func addWoken(woken *[]string, keys ...string) {
	if woken != nil {
		*woken = append(*woken, keys...)
	}
}

func (s *state) deleteLocked(key string, index uint64, woken *[]string) {
	delete(s.damaged, key)
	switch {
	case strings.HasPrefix(key, pfxInstance):
		id := key[len(pfxInstance):]
		before := s.visibleLocked(id)
		s.unindexLocked(id)
		delete(s.instances, id)
		s.touchInstanceLocked(id, before, nil, index, woken)
	case strings.HasPrefix(key, pfxSwitch):
		id := key[len(pfxSwitch):]
		before := s.visibleLocked(id)
		delete(s.switches, id)
		s.touchInstanceLocked(id, before, s.visibleLocked(id), index, woken)
	case strings.HasPrefix(key, pfxLayer):
		if lk, ok := parseLayerKey(key); ok {
			delete(s.layers, lk)
			addWoken(woken, layerKey(lk), layersKey)
		}
	case strings.HasPrefix(key, pfxToken):
		delete(s.tokens, key[len(pfxToken):])
		addWoken(woken, tokensKey)
	case strings.HasPrefix(key, pfxPort):
		delete(s.ports, key[len(pfxPort):])
	case strings.HasPrefix(key, pfxPortUsed):
		if port, err := strconv.Atoi(key[len(pfxPortUsed):]); err == nil {
			delete(s.portUsed, port)
		}
	case strings.HasPrefix(key, pfxPolicy):
		delete(s.policies, key[len(pfxPolicy):])
		addWoken(woken, policiesKey)
	}
}

func (s *state) unindexLocked(id string) {
	r := s.instances[id]
	if r == nil {
		return
	}
	name := r.svc.Value()
	svcs := s.byService[name.realm]
	delete(svcs[name.service], id)
	if len(svcs[name.service]) == 0 {
		delete(svcs, name.service)
	}
	if len(svcs) == 0 {
		delete(s.byService, name.realm)
	}
}

func parseLayerKey(key string) (sb.LayerKey, bool) {
	realm, service, ok := strings.Cut(key[len(pfxLayer):], "/")
	return sb.LayerKey{Realm: realm, Service: service}, ok
}

// indexOf returns the index of the answer that depends on keys: the latest
// change to any of them, never below the snapshot's index.
func (s *state) indexOfLocked(keys ...string) uint64 {
	// Never 0: a client blocking with index 0 would not block.
	idx := max(s.floor, 1)
	for _, k := range keys {
		idx = max(idx, s.resLocked(k))
	}
	return idx
}

// setResLocked records index as the last change to key's answer. A live
// instance's is kept in its record rather than in res, which saves an
// entry per instance. A deleted one's is kept nowhere: its answer is a
// 404, which carries no index, and registering it again is a change whose
// index is newer than any before; kept in res, the index of every id that
// ever went would stay there for good.
func (s *state) setResLocked(key string, index uint64) {
	if id, ok := strings.CutPrefix(key, instWatchPfx); ok {
		if r := s.instances[id]; r != nil {
			r.res = index
		}
		return
	}
	s.res[key] = index
}

func (s *state) resLocked(key string) uint64 {
	if r := s.liveRecordLocked(key); r != nil {
		return r.res
	}
	return s.res[key]
}

// liveRecordLocked returns the record of the live instance whose watch key
// is key; nil for other keys and for instances that are gone.
func (s *state) liveRecordLocked(key string) *instRecord {
	if id, ok := strings.CutPrefix(key, instWatchPfx); ok {
		return s.instances[id]
	}
	return nil
}

// waiter is the channel of a watch key and how many wait on it.
type waiter struct {
	ch chan struct{}
	n  int // callers of waitChan that have not released it
}

// waitChan returns a channel closed at the next change of key, and a
// release the caller calls when it no longer waits on it: a key nobody
// waits on has no entry, so that queries naming keys that never change (a
// reader asking about made-up services) leave nothing behind.
func (s *state) waitChan(key string) (<-chan struct{}, func()) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	w := s.waits[key]
	if w == nil {
		w = &waiter{ch: make(chan struct{})}
		s.waits[key] = w
	}
	w.n++
	return w.ch, func() {
		s.wmu.Lock()
		defer s.wmu.Unlock()
		if w.n--; w.n == 0 && s.waits[key] == w {
			delete(s.waits, key)
		}
	}
}

// waitChans is waitChan for several keys, with one release for all.
func (s *state) waitChans(keys []string) ([]<-chan struct{}, func()) {
	chans := make([]<-chan struct{}, len(keys))
	releases := make([]func(), len(keys))
	for i, k := range keys {
		chans[i], releases[i] = s.waitChan(k)
	}
	return chans, func() {
		for _, release := range releases {
			release()
		}
	}
}

// subscribe returns a channel that receives after every change of any of
// keys from now on (a change while the last is not yet received makes no
// second), and the cancel to call when done. An event stream subscribes
// once, where a blocking query takes a channel per key for one wait
// (waitChans): a stream of 50 services that took 50 channels after every
// wake, and waited on them in a reflect.Select, cost Atlas three times the
// CPU per change of one of a single service.
func (s *state) subscribe(keys []string) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	s.wmu.Lock()
	defer s.wmu.Unlock()
	for _, k := range keys {
		set := s.subs[k]
		if set == nil {
			set = make(map[chan struct{}]struct{})
			s.subs[k] = set
		}
		set[ch] = struct{}{}
	}
	return ch, func() {
		s.wmu.Lock()
		defer s.wmu.Unlock()
		for _, k := range keys {
			if set := s.subs[k]; set != nil {
				delete(set, ch)
				if len(set) == 0 {
					delete(s.subs, k)
				}
			}
		}
	}
}

// notifyLocked tells the streams subscribed to key of a change. Call with
// wmu held.
func (s *state) notifyLocked(key string) {
	for ch := range s.subs[key] {
		select {
		case ch <- struct{}{}:
		default: // told already, not yet received
		}
	}
}

// appliedChan returns a channel closed after the next apply.
func (s *state) appliedChan() <-chan struct{} {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.appliedCh
}

func (s *state) wake(keys []string) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	for _, k := range keys {
		if w := s.waits[k]; w != nil {
			close(w.ch)
			delete(s.waits, k)
		}
		s.notifyLocked(k)
	}
	close(s.appliedCh)
	s.appliedCh = make(chan struct{})
}

func (s *state) wakeAll() {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	for k, w := range s.waits {
		close(w.ch)
		delete(s.waits, k)
	}
	for k := range s.subs {
		s.notifyLocked(k)
	}
	close(s.appliedCh)
	s.appliedCh = make(chan struct{})
}

// newRecord makes the record of in, stored at index, without changing in.
// Records share strings (service and realm, tags, meta keys and
// values: one copy each), equal tag lists and equal meta maps (a map of one
// entry costs some 300 bytes): 100,000 instances of a few services
// otherwise hold 100,000 copies of each. Records are never changed in
// place, so sharing is safe. Call with mu held.
func (s *state) newRecord(in *sb.Instance, index uint64) *instRecord {
	return &instRecord{
		index:         index,
		svc:           makeSvcName(in.Realm, in.Service),
		address:       in.Address,
		port:          int32(in.Port), // 1-65535: validated on every write
		tags:          s.sharedTags(in.Tags),
		meta:          s.sharedMeta(in.Meta),
		health:        healthOf(in.Status),
		output:        in.Output,
		ttl:           in.TTL,
		registered:    toNanos(in.RegisteredAt),
		statusChanged: toNanos(in.StatusChangedAt),
	}
}

func (s *state) sharedTags(tags []string) []string {
	if len(tags) == 0 {
		return tags // nil or empty: allocates nothing
	}
	canon := canonical(tags...)
	if t, ok := s.tagLists[canon]; ok {
		return t
	}
	t := make([]string, len(tags))
	for i, tag := range tags {
		t[i] = unique.Make(tag).Value()
	}
	if len(s.tagLists) < maxShared {
		s.tagLists[canon] = t
	}
	return t
}

func (s *state) sharedMeta(meta map[string]string) map[string]string {
	if len(meta) == 0 {
		return meta
	}
	kv := make([]string, 0, 2*len(meta))
	for _, k := range slices.Sorted(maps.Keys(meta)) {
		kv = append(kv, k, meta[k])
	}
	canon := canonical(kv...)
	if m, ok := s.metas[canon]; ok {
		return m
	}
	m := make(map[string]string, len(meta))
	for k, v := range meta {
		m[unique.Make(k).Value()] = unique.Make(v).Value()
	}
	if len(s.metas) < maxShared {
		s.metas[canon] = m
	}
	return m
}

// canonical names a list of strings unambiguously (each prefixed with its
// length: tags and meta may hold any byte, a separator included).
func canonical(parts ...string) string {
	var b strings.Builder
	for _, p := range parts {
		b.WriteString(strconv.Itoa(len(p)))
		b.WriteByte(':')
		b.WriteString(p)
	}
	return b.String()
}

// maxShared bounds the shared tag lists and meta maps, each (they are not
// dropped when their instances go, until the next snapshot).
const maxShared = 4096

package haproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/balance"
)

// MinReloadInterval is the least time between two reloads.
var MinReloadInterval = 2 * time.Second

// Driver owns one HAProxy: it starts it, keeps its config and servers in
// step with the pools, restarts it if it dies, and stops it.
type Driver struct {
	// Binary is the haproxy executable. Default "haproxy".
	Binary string
	// Dir holds haproxy.cfg, rejected candidates and the sockets. Required.
	Dir string
	// Listen is the shared HTTP frontend. Required.
	Listen string
	// Fallback is the sidecar's built-in frontend. Required.
	Fallback string
	// Realm is named in HAProxy's error answers.
	Realm string
	// TCP maps L4 upstreams to their listen addresses.
	TCP map[string]string
	// Logger; nil discards.
	Logger *slog.Logger

	reloads, refused, failed, commands, restarts atomic.Int64
	// loaded, while a reload waits for its worker, gets the master's
	// verdict from its log: "Loading failure!" ends the wait at once.
	loaded atomic.Pointer[chan struct{}]
	// reloading, likewise, hears HAProxy's master take a reload signal.
	reloading atomic.Pointer[chan struct{}]

	// mu guards everything below.
	mu       sync.Mutex
	backends map[string]*backendState // key "http/NAME" or "tcp/NAME"
	// removed holds the backends Remove dropped that the config HAProxy
	// runs still has: one asked for again before the reload takes its
	// state back, for HAProxy routes with its slots meanwhile.
	removed    map[string]*backendState
	shape      string // of the config HAProxy runs
	lua        string // Spec.Lua
	exporter   bool   // Spec.Exporter
	lastReload time.Time
	reloadDue  *time.Timer
	retryIn    time.Duration // before the next try of a failed reload
	// retrying: the next reload is a retry of one that failed, not asked
	// for by a change; bound holds the L4 listen addresses of the config
	// HAProxy runs.
	retrying bool
	bound    map[string]bool
	cmd      *exec.Cmd
	exited   chan struct{}
	stopping bool
	// served holds, per backend, when the worker a reload replaced last
	// gave it a request: a new worker's counters start again, and Called
	// must still name what the old one served.
	served map[string]time.Time
	// counted holds, per backend, what each slot had served at the last
	// look (Outcomes) and for which instance, as counted by the worker
	// countedBy.
	counted   map[string][]slotCount
	countedBy int
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
}

// backendState is what one backend's slots hold: the desired slots, and
// what HAProxy has applied.
type backendState struct {
	service string
	tcp     bool
	ids     []string    // instance id per slot; "" free
	freed   []time.Time // per slot, when its instance left (zero: never held one, or none since a reload)
	// quiet is, per slot, when a look at HAProxy's counters (Outcomes)
	// first found no session open on it since its instance left (zero:
	// not yet).
	quiet   []time.Time
	last    []string // per slot, the address it held last
	want    []Slot   // desired
	applied []Slot   // in HAProxy now
	// ips is the address each DNS name among its instances' hosts
	// resolved to at the last update (replaced whole, never changed).
	ips map[string]string
}

// SlotRest is how long a slot rests, after its instance leaves, before an
// instance at another address takes it while other slots are free; and it
// must have had no session open for quietFor (Outcomes looks). A
// connection to the old instance that was in use when the slot went to
// maintenance returns to the slot's idle pool once its request is done,
// and HAProxy 2.6 would reuse it for the slot's next address; in
// maintenance, HAProxy closes it within a pool-purge-delay or two (1 s,
// render.go). (A slot taken while a request longer than the rest was still
// running sent the new instance's requests to the old one, on that
// connection, until the old one closed it.) A reload gives every free slot
// a clean start: the new worker has no connection to any old instance. An
// instance back at the same address takes its old slot at once; when only
// resting slots are free, the quiet one that rested longest is taken (else
// the one that rested longest) rather than reload.
var SlotRest = 5 * time.Second

// quietFor is how long a resting slot must have had no session open before
// an instance at another address takes it: two pool-purge-delays.
const quietFor = 2 * time.Second

func (d *Driver) log() *slog.Logger {
	if d.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return d.Logger
}

func (d *Driver) cfgPath() string    { return filepath.Join(d.Dir, "haproxy.cfg") }
func (d *Driver) adminSock() string  { return filepath.Join(d.Dir, "admin.sock") }
func (d *Driver) masterSock() string { return filepath.Join(d.Dir, "master.sock") }

// Reloads, RefusedConfigs, FailedReloads, RuntimeCommands and Restarts are
// counters for metrics.
func (d *Driver) Reloads() int64         { return d.reloads.Load() }
func (d *Driver) RefusedConfigs() int64  { return d.refused.Load() }
func (d *Driver) FailedReloads() int64   { return d.failed.Load() }
func (d *Driver) RuntimeCommands() int64 { return d.commands.Load() }
func (d *Driver) Restarts() int64        { return d.restarts.Load() }

// features reads `haproxy -vv` once: whether binary was built with Lua
// (+LUA among its features; distributions' packages mostly are), and
// whether it has the Prometheus exporter (the prometheus-exporter
// service; Debian's has).
func features(binary string) (lua, exporter bool) {
	out, err := exec.Command(binary, "-vv").Output()
	if err != nil {
		return false, false
	}
	lua = bytes.Contains(out, []byte("+LUA")) || bytes.Contains(out, []byte("USE_LUA=1"))
	return lua, bytes.Contains(out, []byte("prometheus-exporter"))
}

// CheckVersion runs `haproxy -v` and refuses versions before 2.4.
func CheckVersion(binary string) (string, error) {
	out, err := exec.Command(binary, "-v").Output()
	if err != nil {
		return "", fmt.Errorf("haproxy: %s -v: %w", binary, err)
	}
	m := regexp.MustCompile(`version (\d+)\.(\d+)`).FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("haproxy: cannot read the version of %s", binary)
	}
	major, _ := strconv.Atoi(string(m[1]))
	minor, _ := strconv.Atoi(string(m[2]))
	v := fmt.Sprintf("%d.%d", major, minor)
	if major < 2 || major == 2 && minor < 4 {
		return v, fmt.Errorf("haproxy: %s is version %s; Switchboard needs 2.4 or later", binary, v)
	}
	return v, nil
}

// Start writes the first config and starts HAProxy in master-worker mode.
func (d *Driver) Start() error {
	if d.Binary == "" {
		d.Binary = "haproxy"
	}
	if _, err := CheckVersion(d.Binary); err != nil {
		return err
	}
	// HAProxy reads a socket path without a leading / as an address.
	dir, err := filepath.Abs(d.Dir)
	if err != nil {
		return fmt.Errorf("haproxy: dir: %w", err)
	}
	d.Dir = dir
	if err := os.MkdirAll(d.Dir, 0o700); err != nil {
		return fmt.Errorf("haproxy: dir: %w", err)
	}
	lua, exporter := features(d.Binary)
	d.exporter = exporter
	if lua {
		d.lua = filepath.Join(d.Dir, luaFile)      // written with each config
		os.Remove(filepath.Join(d.Dir, "hop.lua")) // what earlier versions wrote
	} else {
		d.log().Warn("haproxy: built without Lua: the headers that a Connection header names go on to instances and callers (the built-in proxy removes them), and requests that carry Switchboard-Timeout go through the built-in proxy", "binary", d.Binary)
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.mu.Lock()
	defer d.mu.Unlock()
	d.backends = map[string]*backendState{}
	for svc := range d.TCP {
		b := &backendState{service: svc, tcp: true}
		b.grow(8)
		d.backends["tcp/"+svc] = b
	}
	spec := d.specLocked()
	if err := d.writeCheckedLocked(spec); err != nil {
		return err
	}
	d.shape = spec.Shape()
	d.markAppliedLocked()
	// A HAProxy left by a sidecar that died without stopping it (kill -9,
	// a panic) still answers on the master socket, and shares the listen
	// addresses with the one started now (SO_REUSEPORT): it would take
	// part of the calls, with routes that no longer follow Atlas. Once the
	// new one listens, the old one is stopped softly: calls in progress
	// finish, and no call is refused in between.
	leftover := d.leftoverMaster()
	if err := d.startLocked(); err != nil {
		return err
	}
	d.boundLocked(spec)
	if leftover > 0 {
		d.log().Warn("haproxy: stopping the HAProxy a previous sidecar left running", "pid", leftover)
		if err := syscall.Kill(leftover, syscall.SIGUSR1); err != nil {
			d.log().Error("haproxy: the HAProxy a previous sidecar left running could not be stopped; it shares the listen address with routes that no longer follow", "pid", leftover, "err", err)
		}
	}
	d.wg.Add(1)
	go d.supervise()
	return nil
}

// leftoverMaster returns the pid of a HAProxy master answering on the
// master socket in Dir, before this driver starts its own; 0 when none.
func (d *Driver) leftoverMaster() int {
	out, err := d.MasterCLI("show proc")
	if err != nil {
		return 0
	}
	return masterPID(out)
}

// specLocked builds the Spec of the desired state.
func (d *Driver) specLocked() Spec {
	spec := Spec{Listen: d.Listen, Dir: d.Dir, Realm: d.Realm, Fallback: d.Fallback, Lua: d.lua, Exporter: d.exporter}
	for _, b := range d.backends {
		if b.tcp {
			spec.TCP = append(spec.TCP, TCPFrontend{Backend: Backend{Service: b.service, Slots: b.want}, Listen: d.TCP[b.service]})
		} else {
			spec.HTTP = append(spec.HTTP, Backend{Service: b.service, Slots: b.want})
		}
	}
	return spec
}

func (d *Driver) markAppliedLocked() {
	for _, b := range d.backends {
		b.applied = append([]Slot(nil), b.want...)
	}
	d.removed = nil
}

// errRefused is the error of a config haproxy -c refused: the same config
// is refused again, so a reload that failed with it is not retried.
var errRefused = errors.New("the new config was refused")

// writeCheckedLocked renders spec to a candidate file, has `haproxy -c`
// check it, and moves it into place; a refused candidate is kept as
// haproxy.cfg.rejected and the running config stays.
func (d *Driver) writeCheckedLocked(spec Spec) error {
	text, err := Render(spec)
	if err != nil {
		return err
	}
	if spec.Lua != "" {
		if err := writeLua(spec.Lua); err != nil {
			return err
		}
	}
	cand := d.cfgPath() + ".new"
	if err := os.WriteFile(cand, []byte(text), 0o600); err != nil {
		return fmt.Errorf("haproxy: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Not -q: it silences the alerts that say why a config is refused.
	out, err := exec.CommandContext(ctx, d.Binary, "-c", "-f", cand).CombinedOutput()
	var exit *exec.ExitError
	if err != nil && (!errors.As(err, &exit) || ctx.Err() != nil) {
		// The check did not run to its verdict (it timed out on a busy
		// host, or could not start): no refusal, and worth a retry.
		_ = os.Remove(cand)
		return fmt.Errorf("haproxy: checking the new config (haproxy -c): %w", err)
	}
	if err != nil {
		d.refused.Add(1)
		rej := d.cfgPath() + ".rejected"
		_ = os.Rename(cand, rej)
		return fmt.Errorf("haproxy: %w (kept as %s; the running config stays): %v: %s", errRefused, rej, err, alerts(out))
	}
	return os.Rename(cand, d.cfgPath())
}

// alerts returns the [ALERT] lines of HAProxy's output, without their
// prefix and joined by "; " (all of it when it has none).
func alerts(out []byte) string {
	var said []string
	for line := range strings.Lines(string(out)) {
		if _, msg, ok := strings.Cut(line, "[ALERT]"); ok {
			if _, rest, ok := strings.Cut(msg, ") : "); ok {
				msg = rest
			}
			said = append(said, strings.TrimSpace(msg))
		}
	}
	if len(said) == 0 {
		return strings.TrimSpace(string(out))
	}
	return strings.Join(said, "; ")
}

func (d *Driver) startLocked() error {
	_ = os.Remove(d.adminSock())
	_ = os.Remove(d.masterSock())
	cmd := exec.Command(d.Binary, "-W", "-db", "-f", d.cfgPath(), "-S", d.masterSock()+",mode,600")
	cmd.Stdout = logWriter{d.log(), "haproxy", d.heard}
	cmd.Stderr = logWriter{d.log(), "haproxy", d.heard}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("haproxy: start: %w", err)
	}
	d.cmd = cmd
	exited := make(chan struct{})
	d.exited = exited
	go func() { cmd.Wait(); close(exited) }()
	// Wait for the worker's admin socket, and for the master's CLI: a
	// master whose loop does not run yet may leave a reload signalled at
	// once unanswered (seen once in CI: a SIGUSR2 sent right after the
	// start brought no new worker).
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := d.workerPID(); err == nil {
			if _, err := d.MasterCLI("show proc"); err == nil {
				return nil
			}
		}
		select {
		case <-exited:
			return fmt.Errorf("haproxy: exited at start (see the sidecar's log)")
		case <-time.After(20 * time.Millisecond):
		}
	}
	// Not left running: it would hold the listen address.
	_ = cmd.Process.Kill()
	<-exited
	return fmt.Errorf("haproxy: the admin socket did not answer within 10s")
}

// workerPID asks the worker (through the admin socket) for its pid.
func (d *Driver) workerPID() (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	out, err := runtimeAPI{d.adminSock()}.send(ctx, "show info")
	if err != nil {
		return 0, err
	}
	return infoPID(out)
}

// MasterCLI sends one command to the master CLI (e.g. "show proc"); the
// master keeps the connection open unless told to quit.
func (d *Driver) MasterCLI(cmd string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return runtimeAPI{d.masterSock()}.send(ctx, cmd+"; quit")
}

// MasterReloads is the master's own count of reloads ("show proc").
func (d *Driver) MasterReloads() (int, error) {
	out, err := d.MasterCLI("show proc")
	if err != nil {
		return 0, err
	}
	return masterReloads(out)
}

// supervise restarts HAProxy when it exits on its own.
func (d *Driver) supervise() {
	defer d.wg.Done()
	backoff := 200 * time.Millisecond
	for {
		d.mu.Lock()
		exited := d.exited
		d.mu.Unlock()
		select {
		case <-d.ctx.Done():
			return
		case <-exited:
		}
		d.mu.Lock()
		if d.stopping {
			d.mu.Unlock()
			return
		}
		d.log().Error("haproxy: exited; restarting it", "in", backoff)
		d.mu.Unlock()
		select {
		case <-d.ctx.Done():
			return
		case <-time.After(backoff):
		}
		d.mu.Lock()
		if d.stopping { // Close came during the backoff
			d.mu.Unlock()
			return
		}
		spec := d.specLocked()
		err := d.writeCheckedLocked(spec)
		if err == nil {
			d.shape = spec.Shape()
			d.markAppliedLocked()
			if err = d.startLocked(); err == nil {
				d.boundLocked(spec)
			}
		}
		d.mu.Unlock()
		if err != nil {
			d.log().Error("haproxy: restart failed", "err", err)
			backoff = min(2*backoff, 10*time.Second)
			continue
		}
		d.restarts.Add(1)
		backoff = 200 * time.Millisecond
	}
}

// Close stops HAProxy (a soft stop: connections in progress finish, 10 s
// at most).
func (d *Driver) Close() error {
	d.mu.Lock()
	d.stopping = true
	if d.reloadDue != nil {
		d.reloadDue.Stop()
	}
	d.mu.Unlock()
	if d.cancel != nil {
		d.cancel()
	}
	d.wg.Wait()
	// Read after the supervisor stopped: it may have started a new
	// HAProxy meanwhile.
	d.mu.Lock()
	cmd, exited := d.cmd, d.exited
	d.mu.Unlock()
	if cmd == nil {
		return nil
	}
	// Soft stop, asked again every half second: a master in the middle of
	// a reload (re-executing itself) misses the signal.
	deadline := time.After(10 * time.Second)
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		_ = cmd.Process.Signal(syscall.SIGUSR1)
		select {
		case <-exited:
			return nil
		case <-tick.C:
		case <-deadline:
			_ = cmd.Process.Kill()
			<-exited
			return nil
		}
	}
}

// lookupIP resolves an instance's DNS name; a variable so that a test can
// make it fail or hang.
var lookupIP = net.DefaultResolver.LookupIPAddr

// resolveTimeout bounds the resolution of an update's DNS names.
const resolveTimeout = 2 * time.Second

// resolve returns the address of each DNS name among eps' hosts. HAProxy's
// servers take addresses, so names are resolved here, each time a
// service's instances change (HAProxy itself resolves a server's name once,
// at its start), all at once and for at most resolveTimeout. A name that
// fails to resolve keeps the address it had in last, the service's
// previous answer; one never resolved is missing from the map.
func (d *Driver) resolve(eps []*balance.Endpoint, last map[string]string) map[string]string {
	var hosts []string
	seen := map[string]bool{}
	for _, e := range eps {
		if host, _, err := net.SplitHostPort(e.Addr); err == nil && net.ParseIP(host) == nil && !seen[host] {
			seen[host] = true
			hosts = append(hosts, host)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
	defer cancel()
	addrs := make([]string, len(hosts)) // "": left out
	var wg sync.WaitGroup
	for i, host := range hosts {
		wg.Go(func() {
			ips, err := lookupIP(ctx, host)
			switch ip, ok := last[host]; {
			case err == nil && len(ips) > 0:
				addrs[i] = ips[0].IP.String()
			case ok:
				d.log().Warn("haproxy: resolving an instance's name failed; its last address stays", "host", host, "address", ip, "err", err)
				addrs[i] = ip
			default:
				d.log().Warn("haproxy: resolving an instance's name failed; its instances are left out", "host", host, "err", err)
			}
		})
	}
	wg.Wait()
	resolved := make(map[string]string, len(hosts))
	for i, host := range hosts {
		if addrs[i] != "" {
			resolved[host] = addrs[i]
		}
	}
	return resolved
}

// slotOf describes an endpoint as a slot; choosable tells the endpoints
// the built-in proxy would choose among (balance.Choosable), and ips holds
// the address of each DNS name (resolve).
func slotOf(e *balance.Endpoint, choosable func(*balance.Endpoint) bool, ips map[string]string) (Slot, error) {
	host, port, err := net.SplitHostPort(e.Addr)
	if err != nil {
		return Slot{}, err
	}
	if net.ParseIP(host) == nil {
		ip, ok := ips[host]
		if !ok {
			return Slot{}, fmt.Errorf("%s does not resolve", host)
		}
		host = ip
	}
	info := e.Info()
	s := Slot{Addr: net.JoinHostPort(host, port), Weight: 100, Ready: info.Enabled && info.Status != sb.Critical}
	// Warning instances take new requests only when no passing one is
	// left, and ejected ones (outlier ejection) only when every one of
	// their tier is ejected, as in the built-in proxy.
	if !choosable(e) {
		s.Weight = 0
	}
	return s, nil
}

// Update sets the instances of an HTTP service (or an L4 upstream when
// tcp). Changes of membership and status go through the Runtime API; a new
// backend, or more instances than slots, reloads HAProxy (at most once per
// MinReloadInterval).
func (d *Driver) Update(service string, tcp bool, eps []*balance.Endpoint) {
	// The slots first, outside the lock: resolving a DNS name may take a
	// while, and must not hold up the other services' updates.
	choosable := balance.Choosable(eps, time.Now())
	key := "http/" + service
	if tcp {
		key = "tcp/" + service
	}
	var last map[string]string
	d.mu.Lock()
	if b := d.backends[key]; b != nil {
		last = b.ips
	} else if b := d.removed[key]; b != nil {
		last = b.ips
	}
	d.mu.Unlock()
	ips := d.resolve(eps, last)
	wanted := map[string]Slot{}
	for _, e := range eps {
		s, err := slotOf(e, choosable, ips)
		if err != nil {
			d.log().Warn("haproxy: instance left out", "service", service, "id", e.ID, "err", err)
			continue
		}
		wanted[e.ID] = s
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopping {
		return
	}
	b := d.backends[key]
	if b == nil {
		if !tcp && len(eps) == 0 {
			// No backend (and no reload) for a service with no instance:
			// a typo in a Host header, a service not deployed yet. The
			// sidecar's own frontend answers for it.
			return
		}
		// Removed, but HAProxy still has it (the reload is still to
		// come): what its slots hold is known, and they follow at once.
		// A fresh state would wait for a reload that, the shape being
		// the same again, never comes.
		if b = d.removed[key]; b != nil {
			delete(d.removed, key)
		} else {
			b = &backendState{service: service, tcp: tcp}
		}
		d.backends[key] = b
	}
	b.ips = ips
	// Keep every instance in its slot; free the slots of those gone.
	now := time.Now()
	for i, id := range b.ids {
		if s, ok := wanted[id]; ok && b.want[i].Addr == s.Addr {
			b.want[i] = s
			delete(wanted, id)
			continue
		}
		if id != "" {
			b.freed[i], b.last[i], b.quiet[i] = now, b.want[i].Addr, time.Time{}
		}
		b.ids[i], b.want[i] = "", Slot{}
	}
	// Too few free slots takes a reload to grow, and the new slots get
	// their instances with it: then no resting slot is needed. Otherwise a
	// resting slot is taken rather than reload (a service whose instances
	// are all replaced twice within SlotRest would have none routable
	// until the reload).
	if free := b.free(); free < len(wanted) {
		b.grow(slotsFor(len(b.ids) + len(wanted)))
	}
	for id, s := range wanted {
		i := b.freeSlot(s.Addr, now)
		b.ids[i], b.want[i] = id, s
	}
	b.grow(8)
	d.applyLocked()
}

// Remove drops an HTTP service's backend: the sidecar stopped following
// the service. It leaves at the next reload (at most MinReloadInterval
// away), and routes to its last instances until then; a call after it goes
// to the sidecar's own frontend, which follows the service again.
func (d *Driver) Remove(service string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	b := d.backends["http/"+service]
	if d.stopping || b == nil {
		return
	}
	if len(b.applied) != 0 {
		if d.removed == nil {
			d.removed = map[string]*backendState{}
		}
		d.removed["http/"+service] = b
	}
	delete(d.backends, "http/"+service)
	delete(d.served, "be_"+service)
	d.applyLocked()
}

// Called returns the HTTP services HAProxy gave a request to within the
// last `within` (whole seconds, rounded up: HAProxy counts in seconds),
// which the sidecar's own frontend never sees.
func (d *Driver) Called(ctx context.Context, within time.Duration) ([]string, error) {
	last, err := runtimeAPI{d.adminSock()}.lastSessions(ctx)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	at := servedAt(last, now)
	// And what workers replaced by reloads served.
	d.mu.Lock()
	for px, t := range d.served {
		if t.After(at[px]) {
			at[px] = t
		}
	}
	d.mu.Unlock()
	limit := time.Duration((within+time.Second-1)/time.Second) * time.Second
	var names []string
	for px, t := range at {
		if service, ok := strings.CutPrefix(px, "be_"); ok && now.Sub(t) <= limit {
			names = append(names, service)
		}
	}
	return names, nil
}

// Gather reads HAProxy's own metrics of its backends (its Prometheus
// exporter's scope=backend: requests, answers by class, errors, retries,
// times; the label proxy is be_SERVICE, tcpbe_SERVICE or
// fallback_sidecar), for the sidecar's /metrics. A HAProxy built without
// the exporter gives none, and no error.
func (d *Driver) Gather() ([]*dto.MetricFamily, error) {
	if !d.exporter {
		return nil, nil
	}
	sock := filepath.Join(d.Dir, "prom.sock") // no longer than admin.sock: HAProxy takes 97 bytes at most
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", sock)
		},
	}}
	res, err := c.Get("http://haproxy/metrics?scope=backend")
	if err != nil {
		return nil, fmt.Errorf("haproxy: metrics: %w", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("haproxy: metrics: %s", res.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	byName, err := p.TextToMetricFamilies(io.LimitReader(res.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("haproxy: metrics: %w", err)
	}
	fams := make([]*dto.MetricFamily, 0, len(byName))
	for _, f := range byName {
		fams = append(fams, f)
	}
	return fams, nil
}

// slotCount is what a slot had served at the last look, and for which
// instance.
type slotCount struct {
	id string
	Outcomes
}

// Outcomes returns, per service and instance id, the requests HAProxy
// answered and failed since the last call (Outcomes says how it counts),
// HTTP and L4 together; an instance that has none is left out. A slot
// given to another instance since counts from this call on, and so does
// every slot after HAProxy's worker changed otherwise than by a reload
// (a restart: the counters start again).
func (d *Driver) Outcomes(ctx context.Context) (map[string]map[string]Outcomes, error) {
	// Read under the lock, as the Runtime API's changes are made: a slot
	// given to another instance meanwhile would count for the wrong one.
	d.mu.Lock()
	defer d.mu.Unlock()
	pid, stats, idle, err := runtimeAPI{d.adminSock()}.serverStats(ctx)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	if pid != d.countedBy {
		d.counted, d.countedBy = nil, pid
	}
	last := d.counted
	d.counted = make(map[string][]slotCount, len(d.backends))
	out := map[string]map[string]Outcomes{}
	for key, b := range d.backends {
		px := b.proxy()
		counts := make([]slotCount, len(b.ids))
		for i, id := range b.ids {
			sv := fmt.Sprintf("s%d", i)
			if id == "" {
				// A free slot that held an instance, found with no
				// session open (freeSlot).
				if !b.freed[i].IsZero() && b.quiet[i].IsZero() && idle[px][sv] {
					b.quiet[i] = now
				}
				continue
			}
			c, ok := stats[px][sv]
			if !ok {
				continue
			}
			counts[i] = slotCount{id: id, Outcomes: c}
			prev := last[key]
			if i >= len(prev) || prev[i].id != id || c.Answered < prev[i].Answered || c.Failed < prev[i].Failed {
				continue // a new instance in the slot, or new counters
			}
			delta := Outcomes{Answered: c.Answered - prev[i].Answered, Failed: c.Failed - prev[i].Failed}
			if delta == (Outcomes{}) {
				continue
			}
			if out[b.service] == nil {
				out[b.service] = map[string]Outcomes{}
			}
			sum := out[b.service][id]
			sum.Answered += delta.Answered
			sum.Failed += delta.Failed
			out[b.service][id] = sum
		}
		d.counted[key] = counts
	}
	return out, nil
}

// countFromZeroLocked makes the counters of worker pid, new from a reload,
// the baseline of the next Outcomes: they started at zero with the slots
// as they are now (nothing changed them while the reload held d.mu), so
// a reload, which may come every MinReloadInterval, costs ejection no
// look.
func (d *Driver) countFromZeroLocked(pid int) {
	d.counted = make(map[string][]slotCount, len(d.backends))
	for key, b := range d.backends {
		counts := make([]slotCount, len(b.ids))
		for i, id := range b.ids {
			counts[i].id = id
		}
		d.counted[key] = counts
	}
	d.countedBy = pid
}

// noteServedLocked records when the running worker last gave each backend
// a request, before a reload replaces it.
func (d *Driver) noteServedLocked() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	last, err := runtimeAPI{d.adminSock()}.lastSessions(ctx)
	if err != nil {
		return
	}
	if d.served == nil {
		d.served = map[string]time.Time{}
	}
	for px, t := range servedAt(last, time.Now()) {
		if t.After(d.served[px]) {
			d.served[px] = t
		}
	}
}

// servedAt turns show stat's seconds since each backend's last request
// into times; a backend never given one is left out, and so is one whose
// seconds a Duration cannot hold (292 years): multiplied, they would wrap
// to a time in the future, which Called counts as just now.
func servedAt(last map[string]int, now time.Time) map[string]time.Time {
	at := make(map[string]time.Time, len(last))
	for px, secs := range last {
		if secs >= 0 && int64(secs) <= math.MaxInt64/int64(time.Second) {
			at[px] = now.Add(-time.Duration(secs) * time.Second)
		}
	}
	return at
}

// proxy is the name of b's backend in HAProxy's config.
func (b *backendState) proxy() string {
	if b.tcp {
		return "tcpbe_" + b.service
	}
	return "be_" + b.service
}

// free counts b's free slots.
func (b *backendState) free() int {
	n := 0
	for _, id := range b.ids {
		if id == "" {
			n++
		}
	}
	return n
}

// freeSlot returns a free slot for an instance at addr: the one that last
// held addr; else one that never held an instance or has rested
// (SlotRest); else the one that has rested longest; -1 when none is free.
func (b *backendState) freeSlot(addr string, now time.Time) int {
	rested, resting := -1, -1
	quiet := func(i int) bool { return !b.quiet[i].IsZero() && now.Sub(b.quiet[i]) >= quietFor }
	for i, id := range b.ids {
		switch {
		case id != "":
		case b.last[i] == addr:
			return i
		case b.freed[i].IsZero() || now.Sub(b.freed[i]) >= SlotRest && quiet(i):
			if rested < 0 {
				rested = i
			}
		case resting < 0 || quiet(i) && !quiet(resting) ||
			quiet(i) == quiet(resting) && b.freed[i].Before(b.freed[resting]):
			resting = i
		}
	}
	if rested >= 0 {
		return rested
	}
	return resting
}

// cleanSlotsLocked forgets, after a reload, that the free slots held
// instances: the new worker has no connection to any.
func (d *Driver) cleanSlotsLocked() {
	for _, b := range d.backends {
		for i, id := range b.ids {
			if id == "" {
				b.freed[i], b.quiet[i] = time.Time{}, time.Time{}
			}
		}
	}
}

// grow makes b at least n slots long.
func (b *backendState) grow(n int) {
	if len(b.ids) >= n {
		return
	}
	b.ids = append(b.ids, make([]string, n-len(b.ids))...)
	b.freed = append(b.freed, make([]time.Time, n-len(b.freed))...)
	b.quiet = append(b.quiet, make([]time.Time, n-len(b.quiet))...)
	b.last = append(b.last, make([]string, n-len(b.last))...)
	b.want = append(b.want, make([]Slot, n-len(b.want))...)
}

// slotsFor is the slot count for n instances: twice as many, a power of
// two, at least 8.
func slotsFor(n int) int {
	s := 8
	for s < 2*n {
		s *= 2
	}
	return s
}

// applyLocked brings HAProxy to the desired state: a reload when the shape
// changed (now or, rate-limited, later), runtime commands otherwise.
func (d *Driver) applyLocked() {
	spec := d.specLocked()
	if spec.Shape() != d.shape {
		wait := time.Until(d.lastReload.Add(MinReloadInterval))
		if wait > 0 {
			d.applyLaterLocked(wait)
			// Meanwhile the backends HAProxy has can still follow.
			d.runtimeLocked(true)
			return
		}
		if d.retrying {
			// A try that fails pauses HAProxy's listeners for about 2 s:
			// every new connection is refused meanwhile, for every
			// service. Not tried again while what made it fail (an L4
			// listen address another process holds) is still there.
			d.retrying = false
			if err := d.heldLocked(spec); err != nil {
				d.log().Warn("haproxy: not retrying the failed reload yet", "err", err, "retry_in", d.retryReloadLocked(err))
				d.runtimeLocked(true)
				return
			}
		}
		if err := d.reloadLocked(spec); err != nil {
			d.log().Error("haproxy: reload failed; routing stays as it was", "err", err, "retry_in", d.retryReloadLocked(err))
			d.runtimeLocked(true)
		}
		return
	}
	d.runtimeLocked(false)
}

// retryReloadLocked schedules another try of a reload that failed with
// err, so that HAProxy does not run the old config until the next change
// of routes, which may be hours away; the wait doubles from 2 s to a
// minute while reloads keep failing. It returns the wait, 0 for a config
// haproxy -c refused (the next change tries again).
func (d *Driver) retryReloadLocked(err error) time.Duration {
	if errors.Is(err, errRefused) {
		return 0
	}
	d.retryIn = min(max(2*d.retryIn, 2*time.Second), time.Minute)
	d.retrying = true
	d.applyLaterLocked(d.retryIn)
	return d.retryIn
}

// boundLocked records the L4 listen addresses of spec, which HAProxy runs.
func (d *Driver) boundLocked(spec Spec) {
	d.bound = map[string]bool{}
	for _, f := range spec.TCP {
		d.bound[f.Listen] = true
	}
}

// heldLocked reports an L4 listen address of spec that HAProxy does not
// hold yet and that cannot be bound now: a reload would fail on it.
func (d *Driver) heldLocked(spec Spec) error {
	for _, f := range spec.TCP {
		if f.Listen == "" || d.bound[f.Listen] {
			continue
		}
		ln, err := net.Listen("tcp", f.Listen)
		if err != nil {
			return fmt.Errorf("haproxy: the listen address of %s is still taken: %w", f.Service, err)
		}
		ln.Close()
	}
	return nil
}

// applyLaterLocked calls applyLocked after wait, unless a call is due
// already.
func (d *Driver) applyLaterLocked(wait time.Duration) {
	if d.reloadDue != nil {
		return
	}
	d.reloadDue = time.AfterFunc(wait, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		d.reloadDue = nil
		if !d.stopping {
			d.applyLocked()
		}
	})
}

// runtimeLocked sends the commands that bring each backend's servers from
// applied to want. With onlyLoaded, a backend whose slot count differs
// from the running config gets only the slots HAProxy has: an instance
// removed from one of them leaves rotation now, not at the reload (which
// may be seconds away, or refused); the slots to come wait for it.
func (d *Driver) runtimeLocked(onlyLoaded bool) {
	var cmds []string
	type change struct {
		b    *backendState
		next []Slot // applied after the commands
	}
	var touched []change
	for _, b := range d.backends {
		if len(b.applied) == 0 && len(b.want) != 0 {
			continue // not in HAProxy yet: the reload brings it
		}
		want := b.want
		if onlyLoaded && len(b.applied) != len(b.want) {
			want = make([]Slot, len(b.applied)) // free unless wanted
			copy(want, b.want)
		}
		name := b.proxy()
		n := len(cmds)
		for i := range want {
			var old Slot
			if i < len(b.applied) {
				old = b.applied[i]
			}
			cmds = append(cmds, slotCommands(name, i, old, want[i])...)
		}
		if len(cmds) > n {
			touched = append(touched, change{b, want})
		}
	}
	if len(cmds) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d.commands.Add(int64(len(cmds)))
	if err := (runtimeAPI{d.adminSock()}).run(ctx, cmds); err != nil {
		d.log().Error("haproxy: runtime API failed; reloading to get back in step", "err", err)
		d.shape = "" // force a reload on the next change
		if rerr := d.reloadLocked(d.specLocked()); rerr != nil {
			d.log().Error("haproxy: reload failed", "err", rerr, "retry_in", d.retryReloadLocked(rerr))
		}
		return
	}
	for _, c := range touched {
		c.b.applied = append([]Slot(nil), c.next...)
	}
}

// slotCommands are the Runtime API commands that turn slot i from old into
// new: out of rotation first, then the new address and weight, then back.
func slotCommands(backend string, i int, old, new Slot) []string {
	if old == new {
		return nil
	}
	srv := fmt.Sprintf("%s/s%d", backend, i)
	var cmds []string
	if new.Addr == "" {
		if old.Ready || old.Addr != "" {
			cmds = append(cmds, "set server "+srv+" state maint")
		}
		return cmds
	}
	if old.Addr != new.Addr {
		host, port, _ := net.SplitHostPort(new.Addr)
		if old.Ready {
			cmds = append(cmds, "set server "+srv+" state maint")
		}
		cmds = append(cmds, fmt.Sprintf("set server %s addr %s port %s", srv, host, port))
		old.Ready = false
	}
	if old.Weight != new.Weight || old.Addr != new.Addr {
		cmds = append(cmds, fmt.Sprintf("set server %s weight %d", srv, new.Weight))
	}
	if old.Ready != new.Ready {
		state := "maint"
		if new.Ready {
			state = "ready"
		}
		cmds = append(cmds, "set server "+srv+" state "+state)
	}
	return cmds
}

// reloadLocked writes and checks the config, then reloads HAProxy
// seamlessly (SIGUSR2 to the master; listeners pass to the new worker),
// waits for the new worker, and applies what changed since the render.
func (d *Driver) reloadLocked(spec Spec) error {
	if err := d.writeCheckedLocked(spec); err != nil {
		return err
	}
	before, _ := d.workerPID()
	d.noteServedLocked()
	failed, taken := make(chan struct{}, 1), make(chan struct{}, 1)
	d.loaded.Store(&failed)
	defer d.loaded.Store(nil)
	d.reloading.Store(&taken)
	defer d.reloading.Store(nil)
	if err := reloadSignal(d.cmd.Process); err != nil {
		return fmt.Errorf("haproxy: reload: %w", err)
	}
	d.lastReload = time.Now()
	d.reloads.Add(1)
	d.shape = spec.Shape()
	// What the old worker has, should it stay: the slots it loaded then
	// follow by runtime commands (runtimeLocked(true)), and backends it
	// lacks get none.
	prevApplied := make(map[*backendState][]Slot, len(d.backends))
	for _, b := range d.backends {
		prevApplied[b] = b.applied
	}
	prevRemoved := d.removed
	d.markAppliedLocked()
	loaded := false
	defer func() {
		if !loaded {
			for b, applied := range prevApplied {
				b.applied = applied
			}
			d.removed = prevRemoved
		}
	}()
	signalled, heard := time.Now(), false
	deadline := time.Now().Add(10 * time.Second)
wait:
	for time.Now().Before(deadline) {
		if pid, err := d.workerPID(); err == nil && pid != before {
			loaded = true
			d.cleanSlotsLocked()
			d.log().Info("haproxy: reloaded", "worker", pid)
			d.retryIn = 0
			d.boundLocked(spec)
			d.countFromZeroLocked(pid)
			return nil
		}
		if !heard && time.Since(signalled) > resignalAfter {
			// After a reload that failed, the master executes itself
			// again; a signal that comes meanwhile is lost, and with it
			// this reload. It says "Reloading HAProxy" when it takes one.
			d.log().Warn("haproxy: the master did not take the reload signal; sending it again", "after", resignalAfter.String())
			if err := reloadSignal(d.cmd.Process); err != nil {
				return fmt.Errorf("haproxy: reload: %w", err)
			}
			signalled = time.Now()
		}
		select {
		case <-failed:
			break wait
		case <-taken:
			heard = true
		case <-time.After(20 * time.Millisecond):
		}
	}
	// HAProxy kept the old worker: the new config passed haproxy -c but
	// did not load (a listen address another process holds, say). The
	// next change tries a reload again, rather than runtime commands for
	// backends HAProxy does not have.
	d.failed.Add(1)
	d.shape = ""
	return errors.New("haproxy: the reload brought no new worker (HAProxy's log says why); the old worker routes as before")
}

// heard looks at a line of HAProxy's output for the verdict on a reload.
func (d *Driver) heard(line string) {
	var ch *chan struct{}
	switch {
	case strings.Contains(line, "Loading failure!"):
		ch = d.loaded.Load()
	case strings.Contains(line, "Reloading HAProxy"):
		ch = d.reloading.Load()
	}
	if ch != nil {
		select {
		case *ch <- struct{}{}:
		default:
		}
	}
}

// resignalAfter is how long the driver waits for HAProxy's master to say
// it took a reload signal before it sends the signal again.
var resignalAfter = time.Second

// reloadSignal asks HAProxy's master p to reload; tests lose one.
var reloadSignal = func(p *os.Process) error { return p.Signal(syscall.SIGUSR2) }

// logWriter sends HAProxy's output to the log, a line at a time, and
// each line to heard.
type logWriter struct {
	l     *slog.Logger
	what  string
	heard func(line string)
}

func (w logWriter) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimSpace(string(p)), "\n") {
		if line != "" {
			w.l.Log(context.Background(), lineLevel(line), w.what+": "+line, "from", w.what)
			if w.heard != nil {
				w.heard(line)
			}
		}
	}
	return len(p), nil
}

// lineLevel is the level a line of HAProxy's output is logged at. Its
// notices ("New worker forked", "Loading success"), the old worker's
// proxies stopping at each reload, and the server state changes the driver
// itself makes through the Runtime API (a slot given an instance, or put
// in maintenance) are routine, on every reload and change of membership;
// the rest is a warning, as HAProxy prints it.
func lineLevel(line string) slog.Level {
	if strings.Contains(line, "[NOTICE]") {
		return slog.LevelInfo
	}
	for _, routine := range []string{" stopped (cumulated conns", " is UP", " is READY", " for maintenance"} {
		if strings.Contains(line, routine) {
			return slog.LevelInfo
		}
	}
	return slog.LevelWarn
}

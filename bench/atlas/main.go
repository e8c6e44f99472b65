// Command atlas benchmarks Switchboard's Atlas as users run it: it builds
// the switchboard binary, starts `switchboard atlas --insecure` on
// 127.0.0.1 as a separate process with a fresh data directory, drives it
// over HTTP, and prints a table of figures beside the targets and beside
// what Consul 1.22 did on the same machine.
//
//	go run ./bench/atlas            # the full run (about two minutes)
//	go run ./bench/atlas -quick     # a scaled-down run
//
// It measures registrations per second (1 and 16 clients, the 16 again
// from a lean HTTP/1.1 client that leaves Atlas more of the shared CPU), unchanged
// heartbeats per second (which must not write to disk), the latency of a
// query of a 1,000-instance service, how long a change takes to reach 1,000
// watchers (event streams, and blocking queries twice: from net/http's
// client, then from a lean HTTP/1.1 client that leaves Atlas more of the
// shared CPU), and Atlas's resident memory per instance. See
// bench/README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"
)

type options struct {
	instances int // registered by the registration phases
	big       int // registered in all for the second memory figure; 0 skips
	clients   int
	reg1      int // of instances, how many the single client registers
	querySize int // instances per service
	queries   int
	leaseQ    int // queries with ?leases=true
	hbTime    time.Duration
	batch     int // heartbeats per PUT /v1/heartbeats; 0 skips
	batchCli  int
	watchers  int
	changes   int
	spacing   time.Duration
	watchSize int // instances of the watched service before the changes
	// streamSvcs is how many services each SSE watcher's stream lists:
	// the watched one and streamSvcs-1 without instances, as a sidecar's
	// shared stream lists the services it follows.
	streamSvcs int
	timeout    time.Duration
	quick      bool
	bin        string
	tmp        string
	keep       bool
	cpuProf    string

	store         string // embedded, etcd or both
	etcdInstances int    // -instances at most, with etcd
	replicas      int    // Atlas replicas the watchers spread over (set per store)
}

func parseFlags() options {
	var o options
	flag.IntVar(&o.instances, "instances", 10000, "instances registered for the throughput, heartbeat and first memory figures")
	flag.IntVar(&o.big, "big", 100000, "instances in all for the second memory figure (0 skips it)")
	flag.IntVar(&o.clients, "clients", 16, "concurrent clients for registrations and heartbeats")
	flag.IntVar(&o.reg1, "reg1", 2000, "how many of -instances the single client registers (the rest: -clients clients)")
	flag.IntVar(&o.querySize, "query-size", 1000, "instances per service (the query phase reads one such service)")
	flag.IntVar(&o.queries, "queries", 2000, "sequential queries timed")
	flag.IntVar(&o.leaseQ, "lease-queries", 300, "sequential queries with ?leases=true timed (0 skips)")
	flag.DurationVar(&o.hbTime, "hb-time", 5*time.Second, "how long to send heartbeats")
	flag.IntVar(&o.batch, "batch", 500, "heartbeats per PUT /v1/heartbeats in the batch-heartbeat phase (0 skips it)")
	flag.IntVar(&o.batchCli, "batch-clients", 4, "concurrent clients in the batch-heartbeat phase")
	flag.IntVar(&o.watchers, "watchers", 1000, "watchers of one service, for each of SSE and blocking queries")
	flag.IntVar(&o.changes, "changes", 20, "changes made to the watched service in each propagation phase")
	flag.DurationVar(&o.spacing, "spacing", 200*time.Millisecond, "pause after every watcher saw a change, before the next")
	flag.IntVar(&o.watchSize, "watch-size", 10, "instances of the watched service before the changes")
	flag.IntVar(&o.streamSvcs, "stream-services", 1, "services each SSE watcher's stream lists: the watched one and others without instances, as a sidecar's shared stream does (1-64)")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Minute, "stop everything after this long")
	flag.BoolVar(&o.quick, "quick", false, "scaled-down run: defaults of 2,000 instances, 10,000 in all, 200 watchers, 10 changes, 2s of heartbeats, 500 queries (flags given explicitly win)")
	flag.StringVar(&o.bin, "bin", "", "use this switchboard binary instead of building ./cmd/switchboard")
	flag.StringVar(&o.tmp, "tmp", "", "parent of the temporary directory (default: $TMPDIR or /tmp); the Atlas data directory goes there")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory (binary, data, atlas.log)")
	flag.StringVar(&o.cpuProf, "cpuprofile", "", "write a CPU profile of the load generator (this process) to this file")
	flag.StringVar(&o.store, "store", "embedded", "embedded (bolt in --data), etcd (a 3-member etcd cluster on loopback and two Atlas replicas; installs etcd-server if missing) or both")
	flag.IntVar(&o.etcdInstances, "etcd-instances", 10000, "with -store etcd: -instances at most (the 100,000-instance phase is skipped)")
	flag.Parse()
	if o.quick {
		set := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
		def := func(name string, p *int, v int) {
			if !set[name] {
				*p = v
			}
		}
		def("instances", &o.instances, 2000)
		def("big", &o.big, 10000)
		def("reg1", &o.reg1, 500)
		def("queries", &o.queries, 500)
		def("lease-queries", &o.leaseQ, 100)
		def("watchers", &o.watchers, 200)
		def("changes", &o.changes, 10)
		if !set["hb-time"] {
			o.hbTime = 2 * time.Second
		}
	}
	return o
}

func (o options) validate() error {
	switch {
	case o.instances < 1:
		return errors.New("-instances: must be at least 1")
	case o.clients < 1:
		return errors.New("-clients: must be at least 1")
	case o.reg1 < 0 || o.reg1 > o.instances:
		return errors.New("-reg1: must be 0 to -instances")
	case o.querySize < 1 || o.querySize > o.instances:
		return errors.New("-query-size: must be 1 to -instances")
	case o.big != 0 && o.big <= o.instances:
		return errors.New("-big: must be 0 or more than -instances")
	case o.watchers < 1 || o.changes < 1 || o.changes > 999:
		return errors.New("-watchers: must be at least 1; -changes: 1 to 999")
	case o.store != "embedded" && o.store != "bolt" && o.store != "etcd" && o.store != "both":
		return errors.New("-store: embedded, etcd or both")
	case o.etcdInstances < 4:
		return errors.New("-etcd-instances: at least 4")
	case o.batch < 0 || o.batch > 10000 || o.batchCli < 1:
		return errors.New("-batch: 0 to 10,000; -batch-clients: at least 1")
	case o.queries < 1 || o.leaseQ < 0 || o.watchSize < 0 || o.hbTime <= 0 || o.spacing < 0:
		return errors.New("-queries, -lease-queries, -watch-size, -hb-time, -spacing: out of range")
	case o.streamSvcs < 1 || o.streamSvcs > 64:
		return errors.New("-stream-services: must be 1-64")
	}
	return nil
}

// bench is one run.
type bench struct {
	o     options
	ctx   context.Context
	atlas *atlasProc
	url   string
	urls  []string     // every Atlas replica, when there are several
	load  *http.Client // registrations, heartbeats, queries
	ctl   *http.Client // changes and /metrics, apart from the load
	res   results
}

func main() {
	o := parseFlags()
	if err := o.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "bench/atlas:", err)
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		fmt.Fprintln(os.Stderr, "\ninterrupted: stopping Atlas and cleaning up (again to quit at once)")
		cancel()
		<-sigs
		os.Exit(130) // Atlas dies with us (Pdeathsig); the temp dir stays
	}()
	err := run(ctx, o)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/atlas:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) (err error) {
	if err := raiseFileLimit(2*o.watchers + 4*o.clients + 256); err != nil {
		return err
	}
	if o.cpuProf != "" {
		f, err := os.Create(o.cpuProf)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	root, err := moduleRoot(ctx)
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(o.tmp, "atlas-bench-")
	if err != nil {
		return err
	}
	if o.keep {
		defer fmt.Fprintln(os.Stderr, "kept", tmp)
	} else {
		defer os.RemoveAll(tmp)
	}
	bin := o.bin
	if bin == "" {
		progress("building ./cmd/switchboard")
		if bin, err = buildSwitchboard(ctx, root, tmp); err != nil {
			return err
		}
	}
	var stores []string
	switch o.store {
	case "embedded", "bolt", "":
		stores = []string{"embedded"}
	case "etcd":
		stores = []string{"etcd"}
	case "both":
		stores = []string{"embedded", "etcd"}
	}
	printed := false
	for _, st := range stores {
		if err := runStore(ctx, o, st, root, bin, tmp, !printed); err != nil {
			return fmt.Errorf("store %s: %w", st, err)
		}
		printed = true
	}
	return nil
}

// runStore runs every phase against Atlas with one store: embedded (one
// Atlas, bolt in --data) or etcd (a 3-member etcd cluster, two Atlas
// replicas, the watchers spread over both).
func runStore(ctx context.Context, o options, store, root, bin, tmp string, header bool) (err error) {
	dataDir := filepath.Join(tmp, "data-"+store)
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return err
	}
	b := &bench{o: o, ctx: ctx}
	b.res.machine = machineInfo(root, bin, dataDir)
	if header {
		printMachine(b.res.machine)
	}
	var extra []string
	var replica2 *atlasProc
	if store == "etcd" {
		b.o.replicas = 2
		// Sizes an etcd cluster on these cores gets through in bounded
		// time; the 100,000-instance phase is skipped.
		b.o.big = 0
		b.o.instances = min(o.instances, o.etcdInstances)
		b.o.reg1 = min(o.reg1, b.o.instances/4)
		b.o.querySize = min(o.querySize, b.o.instances)
		if err := ensureEtcd(ctx); err != nil {
			return err
		}
		progress("starting a 3-member etcd cluster")
		cl, err := startEtcd(ctx, tmp)
		if err != nil {
			return err
		}
		defer cl.stop()
		extra = []string{"--store", "etcd://" + strings.Join(cl.endpoints, ",")}
		fmt.Printf("\n== store: etcd (3 members on 127.0.0.1, %s), 2 Atlas replicas; watchers spread over both ==\n", strings.Join(cl.endpoints, ","))
	} else {
		fmt.Printf("\n== store: embedded (one Atlas, --data on %s) ==\n", b.res.machine.fs)
	}
	o = b.o

	progress("starting switchboard atlas")
	b.atlas, err = startAtlas(ctx, bin, dataDir, filepath.Join(tmp, "atlas-"+store+".log"), extra...)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			if tail := b.atlas.log.Tail(); tail != "" {
				fmt.Fprintf(os.Stderr, "last lines of the Atlas log:\n%s\n", tail)
			}
		}
		b.atlas.stop()
	}()
	b.url = b.atlas.url
	progress("atlas pid %d at %s", b.atlas.pid, b.url)
	if store == "etcd" {
		dir2 := filepath.Join(tmp, "data-etcd-2")
		if err := os.MkdirAll(dir2, 0o700); err != nil {
			return err
		}
		replica2, err = startAtlas(ctx, bin, dir2, filepath.Join(tmp, "atlas-etcd-2.log"), extra...)
		if err != nil {
			return err
		}
		defer replica2.stop()
		progress("second atlas replica pid %d at %s", replica2.pid, replica2.url)
		b.urls = []string{b.url, replica2.url}
	}
	loadTr, ctlTr := newTransport(o.clients), newTransport(4)
	defer loadTr.CloseIdleConnections()
	defer ctlTr.CloseIdleConnections()
	b.load = &http.Client{Transport: loadTr}
	b.ctl = &http.Client{Transport: ctlTr, Timeout: 30 * time.Second}

	err = b.phases(ctx)
	b.res.print(os.Stdout, o)
	return err
}

// phases runs every measurement in order; results so far stay in b.res
// when one fails.
func (b *bench) phases(ctx context.Context) error {
	o, r := b.o, &b.res
	if _, _, err := b.do(ctx, b.ctl, http.MethodGet, "/v1/health", nil); err != nil {
		return err
	}
	var err error
	if r.memCold, err = b.memory(ctx); err != nil {
		return err
	}
	if err := b.warmUp(ctx); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	if r.memEmpty, err = b.memory(ctx); err != nil {
		return err
	}

	progress("registering %d instances with 1 client", o.reg1)
	if o.reg1 > 0 {
		if r.reg1, err = b.register(ctx, 1, 0, o.reg1, 30*time.Second); err != nil {
			return fmt.Errorf("registrations, 1 client: %w", err)
		}
	}
	first := int(r.reg1.doneOrZero())
	progress("registering instances %d to %d with %d clients", first, o.instances, o.clients)
	if r.regN, err = b.register(ctx, o.clients, first, o.instances-first, 90*time.Second); err != nil {
		return fmt.Errorf("registrations, %d clients: %w", o.clients, err)
	}
	if r.regN.capped {
		return fmt.Errorf("registrations, %d clients: only %d of %d in 90s", o.clients, first+int(r.regN.done), o.instances)
	}
	if err := b.expectInstances(ctx, o.instances); err != nil {
		return err
	}
	if r.memSmall, err = b.memory(ctx); err != nil {
		return err
	}

	progress("heartbeats to %d instances with %d clients for %s", o.instances, o.clients, o.hbTime)
	m0, err := metrics(ctx, b.ctl, b.url)
	if err != nil {
		return err
	}
	wb0, wbOK := b.atlas.writeBytes()
	if r.hb, err = b.heartbeats(ctx, o.clients, o.instances, o.hbTime); err != nil {
		return fmt.Errorf("heartbeats: %w", err)
	}
	m1, err := metrics(ctx, b.ctl, b.url)
	if err != nil {
		return err
	}
	wb1, _ := b.atlas.writeBytes()
	r.hbStoreWrites = m1["switchboard_atlas_store_writes_total"] - m0["switchboard_atlas_store_writes_total"]
	r.hbIndexMoved = m1["switchboard_atlas_index"] - m0["switchboard_atlas_index"]
	r.hbAccepted = m1["switchboard_atlas_heartbeats_total"] - m0["switchboard_atlas_heartbeats_total"]
	r.hbWriteBytes, r.hbWriteBytesOK = wb1-wb0, wbOK

	if o.batch > 0 {
		progress("batch heartbeats to %d instances, %d per request, %d clients, for %s", o.instances, o.batch, o.batchCli, o.hbTime)
		if r.hbBatch, r.hbBatchBeats, err = b.batchHeartbeats(ctx, o.batchCli, o.instances, o.batch, o.hbTime); err != nil {
			return fmt.Errorf("batch heartbeats: %w", err)
		}
	}

	// New ids, as above, are synced up to 10 ms after Atlas answers
	// (their sidecars register them again if a crash takes them back);
	// a registration that changes an instance's meta is synced first.
	// After the heartbeats, whose phase must see no store write.
	progress("registering instances %d to %d again with new meta (synced before the answer) with %d clients", first, o.instances, o.clients)
	if r.regSynced, err = b.registerAs(ctx, o.clients, first, o.instances-first, "1.4.3", 90*time.Second); err != nil {
		return fmt.Errorf("registrations again with new meta: %w", err)
	}

	svc := b.serviceOf(0)
	progress("%d sequential queries of %s (%d instances)", o.queries, svc, o.querySize)
	if r.query, r.queryBytes, err = b.queryLatency(ctx, "/v1/services/"+svc, o.queries, 60*time.Second); err != nil {
		return fmt.Errorf("queries: %w", err)
	}
	if o.leaseQ > 0 {
		progress("%d sequential queries of %s?leases=true", o.leaseQ, svc)
		if r.queryLeases, _, err = b.queryLatency(ctx, "/v1/services/"+svc+"?leases=true", o.leaseQ, 60*time.Second); err != nil {
			return fmt.Errorf("queries with leases: %w", err)
		}
	}

	progress("registering %d instances of %q", o.watchSize, watchedService)
	for k := range o.watchSize {
		if err := b.put(ctx, b.ctl, fmt.Sprintf("/v1/instances/%s-base-%03d", watchedService, k), registration(watchedService, 1<<21+k)); err != nil {
			return err
		}
	}
	for _, mode := range []string{"sse", "blocking", "blocking-lean"} {
		progress("propagation to %d %s watchers: %d changes", o.watchers, mode, o.changes)
		p, err := b.propagate(ctx, mode)
		switch mode {
		case "sse":
			r.sse = p
		case "blocking":
			r.blocking = p
		default:
			r.blockingLean = p
		}
		if err != nil {
			return fmt.Errorf("propagation (%s): %w", mode, err)
		}
		// Let Atlas notice the closed connections before going on.
		if err := sleep(ctx, time.Second); err != nil {
			return err
		}
	}

	if n := o.instances - int(r.reg1.doneOrZero()); n > 0 {
		progress("registering %d more instances with %d lean clients, then deregistering them", n, o.clients)
		if r.regLean, err = b.registerLean(ctx, o.clients, n, 90*time.Second); err != nil {
			return fmt.Errorf("registrations, lean client: %w", err)
		}
		if err := b.expectInstances(ctx, o.instances); err != nil {
			return err
		}
	}

	if o.big > 0 {
		n := o.big - o.instances
		progress("registering %d more instances with %d clients (to %d)", n, o.clients, o.big)
		// In steps of -instances, to show how the rate changes with the
		// number of instances Atlas holds; 150 s in all at most.
		r.regBig = &throughput{clients: o.clients}
		end := time.Now().Add(150 * time.Second)
		for from := o.instances; from < o.big; {
			left := time.Until(end)
			if left <= 0 {
				r.regBig.capped = true
				break
			}
			step := min(o.instances, o.big-from)
			t, err := b.register(ctx, o.clients, from, step, left)
			if t != nil {
				r.regBig.add(t)
				r.regSteps = append(r.regSteps, regStep{from: from, throughput: t})
				from += int(t.done)
			}
			if err != nil {
				return fmt.Errorf("registrations to %d: %w", o.big, err)
			}
			if t.capped {
				break
			}
		}
		total := o.instances + int(r.regBig.done)
		if err := b.expectInstances(ctx, total); err != nil {
			return err
		}
		if r.memBig, err = b.memory(ctx); err != nil {
			return err
		}
		r.bigCount = total
		progress("heartbeats to %d instances with %d clients for %s", total, o.clients, o.hbTime)
		if r.hbBig, err = b.heartbeats(ctx, o.clients, total, o.hbTime); err != nil {
			return fmt.Errorf("heartbeats to %d: %w", total, err)
		}
	}
	return nil
}

// expectInstances checks that Atlas holds n bench instances (and the
// watched ones).
func (b *bench) expectInstances(ctx context.Context, n int) error {
	m, err := metrics(ctx, b.ctl, b.url)
	if err != nil {
		return err
	}
	got := int(m[`switchboard_atlas_instances{realm="dev",status="passing"}`])
	if got < n {
		return fmt.Errorf("atlas holds %d passing instances, want at least %d", got, n)
	}
	return nil
}

// memory reads Atlas's RSS and, from its metrics, its Go heap.
// It first leaves Atlas idle for 2 s, measuring the CPU it uses meanwhile.
func (b *bench) memory(ctx context.Context) (*memSample, error) {
	const idle = 2 * time.Second
	progress("memory and idle CPU of Atlas (%s idle)", idle)
	cpu0 := b.atlas.cpu()
	if err := sleep(ctx, idle); err != nil {
		return nil, err
	}
	idleCPU := b.atlas.cpu() - cpu0
	mem, err := b.atlas.memory()
	if err != nil {
		return nil, err
	}
	s := &memSample{memory: mem, idleCores: idleCPU.Seconds() / idle.Seconds()}
	if m, err := metrics(ctx, b.ctl, b.url); err == nil {
		s.heapInuse = int64(m["go_memstats_heap_inuse_bytes"]) >> 10
		s.instances = int(m[`switchboard_atlas_instances{realm="dev",status="passing"}`])
	}
	return s, nil
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// raiseFileLimit raises the soft limit on open files to the hard limit (the
// Atlas child inherits it) and checks that need fit.
func raiseFileLimit(need int) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("getrlimit: %w", err)
	}
	// Set it even when the Go runtime has already raised it for this
	// process: an explicit Setrlimit is what makes children inherit it.
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("setrlimit: %w", err)
	}
	if lim.Cur < uint64(need) {
		return fmt.Errorf("the open-file limit is %d, the run needs about %d: raise it (ulimit -n) or use fewer -watchers", lim.Cur, need)
	}
	return nil
}

type machine struct {
	cores      int
	goVersion  string
	kernel     string
	cpuModel   string
	fs         string
	revision   string
	binVersion string
}

func machineInfo(root, bin, dataDir string) machine {
	m := machine{cores: runtime.NumCPU(), goVersion: runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH, fs: fsType(dataDir)}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				m.cpuModel = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if out, err := exec.Command("git", "-C", root, "describe", "--always", "--dirty").Output(); err == nil {
		m.revision = strings.TrimSpace(string(out))
	}
	if out, err := exec.Command("go", "version", bin).Output(); err == nil {
		if _, v, ok := strings.Cut(strings.TrimSpace(string(out)), ": "); ok {
			m.binVersion = v
		}
	}
	return m
}

func printMachine(m machine) {
	fmt.Printf("machine:   %d cores (%s), Linux %s\n", m.cores, m.cpuModel, m.kernel)
	fmt.Printf("go:        %s (bench); switchboard built with %s\n", m.goVersion, m.binVersion)
	fmt.Printf("source:    %s\n", m.revision)
	fmt.Printf("data dir:  %s\n", m.fs)
	fmt.Printf("load avg:  %s at the start (the load generator runs on the same cores as Atlas, over 127.0.0.1)\n", loadAverage())
	fmt.Println()
}

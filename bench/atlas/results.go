package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// results are the figures of one run; nil or zero means not measured.
type results struct {
	machine machine

	// memCold is Atlas just started; memEmpty the same after the warm-up,
	// the base that RSS per instance is counted from.
	memCold, memEmpty, memSmall, memBig *memSample
	bigCount                            int

	reg1, regN, regBig *throughput
	regLean            *throughput // as regN, from a lean client, past -instances
	regSynced          *throughput // regN's instances again, with new meta: synced before the answer
	regSteps           []regStep   // regBig by instances held

	hb, hbBig          *throughput
	hbBatch            *throughput // requests of batchHeartbeats
	hbBatchBeats       int64       // heartbeats accepted in them
	hbAccepted         float64
	hbStoreWrites      float64
	hbIndexMoved       float64
	hbWriteBytes       int64
	hbWriteBytesOK     bool
	query, queryLeases []time.Duration
	queryBytes         int
	sse, blocking      *propagation
	blockingLean       *propagation // blocking queries from a lean HTTP client
}

type regStep struct {
	from int
	*throughput
}

// add sums the counts and times of a run that followed t.
func (t *throughput) add(u *throughput) {
	t.done += u.done
	t.errors += u.errors
	if t.firstErr == nil {
		t.firstErr = u.firstErr
	}
	t.elapsed += u.elapsed
	t.atlasCPU += u.atlasCPU
	t.selfCPU += u.selfCPU
	t.capped = t.capped || u.capped
	t.lat = append(t.lat, u.lat...)
}

type memSample struct {
	memory
	heapInuse int64   // KiB, from go_memstats_heap_inuse_bytes
	instances int     // passing instances Atlas reported
	idleCores float64 // CPU Atlas used while idle, in cores
}

func (t *throughput) doneOrZero() int64 {
	if t == nil {
		return 0
	}
	return t.done
}

// percentile is the nearest-rank q-quantile of d (sorted in place).
func percentile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	i := int(math.Ceil(q*float64(len(d)))) - 1
	return d[max(0, min(i, len(d)-1))]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

// count formats n with thousands separators.
func count(n float64) string {
	s := fmt.Sprintf("%.0f", n)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 && s[0] != '-' {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

type row struct {
	name, measured, target, ratio, consul string
}

// atLeast and atMost compare a figure with its target.
func atLeast(v, target float64) string {
	r := v / target
	if r >= 1 {
		return fmt.Sprintf("%.2f× (meets)", r)
	}
	return fmt.Sprintf("%.2f× (misses)", r)
}

func atMost(v, target float64) string {
	r := v / target
	if r <= 1 {
		return fmt.Sprintf("%.2f× (meets)", r)
	}
	return fmt.Sprintf("%.2f× (misses)", r)
}

const notMeasured = "not measured"

func (r *results) rows(o options) []row {
	var rows []row
	add := func(name, measured, target, ratio, consul string) {
		if measured == "" {
			measured, ratio = notMeasured, "—"
		}
		rows = append(rows, row{name, measured, target, ratio, consul})
	}
	rate := func(t *throughput) string {
		if t == nil || t.done == 0 {
			return ""
		}
		return count(t.perSecond()) + "/s"
	}
	ratioAtLeast := func(t *throughput, target float64) string {
		if t == nil || t.done == 0 {
			return "—"
		}
		return atLeast(t.perSecond(), target)
	}
	first := o.reg1
	if r.reg1 != nil {
		first = int(r.reg1.done)
	}
	add(fmt.Sprintf("registrations, 1 client (0→%s)", count(float64(first))), rate(r.reg1), "—", "—", "—")
	add(fmt.Sprintf("registrations, %d clients (%s→%s)", o.clients, count(float64(first)), count(float64(o.instances))),
		rate(r.regN), "≥ 10,000/s", ratioAtLeast(r.regN, 10000), "~130/s (holding 10,000)")
	if r.regSynced != nil {
		add(fmt.Sprintf("  again with new meta, synced before the answer (%s)", count(float64(r.regSynced.done))), rate(r.regSynced), "—", "—", "—")
	}
	if n := o.instances - first; n > 0 {
		add(fmt.Sprintf("  the same, lean client (%s→%s, then removed)", count(float64(o.instances)), count(float64(o.instances+n))),
			rate(r.regLean), "≥ 10,000/s", ratioAtLeast(r.regLean, 10000), "—")
	}
	if o.big > 0 {
		to := o.big
		if r.regBig != nil {
			to = o.instances + int(r.regBig.done)
		}
		add(fmt.Sprintf("registrations, %d clients (%s→%s)", o.clients, count(float64(o.instances)), count(float64(to))),
			rate(r.regBig), "≥ 10,000/s", ratioAtLeast(r.regBig, 10000), "~130/s (holding 10,000)")
	}
	add(fmt.Sprintf("heartbeats, %d clients, %s live", o.clients, count(float64(o.instances))), rate(r.hb), "≥ 50,000/s", ratioAtLeast(r.hb, 50000), "—")
	if r.hb != nil {
		verdict := "meets"
		if r.hbStoreWrites != 0 || r.hbIndexMoved != 0 {
			verdict = "misses"
		}
		disk := "write_bytes n/a"
		if r.hbWriteBytesOK {
			disk = fmt.Sprintf("%s B to disk", count(float64(r.hbWriteBytes)))
		}
		add("  store writes during heartbeats", fmt.Sprintf("%s (%s)", count(r.hbStoreWrites), disk), "0", verdict, "—")
	} else {
		add("  store writes during heartbeats", "", "0", "—", "—")
	}
	if o.batch > 0 {
		label := fmt.Sprintf("heartbeats, batches of %d, %d clients, %s live", o.batch, o.batchCli, count(float64(o.instances)))
		if t := r.hbBatch; t != nil && r.hbBatchBeats > 0 && t.elapsed > 0 {
			v := float64(r.hbBatchBeats) / t.elapsed.Seconds()
			add(label, count(v)+"/s", "≥ 50,000/s", atLeast(v, 50000), "—")
		} else {
			add(label, "", "≥ 50,000/s", "—", "—")
		}
	}
	if o.big > 0 {
		n := r.bigCount
		if n == 0 {
			n = o.big
		}
		add(fmt.Sprintf("heartbeats, %d clients, %s live", o.clients, count(float64(n))), rate(r.hbBig), "—", "—", "—")
	}
	name := fmt.Sprintf("query %s-instance service", count(float64(o.querySize)))
	if len(r.query) > 0 {
		p50 := percentile(r.query, .5)
		add(name+", p50", ms(p50), "≤ 2 ms", atMost(float64(p50)/float64(time.Millisecond), 2), "22–25 ms")
		add(name+", p99", ms(percentile(r.query, .99)), "—", "—", "—")
	} else {
		add(name+", p50", "", "≤ 2 ms", "—", "22–25 ms")
	}
	if o.leaseQ > 0 {
		if len(r.queryLeases) > 0 {
			add("  same with ?leases=true, p50 / p99", ms(percentile(r.queryLeases, .5))+" / "+ms(percentile(r.queryLeases, .99)), "—", "—", "—")
		} else {
			add("  same with ?leases=true, p50 / p99", "", "—", "—", "—")
		}
	}
	for _, p := range []struct {
		label, consul string
		p             *propagation
	}{{sseLabel(o.streamSvcs), "—", r.sse}, {"blocking query", "p99 ~400 ms", r.blocking}, {"blocking query, lean client", "—", r.blockingLean}} {
		label := fmt.Sprintf("propagation, %s watchers, %s", count(float64(o.watchers)), p.label)
		targetMS := 50.0
		if o.replicas > 1 {
			label = fmt.Sprintf("propagation, %s watchers over %d replicas, %s", count(float64(o.watchers)), o.replicas, p.label)
			targetMS = 100
		}
		target := fmt.Sprintf("≤ %.0f ms", targetMS)
		if p.p == nil || len(p.p.lat) == 0 {
			add(label+", p99", "", target, "—", p.consul)
			continue
		}
		lat := p.p.lat
		p99 := percentile(lat, .99)
		add(label+", p50", ms(percentile(lat, .5)), "—", "—", "—")
		add(label+", p99", ms(p99), target, atMost(float64(p99)/float64(time.Millisecond), targetMS), p.consul)
		maxName := label + ", max"
		if p.p.missed > 0 {
			maxName += fmt.Sprintf(" (%d pairs never seen)", p.p.missed)
		}
		add(maxName, ms(lat[len(lat)-1]), "—", "—", "—")
	}
	mib := func(kib int64) string { return fmt.Sprintf("%.1f MiB", float64(kib)/1024) }
	for _, m := range []struct {
		label string
		s     *memSample
	}{{"Atlas RSS, empty, just started", r.memCold}, {"Atlas RSS, empty, after a warm-up", r.memEmpty}} {
		if m.s != nil {
			add(m.label, mib(m.s.RSS), "—", "—", "—")
		} else {
			add(m.label, "", "—", "—", "—")
		}
	}
	perInstance := func(m *memSample, n int, consul string) {
		label := fmt.Sprintf("Atlas RSS, %s instances", count(float64(n)))
		if m == nil || r.memEmpty == nil {
			add(label, "", "—", "—", consul)
			add("  RSS per instance (minus warm empty)", "", "≤ 1 KiB", "—", "—")
			return
		}
		add(label, mib(m.RSS), "—", "—", consul)
		per := float64(m.RSS-r.memEmpty.RSS) / float64(n)
		add("  RSS per instance (minus warm empty)", fmt.Sprintf("%.2f KiB", per), "≤ 1 KiB", atMost(per, 1), "—")
	}
	perInstance(r.memSmall, o.instances, "310–340 MiB")
	if o.big > 0 {
		n := r.bigCount
		if n == 0 {
			n = o.big
		}
		perInstance(r.memBig, n, "—")
		if r.memSmall != nil && r.memBig != nil && n > o.instances {
			per := float64(r.memBig.RSS-r.memSmall.RSS) / float64(n-o.instances)
			add(fmt.Sprintf("  RSS per instance from %s to %s", count(float64(o.instances)), count(float64(n))),
				fmt.Sprintf("%.2f KiB", per), "—", "—", "—")
		}
	}
	return rows
}

func (r *results) print(w io.Writer, o options) {
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "figure\tmeasured\ttarget\tmeasured/target\tConsul 1.22, this machine")
	fmt.Fprintln(tw, "------\t--------\t------\t---------------\t-------------------------")
	for _, x := range r.rows(o) {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", x.name, x.measured, x.target, x.ratio, x.consul)
	}
	tw.Flush()
	fmt.Fprintln(w)
	fmt.Fprintf(w, "details (load average now %s):\n", loadAverage())
	r.details(w, o)
}

func (r *results) details(w io.Writer, o options) {
	phase := func(name string, t *throughput) {
		if t == nil {
			return
		}
		busy := t.atlasCPU.Seconds() / t.elapsed.Seconds()
		perOp := time.Duration(0)
		if t.done > 0 {
			perOp = t.atlasCPU / time.Duration(t.done)
		}
		fmt.Fprintf(w, "  %-26s %s ok, %d failed, in %.2fs; Atlas CPU %.2f cores (%s µs per request), load generator %.2f cores, other processes %.2f cores",
			name+":", count(float64(t.done)), t.errors, t.elapsed.Seconds(), busy, count(float64(perOp.Microseconds())),
			t.selfCPU.Seconds()/t.elapsed.Seconds(), t.otherCPU.Seconds()/t.elapsed.Seconds())
		if t.capped {
			fmt.Fprint(w, "; stopped by its time bound")
		}
		if len(t.lat) > 0 {
			fmt.Fprintf(w, "; request latency p50 %s, p99 %s, max %s", ms(percentile(t.lat, .5)), ms(percentile(t.lat, .99)), ms(t.lat[len(t.lat)-1]))
		}
		fmt.Fprintln(w)
		if t.firstErr != nil {
			fmt.Fprintf(w, "    first error: %v\n", t.firstErr)
		}
	}
	phase("registrations, 1 client", r.reg1)
	phase(fmt.Sprintf("registrations, %d clients", o.clients), r.regN)
	phase(fmt.Sprintf("registrations, %d lean clients", o.clients), r.regLean)
	phase(fmt.Sprintf("registrations again with new meta, %d clients", o.clients), r.regSynced)
	phase(fmt.Sprintf("registrations to %s", count(float64(o.big))), r.regBig)
	if len(r.regSteps) > 0 {
		fmt.Fprint(w, "    by instances held:")
		for i, st := range r.regSteps {
			if i > 0 {
				fmt.Fprint(w, ",")
			}
			fmt.Fprintf(w, " %s→%s %s/s (%s µs CPU each)", short(st.from), short(st.from+int(st.done)), count(st.perSecond()),
				count(float64((st.atlasCPU / time.Duration(max(1, st.done))).Microseconds())))
		}
		fmt.Fprintln(w)
	}
	phase("heartbeats", r.hb)
	if r.hb != nil {
		fmt.Fprintf(w, "    Atlas counted %s heartbeats; store writes %s, store index moved by %s", count(r.hbAccepted), count(r.hbStoreWrites), count(r.hbIndexMoved))
		if r.hbWriteBytesOK {
			fmt.Fprintf(w, ", /proc/PID/io write_bytes +%s", count(float64(r.hbWriteBytes)))
		}
		fmt.Fprintln(w)
	}
	phase(fmt.Sprintf("batch heartbeats (×%d)", o.batch), r.hbBatch)
	if r.hbBatch != nil {
		fmt.Fprintf(w, "    %s heartbeats accepted in %s requests\n", count(float64(r.hbBatchBeats)), count(float64(r.hbBatch.done)))
	}
	phase(fmt.Sprintf("heartbeats, %s live", short(r.bigCount)), r.hbBig)
	if len(r.query) > 0 {
		fmt.Fprintf(w, "  queries:                   %d timed, answer %s bytes, mean %s\n", len(r.query), count(float64(r.queryBytes)), ms(mean(r.query)))
	}
	if len(r.queryLeases) > 0 {
		fmt.Fprintf(w, "  queries ?leases=true:      %d timed, mean %s\n", len(r.queryLeases), ms(mean(r.queryLeases)))
	}
	for _, p := range []*propagation{r.sse, r.blocking, r.blockingLean} {
		if p == nil {
			continue
		}
		fmt.Fprintf(w, "  propagation %-14s %d watchers × %d changes: %d pairs seen, %d never; watched answer %s bytes; connected in %.1fs",
			p.mode+":", p.watchers, p.changes, len(p.lat), p.missed, count(float64(p.bodyBytes)), p.connect.Seconds())
		if p.rssPerWatcher != 0 {
			fmt.Fprintf(w, "; Atlas RSS %+.1f KiB per stream", p.rssPerWatcher)
		}
		fmt.Fprintln(w)
		if len(p.changeReq) > 0 {
			cr := slices.Clone(p.changeReq)
			fmt.Fprintf(w, "    change PUT p50 %s, max %s; per change: Atlas CPU %s, load generator %s; other processes %.2f cores\n",
				ms(percentile(cr, .5)), ms(cr[len(cr)-1]), ms(p.atlasCPU/time.Duration(len(cr))), ms(p.selfCPU/time.Duration(len(cr))),
				p.otherCPU.Seconds()/max(p.elapsed.Seconds(), 1e-9))
		}
		fmt.Fprintf(w, "    answers after connecting %s (%s without a new change); watcher errors %d", count(float64(p.answers)), count(float64(p.useless)), p.errors)
		if p.firstErr != nil {
			fmt.Fprintf(w, " (first: %v)", p.firstErr)
		}
		fmt.Fprintln(w)
	}
	for _, m := range []struct {
		name string
		s    *memSample
	}{{"start", r.memCold}, {"warm empty", r.memEmpty}, {count(float64(o.instances)), r.memSmall}, {count(float64(r.bigCount)), r.memBig}} {
		if m.s == nil {
			continue
		}
		fmt.Fprintf(w, "  memory at %-15s VmRSS %s KiB (anon %s, file %s), VmHWM %s KiB, Go heap in use %s KiB, %s instances; idle CPU %.3f cores\n",
			m.name+":", count(float64(m.s.RSS)), count(float64(m.s.Anon)), count(float64(m.s.File)), count(float64(m.s.HWM)), count(float64(m.s.heapInuse)), count(float64(m.s.instances)), m.s.idleCores)
	}
}

// short writes n as 12k.
func short(n int) string {
	if n >= 1000 && n%1000 == 0 {
		return fmt.Sprintf("%dk", n/1000)
	}
	if n >= 1000 {
		return fmt.Sprintf("%.1fk", float64(n)/1000)
	}
	return fmt.Sprint(n)
}

func mean(d []time.Duration) time.Duration {
	var sum time.Duration
	for _, x := range d {
		sum += x
	}
	return sum / time.Duration(max(1, len(d)))
}

// sseLabel names the SSE rows: streams of one service, or of several.
func sseLabel(services int) string {
	if services > 1 {
		return fmt.Sprintf("SSE, streams of %d services", services)
	}
	return "SSE"
}

-- wrk script for bench/proxy/run.sh: after wrk's own report, one line that
-- the script parses (latencies in microseconds).
done = function(summary, latency, requests)
	io.write(string.format(
		"WRKRESULT requests=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
		summary.requests, summary.duration,
		latency:percentile(50), latency:percentile(99), latency.max,
		summary.errors.connect, summary.errors.read, summary.errors.write,
		summary.errors.status, summary.errors.timeout))
end

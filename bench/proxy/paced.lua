-- wrk script for bench/proxy/run.sh's paced rows: each connection waits a
-- while after every answer before its next request (0 to 2 × $PACE_MS
-- milliseconds, drawn at random so that the connections do not fire
-- together), so that the load is a steady rate below what either proxy can
-- take rather than all it can; then report.lua's line ($WRKREPORT).
local pace = tonumber(os.getenv("PACE_MS"))
math.randomseed(os.time())
delay = function()
	return math.random(0, 2 * pace)
end
dofile(os.getenv("WRKREPORT"))

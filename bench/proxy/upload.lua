-- wrk script for bench/proxy/run.sh's upload rows: every request a POST
-- whose body is $UPLOAD bytes; then report.lua's line ($WRKREPORT).
wrk.method = "POST"
wrk.body = string.rep("x", tonumber(os.getenv("UPLOAD")))
dofile(os.getenv("WRKREPORT"))

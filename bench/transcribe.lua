-- wrk script: POST one body (a spoken sentence, JSON with a base64 WAV) to /transcribe, over and over.
--
--   BENCH_BODY  the file whose bytes are the request's body (application/json)
-- wrk's closed loop: each connection sends again as soon as it is answered. wrk's own summary counts the
-- answers that were not 2xx ("Non-2xx or 3xx responses").

local file = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"

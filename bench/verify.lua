-- wrk script: rotate over prepared requests, verify every response, time each request ourselves.
--
-- Settings come from the environment (read when wrk loads the script, before any thread starts):
--   BENCH_DATA       a Lua file returning {tolerance = x, items = {{kind, head, body, expect, dim}, ...}}
--   BENCH_WARMUP_S   responses before this are neither counted nor timed
--   BENCH_MEASURE_S  the measured window that follows the warm-up
--   BENCH_RATE       0: closed loop (each connection sends when answered); > 0: open loop at this many
--                    requests/s in all, each timed from when it was due (so queueing is not hidden)
--   BENCH_THREADS    wrk's -t (the rate is split between threads)
--   BENCH_LIMIT      > 0: each thread stops after this many responses (and says so on stderr)
-- Each request carries X-Request-ID "<item>-<thread>-<n>"; the server echoes it, which tells which
-- prepared request a response answers. Results go to stdout as "bench: ..." lines after wrk's summary.
-- Latencies are measured here rather than taken from wrk, whose histogram adds synthetic samples.

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clock_id, bench_timespec *tp);
]]
local timespec = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, timespec) -- CLOCK_MONOTONIC
  return tonumber(timespec.tv_sec) * 1000 + tonumber(timespec.tv_nsec) / 1e6
end

local data = dofile(os.getenv("BENCH_DATA"))
local items, tolerance = data.items, data.tolerance
local warmup_ms = tonumber(os.getenv("BENCH_WARMUP_S") or "0") * 1000
local measure_ms = tonumber(os.getenv("BENCH_MEASURE_S") or "1e9") * 1000
local rate = tonumber(os.getenv("BENCH_RATE") or "0")
local thread_count = tonumber(os.getenv("BENCH_THREADS") or "1")
local limit = tonumber(os.getenv("BENCH_LIMIT") or "0")

-- In wrk's main Lua state: remember the threads, give each an index.
local threads = {}
function setup(thread)
  thread:set("thread_index", #threads)
  table.insert(threads, thread)
end

-- In each thread's own Lua state.
function init(args)
  t0 = now_ms()
  window_start, window_end = t0 + warmup_ms, t0 + warmup_ms + measure_ms
  interval_ms = rate > 0 and 1000 * thread_count / rate or 0
  phase = thread_index / thread_count -- threads' schedules interleave instead of coinciding
  started, sent, reserved, assigned, responses = {}, 0, 0, 0, 0
  ok, status_errors, mismatches, latencies, examples = 0, 0, 0, {}, {}
end

function request()
  sent = sent + 1
  local index = (thread_index * 7919 + sent) % #items + 1 -- threads start at different items
  local item = items[index]
  local start = now_ms()
  if interval_ms > 0 then
    assigned = assigned + 1
    start = math.min(start, t0 + (assigned + phase) * interval_ms) -- late: timed from when it was due
  end
  local id = index .. "-" .. thread_index .. "-" .. sent
  started[id] = start
  return item.head .. id .. "\r\n\r\n" .. item.body
end

if rate > 0 then
  -- Called before each request on a connection: wait for the next free slot of the schedule.
  function delay()
    reserved = reserved + 1
    local wait = t0 + (reserved + phase) * interval_ms - now_ms()
    return wait > 0 and math.floor(wait) or 0
  end
end

local function check(item, body)
  if item.kind == "caption" or item.kind == "transcribe" then
    local field = item.kind == "caption" and "caption" or "text" -- /transcribe answers {"text": ...}
    local text = body:match('"' .. field .. '"%s*:%s*"([^"]*)"')
    if text == nil then return "no " .. field end
    if text ~= item.expect then return field .. " " .. text .. " ~= " .. item.expect end
    return nil
  end
  local _, count = body:gsub('"embedding"%s*:', "")
  if count ~= 1 then return count .. " embeddings" end
  if not body:find('"index"%s*:%s*0[,}%s]') then return "no index 0" end
  local values = body:match('"embedding"%s*:%s*%[([^%]]*)%]')
  if values == nil then return "no embedding array" end
  local n = 0
  for text in values:gmatch("[^,%s]+") do
    n = n + 1
    local expected = item.expect[n]
    if expected ~= nil then
      local value = tonumber(text)
      if value == nil or math.abs(value - expected) > tolerance then
        return "component " .. n .. ": " .. text .. " ~= " .. expected
      end
    end
  end
  if n ~= item.dim then return n .. " components, not " .. item.dim end
  return nil
end

local function note(problem)
  if #examples < 3 then table.insert(examples, (problem:sub(1, 160):gsub("[^%w%p ]", "?"))) end
end

function response(status, headers, body)
  local now = now_ms()
  local id = headers["x-request-id"] or headers["X-Request-ID"] or headers["X-Request-Id"]
  local start = id and started[id]
  if id then started[id] = nil end
  responses = responses + 1
  if limit > 0 and responses == limit then
    io.stderr:write("bench: limit reached\n")
    io.stderr:flush()
    wrk.thread:stop()
  end
  if now < window_start or now > window_end then return end
  if status ~= 200 then
    status_errors = status_errors + 1
    note("status " .. status .. ": " .. body)
    return
  end
  local problem
  if start == nil then
    problem = "no known X-Request-ID in the response"
  else
    problem = check(items[tonumber(id:match("^(%d+)-"))], body)
  end
  if problem then
    mismatches = mismatches + 1
    note(problem)
    return
  end
  ok = ok + 1
  latencies[#latencies + 1] = now - start
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("bench: socket_errors %d %d %d %d\n", e.connect, e.read, e.write, e.timeout))
  io.write(string.format("bench: window_s %.3f\n", measure_ms / 1000))
  for _, thread in ipairs(threads) do
    io.write(string.format("bench: thread ok=%d status_errors=%d mismatches=%d\n",
      thread:get("ok"), thread:get("status_errors"), thread:get("mismatches")))
    for _, example in ipairs(thread:get("examples")) do io.write("bench: example " .. example .. "\n") end
    local values = thread:get("latencies")
    for i = 1, #values, 50 do
      local chunk = {}
      for j = i, math.min(i + 49, #values) do chunk[#chunk + 1] = string.format("%.3f", values[j]) end
      io.write("bench: latency_ms " .. table.concat(chunk, " ") .. "\n")
    end
  end
end

-- wrk script: every response's start and end (CLOCK_MONOTONIC µs, the clock of process.hrtime) and
-- status, one line each in DIR/thread-N.log. Run with as many threads as connections (-tN -cN):
-- then a thread has one connection and one request in flight, so a response pairs with the last
-- request() of its thread. A request that failed (its connection reset or closed) has no line;
-- wrk's own summary counts it.
--   wrk -tN -cN -s bench/lib/timeline.lua URL -- DIR
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } handover_bench_timespec;
int clock_gettime(int clk, handover_bench_timespec *ts);
]]
local ts = ffi.new("handover_bench_timespec")
local CLOCK_MONOTONIC = 1

local function now_us()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000000 + math.floor(tonumber(ts.tv_nsec) / 1000)
end

local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end

local file, started
function init(args)
  file = io.open(args[1] .. "/thread-" .. id .. ".log", "w")
end

function request()
  started = now_us()
  return wrk.format()
end

function response(status, headers, body)
  file:write(string.format("%.0f %.0f %d\n", started, now_us(), status))
end

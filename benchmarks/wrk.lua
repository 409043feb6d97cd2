-- bertserve benchmark client script for wrk: POST /predict with real review texts, one body per request,
-- rotating through a file of JSON bodies (one per line). Arguments after `--`: <bodies file> [start offset]
-- [Authorization header value].
-- Requests are formatted once in init, so wrk's per-request cost stays what it is without a script.
-- At the end one line "BENCH_JSON {...}" carries counts, errors by kind and latency percentiles (microseconds).

local requests = {}
local n = 0
local i = 0

function init(args)
   local path = args[1]
   local headers = { ["Content-Type"] = "application/json" }
   if args[3] then
      headers["Authorization"] = args[3]
   end
   for line in io.lines(path) do
      if #line > 0 then
         n = n + 1
         requests[n] = wrk.format("POST", wrk.path, headers, line)
      end
   end
   if n == 0 then
      error("no request bodies in " .. tostring(path))
   end
   i = (tonumber(args[2]) or 0) % n
end

function request()
   i = i % n + 1
   return requests[i]
end

function done(summary, latency, _)
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,'
         .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
      summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end

-- rank.lua - wrk script: real, varied POST /v1/rank traffic from a file of
-- ranking requests (one JSON request per line, as tools/make_demo.py writes
-- them), and a one-line, parseable result at the end.
--
--   CTR_WRK_REQUESTS=demo/requests_64.jsonl \
--     wrk -t2 -c16 -d30s -s deploy/wrk/rank.lua http://127.0.0.1:8080
--
-- Paced (about 200 requests/s per connection, 800 in all):
--   CTR_WRK_RATE=200 wrk -t1 -c4 -d30s -s deploy/wrk/rank.lua http://127.0.0.1:8080
--
-- The requests file is CTR_WRK_REQUESTS (default demo/requests_16.jsonl,
-- relative to the working directory), or the first script argument
-- (wrk ... -s rank.lua URL -- FILE), which wins over the variable.  The path
-- is the URL's when it has one, /v1/rank otherwise.  Every thread reads the
-- file in init() and pre-formats all requests, then cycles through them,
-- each thread starting at its own offset.  No response() is defined (it
-- would make wrk parse every response); HTTP errors are counted through
-- summary.errors.status (status >= 400).

local DEFAULT_FILE = "demo/requests_16.jsonl"
local DEFAULT_PATH = "/v1/rank"

-- Pacing: CTR_WRK_RATE requests/s per connection (unset or 0: as fast as
-- the server answers, wrk's usual closed loop).  Each connection waits an
-- exponentially distributed pause of mean 1/rate after each answer, so the
-- offered load is a little under connections x rate (the answer time adds
-- to each cycle); read the achieved rate off WRK_RESULT.  delay() is only
-- defined when pacing, since wrk takes its presence as a request for it.
local rate = tonumber(os.getenv("CTR_WRK_RATE") or "") or 0
if rate > 0 then
   function delay()
      return -math.log(1 - math.random()) * 1000 / rate
   end
end

local function requests_file(args)
   if args and args[1] and args[1] ~= "" then
      return args[1]
   end
   local env = os.getenv("CTR_WRK_REQUESTS")
   if env and env ~= "" then
      return env
   end
   return DEFAULT_FILE
end

-- setup() runs in the main Lua state once per thread, before that thread's
-- init(): it hands each thread its index.
local threads = {}
function setup(thread)
   thread:set("thread_index", #threads)
   threads[#threads + 1] = thread
end

local reqs = {}
local pos = 1

function init(args)
   local file = requests_file(args)
   local f, err = io.open(file, "r")
   if not f then
      error("rank.lua: cannot open requests file " .. file .. ": " ..
            tostring(err) .. " (set CTR_WRK_REQUESTS)")
   end
   local path = wrk.path
   if path == nil or path == "" or path == "/" then
      path = DEFAULT_PATH
   end
   local headers = {}
   for k, v in pairs(wrk.headers) do
      headers[k] = v
   end
   headers["Content-Type"] = "application/json"
   local n = 0
   for line in f:lines() do
      line = line:gsub("%s+$", "")
      if line ~= "" then
         if line:sub(1, 1) ~= "{" then
            f:close()
            error(string.format("rank.lua: %s:%d: not a JSON object",
                                file, n + 1))
         end
         n = n + 1
         reqs[n] = wrk.format("POST", path, headers, line)
      end
   end
   f:close()
   requests_path, requests_lines = file, n   -- read back by done()
   if n == 0 then
      error("rank.lua: no requests in " .. file)
   end
   -- Offsets spread by the golden ratio: distinct and far apart whatever
   -- the number of threads (which a thread cannot know).
   local idx = thread_index or 0
   pos = math.floor(n * ((idx * 0.6180339887498949) % 1)) + 1
end

function request()
   local r = reqs[pos]
   pos = pos + 1
   if pos > #reqs then
      pos = 1
   end
   return r
end

function done(summary, latency, requests)
   local e = summary.errors
   local secs = summary.duration / 1e6
   local rps = secs > 0 and summary.requests / secs or 0
   local function ms(p)
      return latency:percentile(p) / 1000.0
   end
   local socket = e.connect + e.read + e.write + e.timeout
   local file, lines = "?", 0
   if threads[1] then
      file = threads[1]:get("requests_path") or "?"
      lines = threads[1]:get("requests_lines") or 0
   end
   io.write(string.format(
      "rank.lua: %d requests in %.2fs, %.1f requests/s, %d threads " ..
      "cycling through %s (%d lines)\n",
      summary.requests, secs, rps, #threads, file, lines))
   io.write(string.format(
      "  latency ms: p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  mean %.3f\n",
      ms(50), ms(90), ms(99), ms(99.9), latency.max / 1000.0,
      latency.mean / 1000.0))
   io.write(string.format(
      "  HTTP status >= 400: %d; socket errors: %d (connect %d, read %d, " ..
      "write %d, timeout %d)\n",
      e.status, socket, e.connect, e.read, e.write, e.timeout))
   io.write(string.format(
      "WRK_RESULT rps=%.1f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f p999_ms=%.3f " ..
      "max_ms=%.3f mean_ms=%.3f requests=%d duration_s=%.2f non2xx=%d " ..
      "errors=%d connect=%d read=%d write=%d timeout=%d\n",
      rps, ms(50), ms(90), ms(99), ms(99.9), latency.max / 1000.0,
      latency.mean / 1000.0, summary.requests, secs, e.status, socket,
      e.connect, e.read, e.write, e.timeout))
end

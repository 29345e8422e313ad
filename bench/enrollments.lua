-- wrk script of bench/service_api.py: PUT and GET /enrollments/{id} with SAS auth.
--
--   wrk -t1 -c16 -d10s https://127.0.0.1:PORT/ -s bench/enrollments.lua -- \
--       MODE PREFIX POOL LIMIT TOKEN HOST BODY_FILE
--
-- MODE    create: PUT fresh ids PREFIX-THREAD-N (no If-Match)
--         update: PUT ids PREFIX-0 .. PREFIX-(POOL-1) with If-Match: *
--         get:    GET ids PREFIX-0 .. PREFIX-(POOL-1)
-- LIMIT   requests per thread; the thread stops after that many (wrk -d bounds the time).
--         wrk still divides by the whole duration, so the result then says "capped".
-- TOKEN   the Authorization header (SharedAccessSignature ...)
-- HOST    the Host header (the name the token's sr names, with the port)
-- BODY_FILE  the enrollment body, "@ID@" standing for the id
--
-- done() prints one line: BENCH_RESULT {json}; latencies are in microseconds.

local counter = 0
local mode, prefix, pool, limit
local headers
local parts = {}
local threads = {}

function setup(thread)
   threads[#threads + 1] = thread
   thread:set("tid", #threads - 1)
   thread:set("capped", false)
end

function init(args)
   mode, prefix = args[1], args[2]
   pool, limit = tonumber(args[3]), tonumber(args[4])
   headers = { ["Host"] = args[6], ["Authorization"] = args[5] }
   if mode ~= "get" then
      headers["Content-Type"] = "application/json"
      local file = assert(io.open(args[7], "rb"))
      local template = file:read("*a")
      file:close()
      local start = 1
      while true do
         local first, last = string.find(template, "@ID@", start, true)
         if not first then break end
         parts[#parts + 1] = string.sub(template, start, first - 1)
         start = last + 1
      end
      parts[#parts + 1] = string.sub(template, start)
   end
   if mode == "update" then
      headers["If-Match"] = "*"
   end
end

local function body_for(id)
   local pieces = { parts[1] }
   for index = 2, #parts do
      pieces[#pieces + 1] = id
      pieces[#pieces + 1] = parts[index]
   end
   return table.concat(pieces)
end

function request()
   counter = counter + 1
   if counter > limit then
      capped = true
      wrk.thread:stop()
   end
   local id
   if mode == "create" then
      id = prefix .. "-" .. tid .. "-" .. counter
   else
      id = prefix .. "-" .. ((counter + tid * 101) % pool)
   end
   local path = "/enrollments/" .. id .. "?api-version=2021-10-01"
   if mode == "get" then
      return wrk.format("GET", path, headers)
   end
   return wrk.format("PUT", path, headers, body_for(id))
end

function done(summary, latency, requests)
   local errors = summary.errors
   local capped = false
   for _, thread in ipairs(threads) do
      capped = capped or thread:get("capped")
   end
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"capped":%s,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"max":%d}}\n',
      summary.requests, summary.duration, summary.bytes, tostring(capped),
      errors.connect, errors.read, errors.write, errors.status, errors.timeout,
      latency.mean, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max))
end

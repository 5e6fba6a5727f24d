-- wrk script for bench/run.py: POST one gzip Glean ping (file $BENCH_BODY) to a fresh
-- /submit/org-example-bench/metrics/1/<uuid v4> per request; count requests sent, 2xx, non-2xx.
local threads, counter = {}, 0

function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() * 1000 + id * 7919 + math.floor(os.clock() * 1e6))
  local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
  body = f:read("*a")
  f:close()
  sent, ok, bad = 0, 0, 0
end

local function uuid4()
  return (string.gsub("xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx", "[xy]", function(c)
    return string.format("%x", c == "x" and math.random(0, 15) or math.random(8, 11))
  end))
end

function request()
  sent = sent + 1
  return wrk.format("POST", "/submit/org-example-bench/metrics/1/" .. uuid4(), {
    ["Content-Type"] = "application/json; charset=utf-8",
    ["Content-Encoding"] = "gzip",
    ["X-Telemetry-Agent"] = "Glean/60.1.0 (Rust on Linux)",
    ["Date"] = os.date("!%a, %d %b %Y %H:%M:%S GMT"),
  }, body)
end

function response(status, headers, resp_body)
  if status >= 200 and status < 300 then ok = ok + 1 else bad = bad + 1 end
end

function done(summary, latency, requests)
  local s, o, b = 0, 0, 0
  for _, t in ipairs(threads) do s, o, b = s + t:get("sent"), o + t:get("ok"), b + t:get("bad") end
  local e = summary.errors
  io.write(string.format("BENCH sent=%d ok=%d bad=%d requests=%d duration_us=%d sockerr=%d p50_us=%d p99_us=%d\n",
    s, o, b, summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end

-- The cost of observing a run, through the walk's own path (core.event,
-- C pf_emit): spans per second written by trace = file (target: at
-- least 300k/s), and the event cost with a no-op subscriber.
-- usage: build/pocketflow bench/trace.lua [N] [runs]    (default 200000 5)
local pf = require "pocketflow"
local core = require "pocketflow.core"
local trace = require "pocketflow.trace"

local N = tonumber(arg and arg[1]) or 200000
local RUNS = tonumber(arg and arg[2]) or 5
local event = core.event

-- N node spans (a start and an end event each) in one run; seconds
local function spans(n)
  local t0
  pf.run(function()
    t0 = pf.now()
    event{ type = "run_start", node = "Flow", path = "Flow" }
    for i = 1, n do
      event{ type = "node_start", node = "Step", path = "Flow/Step", attempt = 1 }
      event{ type = "node_end", status = "ok", exec_res = i }
    end
    event{ type = "run_end", status = "ok" }
  end)
  return pf.now() - t0
end

local function median(f)
  local t = {}
  for r = 1, RUNS do t[r] = f() end
  table.sort(t)
  return t[(RUNS + 1) // 2]
end

-- "file": the file sink only, once (for perf stat or callgrind)
local only = arg and arg[3]
if only == "file" then RUNS = 1 end

local path = os.tmpname()
local cpu = {}   -- CPU seconds of the process: less sensitive to a loaded machine
local file_s = median(function()
  os.remove(path)
  local sink = trace.open(path)
  local c0 = os.clock()
  local t0 = pf.now()
  spans(N)
  sink:close()    -- the flush of the last lines counts
  cpu[#cpu + 1] = os.clock() - c0
  return pf.now() - t0
end)
local lines = 0
for _ in io.lines(path) do lines = lines + 1 end
os.remove(path)
assert(lines == N + 1, "spans written: " .. lines)

table.sort(cpu)
local cpu_s = cpu[(#cpu + 1) // 2]
print(("trace to a file: %d spans in %.3f s: %.0f spans/s (target >= 300000); CPU time %.3f s: %.0f spans/s")
      :format(N, file_s, N / file_s, cpu_s, N / cpu_s))
if only == "file" then return end

local noop_s = median(function()
  local sub = pf.on(function() end)
  local s = spans(N)
  sub:off()
  return s
end)
local none_s = median(function() return spans(N) end)

print(("no-op subscriber: %.0f ns per event (2 events per span); no subscriber: %.0f ns per core.event call")
      :format((noop_s - none_s) / (2 * N) * 1e9, none_s / (2 * N) * 1e9))

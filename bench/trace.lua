-- The cost of observing a run, through the walk's own path (core.event,
-- C pf_emit): spans per second written by trace = file (target: at
-- least 300k/s), and the event cost with a no-op subscriber.
-- usage: build/pocketflow bench/trace.lua [N] [runs]    (default 200000 5)
local pf = require "pocketflow"
local core = require "pocketflow.core"
local trace = require "pocketflow.trace"

local N = tonumber(arg and arg[1]) or 200000
local RUNS = tonumber(arg and arg[2]) or 5
local event, new = core.event, core.event_new

-- N node spans (a start and an end event each) in one run, made as the
-- walk makes them: core.event_new is pf_event_begin (nil when nobody
-- listens, else a table sized for what the bus adds), core.event pf_emit
local function spans(n)
  local t0
  pf.run(function()
    t0 = pf.now()
    local ev = new("run_start")
    if ev then ev.node = "Flow"; ev.path = "Flow"; event(ev) end
    for i = 1, n do
      ev = new("node_start")
      if ev then ev.node = "Step"; ev.path = "Flow/Step"; ev.attempt = 1; event(ev) end
      ev = new("node_end")
      if ev then ev.status = "ok"; ev.exec_res = i; event(ev) end
    end
    ev = new("run_end")
    if ev then ev.status = "ok"; event(ev) end
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

-- CPU seconds of spans(N), median of RUNS
local function cpu_of(f)
  return median(function() local c0 = os.clock(); f(); return os.clock() - c0 end)
end
local noop_s = cpu_of(function()
  local sub = pf.on(function() end)
  spans(N)
  sub:off()
end)
local none_s = cpu_of(function() spans(N) end)

print(("CPU time, no-op subscriber: %.0f ns more per event (2 events per span); no subscriber: %.0f ns per span (the flag tests and the loop)")
      :format((noop_s - none_s) / (2 * N) * 1e9, none_s / N * 1e9))

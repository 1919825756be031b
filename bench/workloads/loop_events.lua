-- loop_events N [noop|trace]: the loop workload (loop.lua) observed: a
-- no-op subscriber (pf.on), or trace = a file. Each step is a node run,
-- so the difference from loop per step is the event cost per node run
-- (a node_start and a node_end through the bus; bench/instr's "events").
local pf = require "pocketflow"
local B = require "workloads.lib"
local N = B.n(1000000)
local mode = arg and arg[2] or "noop"

local flow = require("workloads.step").flow(pf)
local shared = { left = N }
local ends, sub, opts = 0, nil, nil
if mode == "trace" then
  opts = { trace = os.tmpname() }
else
  sub = pf.on(function(ev) if ev.type == "node_end" then ends = ends + 1 end end)
end
local t0 = B.clock()
local last = flow:run(shared, opts)
local dt = B.clock() - t0
B.check(shared.left == 0 and last == "done", "loop ended early: " .. tostring(shared.left))
if sub then
  sub:off()
  B.check(ends == N + 1, "node_end events: " .. ends)
else
  local lines = 0
  for _ in io.lines(opts.trace) do lines = lines + 1 end
  os.remove(opts.trace)
  B.check(lines == N + 2, "spans: " .. lines)
end
B.report(dt)

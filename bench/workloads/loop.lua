-- loop N: one node whose post returns "loop" to itself N times, in a Flow.
local pf = require "pocketflow"
local B = require "workloads.lib"
local N = B.n(1000000)

local methods = require "workloads.step"
local Step = pf.Node:extend("Step")
Step.prep, Step.exec, Step.post = methods.prep, methods.exec, methods.post

-- the walk ends on "done", which has no successor: the engine warns about
-- that once; keep the run's output clean
pf.on_warning = function(msg)
  if not msg:find("flow ends: 'done'", 1, true) then io.stderr:write(msg, "\n") end
end

local step = Step()
step:next(step, "loop")
local flow = pf.Flow{ start = step }
local shared = { left = N }
local t0 = B.clock()
local last = flow:run(shared)
local dt = B.clock() - t0
B.check(shared.left == 0 and last == "done", "loop ended early: " .. tostring(shared.left))
B.report(dt)

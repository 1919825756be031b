-- loop N: one node whose post returns "loop" to itself N times, in a Flow.
local pf = require "pocketflow"
local B = require "workloads.lib"
local N = B.n(1000000)

local flow = require("workloads.step").flow(pf)
local shared = { left = N }
local t0 = B.clock()
local last = flow:run(shared)
local dt = B.clock() - t0
B.check(shared.left == 0 and last == "done", "loop ended early: " .. tostring(shared.left))
B.report(dt)

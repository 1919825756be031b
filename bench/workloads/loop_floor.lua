-- floor for loop N: a plain Lua loop doing the same three method calls on a
-- table object and one successor lookup per step.
local B = require "workloads.lib"
local N = B.n(1000000)

local Step = require("workloads.step").class()

local step = setmetatable({ params = {}, successors = {} }, Step)
step.successors.loop = step
local shared = { left = N }
local t0 = B.clock()
local node, action = step, nil
while node do
  local p = node:prep(shared)
  local e = node:exec(p)
  action = node:post(shared, p, e)
  node = node.successors[action or "default"]
end
local dt = B.clock() - t0
B.check(shared.left == 0 and action == "done", "floor loop ended early")
B.report(dt)

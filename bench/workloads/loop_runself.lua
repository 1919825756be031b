-- The loop floor plus what the contract asks of every step: a fresh self
-- table for the node's run (its params set, reads falling through to the
-- node), as PocketFlow copies the node per step. Not judged: it shows how
-- much of the engine's cost the per-run self alone is.
local B = require "workloads.lib"
local N = B.n(1000000)

local Step = require("workloads.step").class()

local step = setmetatable({ params = {}, successors = {} }, Step)
step.__index = step
step.successors.loop = step
local params = {}
local shared = { left = N }
local t0 = B.clock()
local node, action = step, nil
while node do
  local self = setmetatable({ params = params }, node)
  local p = self:prep(shared)
  local e = self:exec(p)
  action = self:post(shared, p, e)
  node = node.successors[action or "default"]
end
local dt = B.clock() - t0
B.check(shared.left == 0 and action == "done", "floor loop ended early")
B.report(dt)

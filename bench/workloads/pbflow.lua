-- pbflow N: a ParallelBatchFlow over N param sets whose sub-flow is 3
-- nodes, each reading self.params and yielding once with pf.sleep(0).
local pf = require "pocketflow"
local B = require "workloads.lib"
local N = B.n(100000)

local sets = {}
for i = 1, N do sets[i] = { i = i } end

local Step = pf.Node:extend("Step")
function Step:prep() return self.params.i end
function Step:exec(i)
  pf.sleep(0)
  return i
end
function Step:post(shared, _, i) shared.sum = shared.sum + i end

local a, b, c = Step(), Step(), Step()
a:next(b)
b:next(c)
local flow = pf.ParallelBatchFlow{ start = a, prep = function() return sets end }
local shared = { sum = 0 }
local t0 = B.clock()
flow:run(shared)
local dt = B.clock() - t0
B.check(shared.sum == 3 * N * (N + 1) // 2, "wrong sum " .. shared.sum)
B.report(dt)

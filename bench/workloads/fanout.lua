-- fanout N: a ParallelBatchNode over N items; each exec sleeps 10 ms then
-- returns x * 2.
local pf = require "pocketflow"
local B = require "workloads.lib"
local N = B.n(1000000)

local items = {}
for i = 1, N do items[i] = i end

local Fan = pf.ParallelBatchNode:extend("Fan")
function Fan:prep() return items end
function Fan:exec(x)
  pf.sleep(0.01)
  return x * 2
end
function Fan:post(shared, _, res) shared.res = res end

local shared = {}
local node = Fan()
local t0 = B.clock()
node:run(shared)
local dt = B.clock() - t0
local res = shared.res
B.check(#res == N and res[1] == 2 and res[N] == 2 * N, "wrong results")
B.report(dt)

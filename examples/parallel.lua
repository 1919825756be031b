-- A parallel batch: 20 fake API calls of 0.1 s each, at most 5 at once.
-- Sequentially that is 2 s; with max_concurrency = 5 it takes about 0.4 s.
local pf = require "pocketflow"

local Fetch = pf.ParallelBatchNode:extend("Fetch")

function Fetch:prep(shared) return shared.ids end

function Fetch:exec(id)
  pf.sleep(0.1)          -- stands for an HTTP call or an LLM request
  return ("item-%02d"):format(id)
end

function Fetch:post(shared, _, results) shared.results = results end

local ids = {}
for i = 1, 20 do ids[i] = i end
local shared = { ids = ids }

local t0 = pf.now()
Fetch{ max_concurrency = 5 }:run(shared)
local elapsed = pf.now() - t0

print(("fetched %d items: %s ... %s"):format(#shared.results, shared.results[1],
  shared.results[#shared.results]))
print(("elapsed %.2f s for %d x 0.1 s calls at max_concurrency 5 (sequential: %.1f s)")
  :format(elapsed, #ids, #ids * 0.1))

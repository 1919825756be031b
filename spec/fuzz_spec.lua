-- The fuzzer's short fixed-seed run (spec/support/fuzz.lua; the long run
-- is tools/fuzz.lua N SEED): random graphs of every node kind, nested to
-- depth 4, with retries, errors in every phase, sleeps, spawns, cancels
-- and timeouts. Every run returns or raises a value the graph raised, and
-- a sequential graph leaves the same trace twice.
local fuzz = require "support.fuzz"

local graphs = ({ plain = 300, asan = 200, valgrind = 100 })[os.getenv("PF_MODE") or "plain"] or 300

describe("the fuzzer", function()
  it(("runs %d random graphs clean"):format(graphs), function()
    local stats = fuzz.run(graphs, 20261130)
    print(fuzz.summary(stats))
    assert.equal(graphs, stats.graphs)
    assert.same({}, stats.failures)
    -- the graphs did reach every outcome
    assert.is_true(stats.sequential > 0 and (stats.ok or 0) > 0 and (stats.raised or 0) > 0)
    if graphs >= 150 then
      assert.is_true((stats.timeout or 0) > 0 and (stats.cancelled or 0) > 0)
    end
  end)
end)

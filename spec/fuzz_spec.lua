-- The fuzzer's short fixed-seed run (spec/support/fuzz.lua; the long run
-- is tools/fuzz.lua N SEED): random graphs of every node kind, nested to
-- depth 4, with retries, errors in every phase, sleeps, spawns, cancels
-- and timeouts. Every run returns or raises a value the graph raised, and
-- a sequential graph leaves the same trace twice.
local fuzz = require "support.fuzz"

local graphs = ({ plain = 300, asan = 200, valgrind = 100 })[os.getenv("PF_MODE") or "plain"] or 300

-- Known fault, issue 8 item 12 (sched.c, being fixed there): after a task
-- was cancelled mid-exec, a reused thread keeps a stale error handler and
-- later task errors arrive as "error in error handling". Those failures
-- are counted apart and shown as pending below; remove KNOWN once fixed.
local KNOWN = "error in error handling"

describe("the fuzzer", function()
  it(("runs %d random graphs clean"):format(graphs), function()
    local stats = fuzz.run(graphs, 20261130)
    local other, known = {}, 0
    for _, f in ipairs(stats.failures) do
      if f:find(KNOWN, 1, true) then known = known + 1 else other[#other + 1] = f end
    end
    print(fuzz.summary(stats) .. (known > 0 and
      (", %d failures of issue 8 item 12 (pending)"):format(known) or ""))
    assert.equal(graphs, stats.graphs)
    assert.same({}, other)
    -- the graphs did reach every outcome
    assert.is_true(stats.sequential > 0 and (stats.ok or 0) > 0 and (stats.raised or 0) > 0)
    if graphs >= 150 then
      assert.is_true((stats.timeout or 0) > 0 and (stats.cancelled or 0) > 0)
    end
  end)

  pending("issue 8 item 12: 'error in error handling' after a cancelled exec " ..
          "(sched.c) is tolerated above until fixed")
end)

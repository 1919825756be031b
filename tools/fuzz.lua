-- The long fuzz run: random graphs of every node kind (spec/support/fuzz.lua).
-- usage: pocketflow tools/fuzz.lua [N [SEED]]   (or lua5.4 with LUA_PATH
-- and LUA_CPATH pointing at a build tree, as spec/run sets them)
-- Graph i uses seed SEED+i; `tools/fuzz.lua 1 S` replays the graph that
-- failed with seed S; PF_FUZZ_VERBOSE=1 prints each graph as it is made.
-- Exits 1 when a graph failed.
local here = (arg and arg[0] or ""):match("^(.*)/tools/[^/]*$") or "."
package.path = here .. "/spec/?.lua;" .. package.path
local fuzz = require "support.fuzz"

local n = tonumber(arg[1] or "1000")
local seed = tonumber(arg[2] or tostring(os.time()))
if not n or not seed or n < 1 then
  io.stderr:write("usage: tools/fuzz.lua [N [SEED]]\n")
  os.exit(2)
end
local pf = require "pocketflow"
local t0 = pf.now()
local stats = fuzz.run(math.tointeger(n), math.tointeger(seed), os.getenv("PF_FUZZ_VERBOSE"))
print(("seed %d: %s in %.1f s"):format(seed, fuzz.summary(stats), pf.now() - t0))
-- each failure once; the same text from many graphs is counted
local seen, order = {}, {}
for _, f in ipairs(stats.failures) do
  local key = f:gsub("^seed %d+: ", ""):gsub("\n.*", "")
  if not seen[key] then seen[key] = { first = f, n = 0 }; order[#order + 1] = key end
  seen[key].n = seen[key].n + 1
end
print(("%d failures, %d distinct"):format(#stats.failures, #order))
for _, key in ipairs(order) do
  print(("FAIL (x%d) %s"):format(seen[key].n, seen[key].first))
end
os.exit(#stats.failures == 0 and 0 or 1)

-- The flows of spec/queue_spec.lua, built the same way in the spec (the
-- coordinator, or a local run) and in its worker processes
-- (support/queue_worker.lua), so that their graphs hash the same.
--
--   local qf = require "support.queueflow"
--   local flow, q = qf.build{ url =, name =, lease =, variant =, distribute =,
--                             max_concurrency = }
-- Variants: "plain"; "poison" (item 17 raises); "other" (a different
-- exec: its graph differs); "flaky" (odd items fail their first attempt:
-- Square has max_retries = 2); "fallback" (item 5 always raises, and
-- exec_fallback returns its square); "slow" (each item sleeps shared-independent
-- 0.3 s); "count" (each run of an item: HINCRBY runs <i> 1, and the
-- number running at once tracked in running / max_running).
-- The flow: Square (a parallel batch node, items 1..shared.n, results
-- summed by post into shared.sum and kept in shared.squares), then
-- PerItem (a parallel batch flow over 10 param tables; each walk sets
-- shared["k" .. k] and keeps shared.keep as it was).
local pf = require "pocketflow"

local qf = {}

local function redis_for(url)
  qf.clients = qf.clients or {}
  local r = qf.clients[url]
  if not r then
    r = pf.redis.connect(url)
    qf.clients[url] = r
  end
  return r
end

function qf.close()
  for _, r in pairs(qf.clients or {}) do r:close() end
  qf.clients = nil
end

function qf.build(o)
  local variant = o.variant or "plain"
  local q = pf.queue{ redis = o.url, name = o.name, lease = o.lease or 30,
                      max_deliveries = o.max_deliveries or 3 }
  local Square = pf.ParallelBatchNode:extend("Square")
  function Square.prep(_, shared)
    local t = {}
    for i = 1, shared.n do t[i] = i end
    return t
  end
  if variant == "other" then
    function Square.exec(_, x) return x * x + 0 end
  else
    function Square.exec(self, x)
      if variant == "poison" and x == 17 then error("poison " .. x) end
      if variant == "flaky" and x % 2 == 1 and self.cur_retry == 0 then error("flaky") end
      if variant == "fallback" and x == 5 then error("always") end
      if variant == "slow" then pf.sleep(0.3) end
      if variant == "count" then
        local r = redis_for(self.params.url)
        r:call("HINCRBY", "runs", x, 1)
        local now = r:call("INCR", "running")
        r:call("EVAL", "if tonumber(redis.call('GET', KEYS[2]) or 0) < tonumber(ARGV[1]) then "
          .. "redis.call('SET', KEYS[2], ARGV[1]) end", 2, "running", "max_running", now)
        pf.sleep(self.params.sleep or 0.05)
        r:call("DECR", "running")
      end
      return x * x
    end
  end
  function Square.exec_fallback(_, x, err)
    if variant == "fallback" then return x * x end
    error(err, 0)
  end
  function Square.post(_, shared, _, res)
    local s = 0
    for i = 1, #res do s = s + res[i] end
    shared.sum, shared.squares = s, res
  end

  local PerItem = pf.ParallelBatchFlow:extend("PerItem")
  function PerItem.prep()
    local t = {}
    for k = 1, 10 do t[k] = { k = k } end
    return t
  end
  local Set = pf.Node:extend("Set")
  function Set.exec(self) return self.params.k end
  function Set.post(_, shared, _, k)
    shared["k" .. k] = { k = k, seen = shared.keep }
  end

  local dist = o.distribute ~= false and q or nil
  local square = Square{ distribute = dist, max_concurrency = o.max_concurrency,
                         max_retries = 2 }
  local per = PerItem{ start = Set(), distribute = dist, max_concurrency = o.max_concurrency }
  square:next(per)
  local flow = pf.Flow{ start = square, name = "Main" }
  flow:set_params({ url = o.url, sleep = o.sleep })
  return flow, q
end

-- the flow's result without Redis: what every distributed run must give
function qf.local_result(n)
  local flow = qf.build{ url = "redis://127.0.0.1:1", name = "local", distribute = false }
  local shared = { n = n, keep = "kept" }
  flow:run(shared)
  return shared
end

return qf

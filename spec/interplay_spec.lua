-- The features together: durable runs (API.md section 8) inside timed
-- flows and attempts (section 6), and with distributed batches (9).
local pf = require "pocketflow"

-- a1(timeout) -> Inner(Flow, start = a2 -> a3) -> b(BatchNode, timeout,
-- deadline); Inner timed or not; fail(name) says whether a node's exec
-- raises this time
local ran = {}
local function graph(timed, fail, sleep)
  local N = pf.Node:extend("N")
  function N:prep(s)
    ran[#ran + 1] = self.name
    s.ran = (s.ran or "") .. self.name .. " "
  end
  function N:exec()
    if fail and fail(self.name) then error(self.name .. " failed", 0) end
    if sleep and sleep[self.name] then pf.sleep(sleep[self.name]) end
  end
  function N:post(s)
    s.keys = s.keys or {}
    s.keys[self.name] = self.idempotency_key
  end
  local B = pf.BatchNode:extend("B")
  function B:prep() return { 1, 2 } end
  function B:exec(x) return x * 2 end
  function B:post(s, _, r)
    s.b = r
    s.keys.b = self.idempotency_key
  end
  local a1, a2, a3 = N{ name = "a1", timeout = 1 }, N{ name = "a2" }, N{ name = "a3" }
  a2:next(a3)
  local inner = pf.Flow{ start = a2, name = "Inner", timeout = timed and 5 or nil }
  local b = B{ name = "b", timeout = 1, deadline = 3 }
  a1:next(inner):next(b)
  return pf.Flow{ start = a1, name = "Main" }
end

local function paths(h)
  local out = {}
  for i, e in ipairs(h) do out[i] = e.path end
  return out
end

describe("durable runs through timed flows", function()
  it("save after every post inside a timed flow, with the keys of an untimed one", function()
    local got = {}
    for _, timed in ipairs { false, true } do
      local store, s = pf.memory(), {}
      local _, run = graph(timed):run(s, { store = store, run_id = "x" })
      assert.equals("done", run.status)
      got[timed] = { paths(store:history("x")), s.keys, s.b }
    end
    assert.equals(8, #got[false][1])
    assert.same(got[false], got[true])
    assert.equals("x:Main/Inner#2/a3#2", got[true][2].a3)
  end)

  it("a run failed inside a timed flow resumes there: done nodes once, keys kept", function()
    local store, s = pf.memory(), {}
    local once = true
    local flow = graph(true, function(name)
      if name == "a3" and once then once = false return true end
    end)
    ran = {}
    local ok, err = pcall(flow.run, flow, s, { store = store, run_id = "r" })
    assert.is_false(ok)
    assert.matches("^a3 failed", tostring(err))
    assert.equals("a1 a2 a3 ", s.ran)
    local _, run = flow:resume(store, "r")
    assert.equals("done", run.status)
    assert.equals("a1 a2 a3 a3", table.concat(ran, " "))
    local c = store:get("r").shared
    assert.equals("a1 a2 a3 ", c.ran)
    assert.same({ 2, 4 }, c.b)
    assert.equals("r:Main/Inner#2/a2#1", c.keys.a2)
    assert.equals("r:Main/Inner#2/a3#2", c.keys.a3)
    assert.equals("r:Main/b#3", c.keys.b)
  end)

  it("the flow's timeout bounds the resumed rest again", function()
    local store = pf.memory()
    local first = true
    local flow = graph(true, function(name)
      if name == "a3" and first then first = false return true end
    end, nil)
    assert.is_false(pcall(flow.run, flow, {}, { store = store, run_id = "t" }))
    -- the resume: a3 now sleeps past a shorter timeout of Inner
    flow = graph(true, nil, { a3 = 30 })
    flow.start_node.successors.default.timeout = 0.3
    local t0 = pf.now()
    ran = {}
    local ok, err = pcall(flow.resume, flow, store, "t")
    assert.is_false(ok)
    assert.matches("^Inner: flow timed out after 0.3 s", tostring(err))
    assert.is_true(pf.now() - t0 < 25)
    assert.same({ "a3" }, ran)
    assert.equals("a1 a2 ", store:get("t").shared.ran)   -- saved before a3 ran
    assert.equals("failed", store:runs()[1].status)
  end)

  it("a timed flow as the run's node, and nested timed flows, keep their keys", function()
    local got = {}
    for _, timed in ipairs { false, true } do
      local N = pf.Node:extend("N")
      function N:post(s) s[self.name] = self.idempotency_key end
      local leaf = N{ name = "leaf" }
      local mid = pf.Flow{ start = leaf, name = "Mid", timeout = timed and 9 or nil }
      local top = pf.Flow{ start = mid, name = "Top", timeout = timed and 9 or nil }
      local store, s = pf.memory(), {}
      top:run(s, { store = store, run_id = "n" })
      got[timed] = { paths(store:history("n")), s }
    end
    assert.same(got[false], got[true])
    assert.equals("n:Top/Mid#1/leaf#1", got[true][2].leaf)
  end)
end)

describe("durable runs with distributed batches", function()
  local redisd = require "support.redisd"
  local qf = require "support.queueflow"
  local srv
  setup(function() srv = redisd.start() end)
  teardown(function()
    pf.run(function() qf.close() end)
    if srv then srv:kill() end
  end)

  local local_result = qf.local_result

  it("a run cut while its items are on workers resumes: the batch runs again", function()
    local flow, q = qf.build{ url = srv.url, name = "durable_cut", lease = 1, variant = "slow" }
    local store = pf.memory()
    local shared = { n = 12, keep = "kept" }
    pf.run(function()
      local r = pf.redis.connect(srv.url)
      local w = pf.spawn(pf.work, q, flow, { concurrency = 3 })
      -- the cut: the run's task is cancelled once some items ran
      local run = pf.spawn(function()
        flow:run(shared, { store = store, run_id = "d" })
      end)
      while q:stats().in_flight == 0 do pf.sleep(0.01) end
      run:cancel()
      local last, rec = flow:resume(store, "d")
      local st = q:stats()
      w:cancel()
      while q:stats().workers > 0 do pf.sleep(0.02) end
      -- the cut batch's cleanup (a task of its own) takes its keys away
      while #r:call("KEYS", "pf:{durable_cut}:[mr]:*") > 0 do pf.sleep(0.02) end
      r:close()
      q:close()
      qf.close()
      assert.equals("done", rec.status)
      assert.is_nil(last)
      assert.same({ pending = 0, in_flight = 0, dead = 0 },
                  { pending = st.pending, in_flight = st.in_flight, dead = st.dead })
    end)
    local got = store:get("d").shared
    assert.same(local_result(12), got)
  end)

  it("an item's timeout and deadline apply on the worker", function()
    local q = pf.queue{ redis = srv.url, name = "timed_items", lease = 5 }
    local Slow = pf.ParallelBatchNode:extend("Slow")
    function Slow.prep() return { 1, 2, 3 } end
    function Slow.exec(self, x)
      -- the first attempt of item 2 hangs: only its timeout ends it
      if x == 2 and self.cur_retry == 0 then pf.sleep(60) end
      return x * 2
    end
    function Slow.post(_, s, _, r) s.slow = r end
    local Late = pf.ParallelBatchNode:extend("Late")
    function Late.prep() return { 1 } end
    function Late.exec() pf.sleep(60) end
    function Late.exec_fallback(_, _, err) return tostring(err):match("^[^\n]*") end
    function Late.post(_, s, _, r) s.late = r[1] end
    local slow = Slow{ distribute = q, timeout = 0.3, max_retries = 2 }
    slow:next(Late{ distribute = q, deadline = 0.5, max_retries = 5, wait = 0.1 })
    local flow = pf.Flow{ start = slow, name = "Main" }
    local shared = {}
    local t0 = pf.now()
    pf.run(function()
      local w = pf.spawn(pf.work, q, flow, { concurrency = 4 })
      local ok, err = pcall(pf.timeout, 50, flow.run, flow, shared)
      w:cancel()
      while q:stats().workers > 0 do pf.sleep(0.02) end
      q:close()
      assert(ok, err)
    end)
    assert.is_true(pf.now() - t0 < 45)
    assert.same({ 2, 4, 6 }, shared.slow)
    assert.matches("^Late: exec attempt 1 of 5 ran past the deadline of 0.5 s", shared.late)
  end)
end)

-- Batch and parallel batch nodes and flows (API.md §2 "Batches")
local pf = require "pocketflow"

local function double_node(class, opts)
  opts = opts or {}
  return class{
    max_concurrency = opts.max_concurrency, max_retries = opts.max_retries,
    prep = function(_, shared) return shared.items end,
    exec = opts.exec or function(_, x) return x * 2 end,
    post = function(_, shared, prep_res, results)
      shared.prep_res, shared.results = prep_res, results
      return "done"
    end,
  }
end

describe("BatchNode", function()
  it("runs exec once per item, in order, and gives post the results", function()
    local order = {}
    local n = double_node(pf.BatchNode, { exec = function(_, x)
      order[#order + 1] = x
      return x * 2
    end })
    local shared = { items = { 3, 1, 2 } }
    assert.equal("done", n:run(shared))
    assert.same({ 3, 1, 2 }, order)
    assert.same({ 6, 2, 4 }, shared.results)
    assert.equal(shared.items, shared.prep_res)
  end)

  it("gives each item its own retries and fallback", function()
    local attempts = {}
    local n = pf.BatchNode{ max_retries = 2,
      prep = function() return { "a", "b" } end,
      exec = function(self, x)
        attempts[x] = (attempts[x] or 0) + 1
        if x == "a" or self.cur_retry == 0 then error("fail " .. x) end
        return x
      end,
      exec_fallback = function(_, x) return "fb-" .. x end,
      post = function(_, s, _, r) s.r = r end }
    local s = {}
    n:run(s)
    assert.same({ "fb-a", "b" }, s.r)
    assert.same({ a = 2, b = 2 }, attempts)
  end)

  it("treats a nil prep as an empty batch", function()
    local n = pf.BatchNode{ post = function(_, s, p, r) s.p, s.r = p, r end }
    local s = {}
    n:run(s)
    assert.is_nil(s.p)
    assert.same({}, s.r)
  end)

  it("rejects a prep that is not a table, naming the node's class", function()
    local Named = pf.BatchNode:extend("Summaries")
    function Named:prep() return "oops" end
    local ok, err = pcall(function() return Named():run({}) end)
    assert.is_false(ok)
    assert.matches("Summaries: prep must return an array", err)
    assert.matches("got string", err)
  end)
end)

describe("ParallelBatchNode", function()
  it("runs items concurrently and keeps results in item order", function()
    -- every item starts before any ends: they all wait at once (a count,
    -- not a timing; run one after the other, at most one would wait)
    local inflight, peak = 0, 0
    local n = double_node(pf.ParallelBatchNode, { exec = function(_, x)
      inflight = inflight + 1
      peak = math.max(peak, inflight)
      pf.sleep(x / 100)
      inflight = inflight - 1
      return x * 2
    end })
    local shared = { items = { 5, 1, 3, 2, 4 } }
    n:run(shared)
    assert.same({ 10, 2, 6, 4, 8 }, shared.results)
    assert.equal(5, peak)
  end)

  it("keeps at most max_concurrency items in flight", function()
    local in_flight, peak = 0, 0
    local n = double_node(pf.ParallelBatchNode, { max_concurrency = 3, exec = function(_, x)
      in_flight = in_flight + 1
      peak = math.max(peak, in_flight)
      pf.sleep(0.01)
      in_flight = in_flight - 1
      return x
    end })
    local items = {}
    for i = 1, 20 do items[i] = i end
    local shared = { items = items }
    n:run(shared)
    assert.equal(3, peak)
    assert.same(items, shared.results)
  end)

  it("gives each item its own cur_retry", function()
    local seen = {}
    local n = pf.ParallelBatchNode{ max_retries = 3,
      prep = function() return { 1, 2, 3 } end,
      exec = function(self, x)
        pf.sleep(0.001 * x)
        if self.cur_retry < x - 1 then error("retry") end
        seen[x] = self.cur_retry
        return x
      end }
    n:run({})
    assert.same({ 0, 1, 2 }, seen)
  end)

  it("lets items read fields prep set on self", function()
    local n = pf.ParallelBatchNode{
      prep = function(self) self.factor = 10; return { 1, 2 } end,
      exec = function(self, x) return x * self.factor end,
      post = function(_, s, _, r) s.r = r end }
    local s = {}
    n:run(s)
    assert.same({ 10, 20 }, s.r)
  end)

  -- with one attempt and the default fallback an item runs exec as its
  -- task's body (group.c); with a fallback it runs the full machine
  for _, case in ipairs{ { "one attempt", {} },
                         { "a fallback", { exec_fallback = function() return -1 end } } } do
    it("keeps what each item writes on self to that item, with " .. case[1], function()
      local opts = { prep = function() return { 1, 2, 3 } end,
        exec = function(self, x)
          self.mine = x
          pf.sleep(0.001 * (4 - x))  -- the last item writes first
          return self.mine * 10 + self.cur_retry
        end,
        post = function(self, s, _, r) s.r, s.left = r, rawget(self, "mine") end }
      for k, v in pairs(case[2]) do opts[k] = v end
      local n, s = pf.ParallelBatchNode(opts), {}
      n:run(s)
      assert.same({ 10, 20, 30 }, s.r)
      assert.is_nil(s.left)
      assert.is_nil(rawget(n, "mine"))
    end)
  end

  it("reports an item's error at the user's line, with its traceback", function()
    local n = pf.ParallelBatchNode{ prep = function() return { 1, 2 } end,
      exec = function(_, x) pf.sleep(0); if x == 2 then error("bad item") end; return x end }
    local ok, err = pcall(n.run, n, {})
    assert.is_false(ok)
    assert.matches("batch_spec.lua:%d+: bad item", err)
    assert.matches("stack traceback:", err, 1, true)
  end)

  it("cancels the others on the first failure and raises it", function()
    local finished = 0
    local n = pf.ParallelBatchNode{
      prep = function() return { 1, 2, 3, 4 } end,
      exec = function(_, x)
        if x == 2 then pf.sleep(0.01); error("item two failed") end
        pf.sleep(0.05)
        finished = finished + 1
        return x
      end }
    local ok, err = pcall(function() return n:run({}) end)
    assert.is_false(ok)
    assert.matches("item two failed", err)
    pf.run(function() pf.sleep(0.08) end)
    assert.equal(0, finished)
  end)

  it("propagates a table error as the same object", function()
    local e = {}
    local n = pf.ParallelBatchNode{ prep = function() return { 1 } end,
                                    exec = function() error(e) end }
    local ok, err = pcall(n.run, n, {})
    assert.is_false(ok)
    assert.is_true(rawequal(e, err))
  end)

  it("runs an empty batch without tasks", function()
    local n = pf.ParallelBatchNode{ post = function(_, s, _, r) s.r = r end }
    local s = {}
    n:run(s)
    assert.same({}, s.r)
  end)

  it("rejects a bad max_concurrency", function()
    local n = pf.ParallelBatchNode{ max_concurrency = 0, prep = function() return { 1 } end }
    local ok, err = pcall(n.run, n, {})
    assert.is_false(ok)
    assert.matches("max_concurrency must be a positive integer", err)
  end)
end)

describe("BatchFlow", function()
  it("runs the walk once per param table, in order, with merged params", function()
    local seen = {}
    local leaf = pf.Node{ post = function(self)
      seen[#seen + 1] = self.params.base .. ":" .. self.params.file
    end }
    local bf = pf.BatchFlow{ start = leaf,
      prep = function() return { { file = "a" }, { file = "b" } } end,
      post = function(_, s, p, e) s.p, s.e = p, e; return "end" end }
    bf:set_params({ base = "B", file = "overridden" })
    local s = {}
    assert.equal("end", bf:run(s))
    assert.same({ "B:a", "B:b" }, seen)
    assert.equal(2, #s.p)
    assert.is_nil(s.e)
  end)

  it("runs no walk for a nil prep", function()
    local runs = 0
    local bf = pf.BatchFlow{ start = pf.Node{ post = function() runs = runs + 1 end } }
    bf:run({})
    assert.equal(0, runs)
  end)

  it("rejects items that are not param tables", function()
    local bf = pf.BatchFlow{ start = pf.Node(), prep = function() return { 1 } end }
    local ok, err = pcall(bf.run, bf, {})
    assert.is_false(ok)
    assert.matches("array of param tables %(item 1 is a number%)", err)
  end)
end)

describe("ParallelBatchFlow", function()
  it("runs the walks concurrently, each with its own params", function()
    local seen = {}
    local a = pf.Node{ exec = function() pf.sleep(0.02) end,
                       post = function(self) seen[#seen + 1] = self.params.i end }
    local b = pf.Node{ post = function(self, s) s[self.params.i] = self.params.tag end }
    local _ = a >> b
    local pbf = pf.ParallelBatchFlow{ start = a,
      prep = function() local r = {} for i = 1, 10 do r[i] = { i = i } end return r end }
    pbf:set_params({ tag = "t" })
    local s = {}
    local t0 = pf.now()
    pbf:run(s)
    assert.is_true(pf.now() - t0 < 0.15)
    assert.equal(10, #seen)
    for i = 1, 10 do assert.equal("t", s[i]) end
  end)

  it("keeps params and cur_retry apart for two runs of one node at once", function()
    local log = {}
    local node = pf.Node{ max_retries = 2,
      exec = function(self)
        local mine = self.params.i
        pf.sleep(0.01 * (3 - mine))
        if self.cur_retry == 0 and mine == 1 then error("once") end
        log[#log + 1] = { mine, self.params.i, self.cur_retry }
      end }
    local pbf = pf.ParallelBatchFlow{ start = node,
      prep = function() return { { i = 1 }, { i = 2 } } end }
    pbf:run({})
    table.sort(log, function(x, y) return x[1] < y[1] end)
    assert.same({ { 1, 1, 1 }, { 2, 2, 0 } }, log)
  end)

  it("honours max_concurrency", function()
    local in_flight, peak = 0, 0
    local n = pf.Node{ exec = function()
      in_flight = in_flight + 1
      peak = math.max(peak, in_flight)
      pf.sleep(0.005)
      in_flight = in_flight - 1
    end }
    local pbf = pf.ParallelBatchFlow{ start = n, max_concurrency = 2,
      prep = function() local r = {} for i = 1, 8 do r[i] = { i = i } end return r end }
    pbf:run({})
    assert.equal(2, peak)
  end)

  it("cancels the other walks on the first failure", function()
    local completed = 0
    local n = pf.Node{ exec = function(self)
      if self.params.i == 1 then error("walk one broke") end
      pf.sleep(0.05)
      completed = completed + 1
    end }
    local pbf = pf.ParallelBatchFlow{ start = n,
      prep = function() return { { i = 1 }, { i = 2 }, { i = 3 } } end }
    local ok, err = pcall(pbf.run, pbf, {})
    assert.is_false(ok)
    assert.matches("walk one broke", err)
    pf.run(function() pf.sleep(0.07) end)
    assert.equal(0, completed)
  end)
end)

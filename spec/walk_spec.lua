-- The walk's paths through its states (src/walk.h): options changed after
-- construction, item frames nested in parallel walks, and the group's
-- order and first failure whatever the item body is.
local pf = require "pocketflow"

-- runs fn outside any task, so that its error leaves a task and gains
-- its where line; returns the error's first two lines
local function failing(fn)
  local ok, err = pcall(fn)
  assert.is_false(ok)
  assert.equal("string", type(err))
  local l = {}
  for line in (err .. "\n"):gmatch("(.-)\n") do l[#l + 1] = line end
  return l[1], l[2]
end

describe("the walk reads max_retries when it runs", function()
  it("raises on one made invalid after construction, naming the attempt", function()
    local n = pf.Node{ name = "F", exec = function() error("boom", 0) end }
    n.max_retries = 0
    local msg, where = failing(function() return pf.Flow{ name = "Main", start = n }:run({}) end)
    assert.matches("F: max_retries must be a positive integer$", msg)
    assert.equal("in Main > F (exec, attempt 1)", where)
  end)

  it("counts a numeric string, in a node and in parallel items", function()
    local calls = 0
    local n = pf.Node{ exec = function() calls = calls + 1; error("again", 0) end,
                       exec_fallback = function() return "fell back" end,
                       post = function(_, _, _, r) return r end }
    n.max_retries = "3"
    pf.Flow{ start = n }:run({})
    assert.equal(3, calls)
    local p = pf.ParallelBatchNode{ name = "P", prep = function() return { 1, 2, 3 } end,
      exec = function(_, x) if x == 2 then error("bad", 0) end return x end }
    p.max_retries = "1"
    local msg, where = failing(function() return pf.Flow{ name = "Main", start = p }:run({}) end)
    assert.equal("bad", msg)
    assert.equal("in Main > P (exec, attempt 1 of 1, item 2)", where)
  end)
end)

describe("parallel items inside parallel walks", function()
  it("keep every result in order under max_concurrency", function()
    local P = pf.ParallelBatchNode:extend("P")
    function P:prep() return { 1, 2, 3, 4 } end
    function P:exec(x) pf.sleep(0.001 * (5 - x)); return x * self.params.k end
    function P:post(shared, _, res) shared[self.params.k] = res end
    local seen
    local pb = pf.ParallelBatchFlow{ start = P{ max_concurrency = 2 }, max_concurrency = 2,
      prep = function() return { { k = 1 }, { k = 10 }, { k = 100 } } end,
      post = function(_, _, _, exec_res) seen = exec_res; return "end" end }
    local shared = {}
    assert.equal("end", pb:run(shared))
    assert.same({ [1] = { 1, 2, 3, 4 }, [10] = { 10, 20, 30, 40 },
                  [100] = { 100, 200, 300, 400 } }, shared)
    assert.is_nil(seen)
  end)

  it("name the item frame's attempt and the path through the walk", function()
    local fails = 0
    local P = pf.ParallelBatchNode:extend("P")
    function P:prep() return { 1, 2, 3 } end
    function P:exec(x)
      pf.sleep(0)
      if self.params.k == 2 and x == 3 then fails = fails + 1; error("no " .. x, 0) end
      return x
    end
    local pb = pf.ParallelBatchFlow{ name = "PB", start = P{ max_retries = 2 },
      prep = function() return { { k = 1 }, { k = 2 } } end }
    local msg, where = failing(function() return pf.Flow{ name = "Main", start = pb }:run({}) end)
    assert.equal("no 3", msg)
    assert.equal("in Main > PB > P (exec, attempt 2 of 2, item 3)", where)
    assert.equal(2, fails)
  end)

  it("cancel the others at the first failure, whatever each item runs", function()
    local finished = 0
    local P = pf.ParallelBatchNode:extend("P")
    function P:prep() return { 1, 2, 3, 4 } end
    function P:exec(x)
      if x == 1 then error("first", 0) end
      pf.sleep(0.05)
      finished = finished + 1
    end
    for _, fallback in ipairs({ false, true }) do
      finished = 0
      local p = P{ name = "P" }
      if fallback then p.exec_fallback = function(_, _, err) error(err, 0) end end
      local msg = failing(function() return pf.Flow{ start = p }:run({}) end)
      assert.equal("first", msg)
      pf.run(function() pf.sleep(0.1) end)
      assert.equal(0, finished)
    end
  end)
end)

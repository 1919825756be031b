-- Names, run options, errors that say where (API.md §5)
local pf = require "pocketflow"

local warnings = require "support.warnings"

-- the lines of an error message
local function lines(err)
  local t = {}
  for l in (err .. "\n"):gmatch("(.-)\n") do t[#t + 1] = l end
  return t
end

-- runs fn outside any task, so that its error leaves a task (the implicit
-- pf.run's) and gains its traceback; returns the error's lines
local function failing(fn)
  local ok, err = pcall(fn)
  assert.is_false(ok)
  assert.equal("string", type(err))
  return lines(err), err
end

describe("node names", function()
  it("come from the name option, else extend's name, else the class", function()
    local Fetch = pf.Node:extend("Fetch")
    assert.equal("Fetch", Fetch().name)
    assert.equal("Research", Fetch{ name = "Research" }.name)
    assert.equal("Node", pf.Node().name)
    assert.equal("Fetch", Fetch:extend()().name)
    assert.equal("Flow", pf.Flow().name)
    assert.equal("ParallelBatchNode", pf.ParallelBatchNode().name)
    assert.equal("BaseNode", pf.BaseNode().name)
    assert.equal("Main", pf.Flow{ name = "Main" }.name)
  end)

  it("show in tostring", function()
    assert.matches("^Research: 0x", tostring(pf.Node{ name = "Research" }))
  end)

  it("must be strings", function()
    local ok, err = pcall(pf.Node, { name = 42 })
    assert.is_false(ok)
    assert.matches("Node: name must be a string %(got number%)$", err)
  end)

  it("name the node in option errors", function()
    local ok, err = pcall(pf.Node, { name = "Fetch", max_retries = 0 })
    assert.is_false(ok)
    assert.matches("Fetch: max_retries must be a positive integer %(got 0%)$", err)
  end)

  it("name the node in warnings", function()
    local a = pf.Node{ name = "Decide", post = function() return "zzz" end }
    local got = warnings.of(function()
      a:next(pf.Node(), "x")
      a:next(pf.Node(), "x")
      a:run({})
      pf.Flow(a):run({})
    end)
    assert.same({
      "Decide: overwriting successor for action 'x'",
      "Decide: node won't run successors; use a Flow",
      "Decide: flow ends: 'zzz' not found in [x]",
    }, got)
  end)
end)

describe("run options", function()
  it("may be nil or a table of known keys", function()
    local n = pf.Node{ post = function() return "ok" end }
    assert.equal("ok", n:run({}, nil))
    assert.equal("ok", n:run({}, {}))
    assert.equal("ok", pf.Flow(n):run({}, {}))
  end)

  it("raise on an unknown key, at the caller's line", function()
    local n = pf.Node()
    local ok, err = pcall(function() return n:run({}, { x = 1 }) end)
    assert.is_false(ok)
    assert.matches("^spec/names_spec%.lua:%d+: unknown run option 'x'$", err)
    ok, err = pcall(function() return pf.Flow(n):run({}, { [1] = "trace" }) end)
    assert.is_false(ok)
    assert.matches(": unknown run option '1'$", err)
  end)

  it("raise the same inside a task", function()
    local ok, err = pf.run(function()
      return pcall(function() return pf.Node():run({}, { retries = 3 }) end)
    end)
    assert.is_false(ok)
    assert.matches("^spec/names_spec%.lua:%d+: unknown run option 'retries'$", err)
  end)

  it("say which need a store", function()
    for _, k in ipairs({ "run_id", "durability", "transient" }) do
      local ok, err = pcall(function() return pf.Node():run({}, { [k] = "x" }) end)
      assert.is_false(ok)
      assert.matches(": run option '" .. k .. "' needs a store$", err)
    end
  end)

  it("must be a table", function()
    local ok, err = pcall(function() return pf.Node():run({}, "fast") end)
    assert.is_false(ok)
    assert.matches(": run: options must be a table %(got string%)$", err)
  end)

  it("are checked before anything runs", function()
    local ran = false
    local n = pf.Node{ prep = function() ran = true end }
    assert.has_error(function() n:run({}, { x = 1 }) end)
    assert.is_false(ran)
  end)
end)

describe("an error that leaves a node", function()
  it("names the path, phase, attempt and item, after the message", function()
    local Fetch = pf.BatchNode:extend("Fetch")
    function Fetch:prep() return { 1, 2, 3, 4, 5, 6, 7, 8 } end
    function Fetch:exec(i) if i == 7 then error("upstream 503") end return i end
    local research = pf.Flow{ name = "Research", start = Fetch{ max_retries = 3 } }
    local main = pf.Flow{ name = "Main", start = research }
    local l, err = failing(function() return main:run({}) end)
    assert.matches("^spec/names_spec%.lua:%d+: upstream 503$", l[1])
    assert.equal("in Main > Research > Fetch (exec, attempt 3 of 3, item 7)", l[2])
    assert.equal("stack traceback:", l[3])
    assert.truthy(err:find("upstream 503", 1, true))
    assert.truthy(err:find("names_spec.lua:%d+: in function")) -- the user's line
  end)

  it("leaves the message itself unchanged", function()
    local n = pf.Node{ name = "Fetch", exec = function() error("boom", 0) end }
    local l = failing(function() return n:run({}) end)
    assert.equal("boom", l[1])
    assert.equal("in Fetch (exec, attempt 1 of 1)", l[2])
  end)

  it("names prep and post", function()
    local a = pf.Node{ name = "A", prep = function() error("p", 0) end }
    local b = pf.Node{ name = "B", post = function() error("q", 0) end }
    assert.same({ "p", "in Main > A (prep)" },
                { table.unpack(failing(function() return pf.Flow{ name = "Main", start = a }:run({}) end), 1, 2) })
    assert.same({ "q", "in Main > B (post)" },
                { table.unpack(failing(function() return pf.Flow{ name = "Main", start = b }:run({}) end), 1, 2) })
  end)

  it("names exec_fallback when the fallback fails", function()
    local n = pf.Node{ name = "F", max_retries = 2,
      exec = function() error("first", 0) end,
      exec_fallback = function() error("second", 0) end }
    local l = failing(function() return n:run({}) end)
    assert.same({ "second", "in F (exec_fallback, attempt 2 of 2)" }, { l[1], l[2] })
  end)

  it("keeps exec's line when the fallback re-raises its error", function()
    local n = pf.Node{ name = "F", max_retries = 2,
      exec = function() error("orig") end,
      exec_fallback = function(_, _, err) error(err, 0) end }
    local l = failing(function() return n:run({}) end)
    assert.matches(": orig$", l[1])
    assert.equal("in F (exec, attempt 2 of 2)", l[2])
  end)

  it("names the item of a parallel batch, run directly or with retries", function()
    for _, retries in ipairs({ 1, 2 }) do
      local P = pf.ParallelBatchNode:extend("P")
      function P:prep() return { 1, 2, 3, 4, 5 } end
      function P:exec(x) pf.sleep(0); if x == 4 then error("bad " .. x, 0) end return x end
      local flow = pf.Flow{ name = "Main", start = P{ max_retries = retries } }
      local l = failing(function() return flow:run({}) end)
      assert.equal("bad 4", l[1])
      assert.equal(("in Main > P (exec, attempt %d of %d, item 4)"):format(retries, retries), l[2])
    end
  end)

  it("names the walk of a parallel batch flow, and the batch flow's item", function()
    local X = pf.Node:extend("X")
    function X:post() if self.params.k == 3 then error("no", 0) end end
    for _, class in ipairs({ pf.ParallelBatchFlow, pf.BatchFlow }) do
      local pb = class{ name = "PB", start = X(),
                        prep = function() return { { k = 1 }, { k = 2 }, { k = 3 } } end }
      local l = failing(function() return pf.Flow{ name = "Main", start = pb }:run({}) end)
      assert.same({ "no", "in Main > PB > X (post, item 3)" }, { l[1], l[2] })
    end
  end)

  it("names the innermost node of a flow run inside exec", function()
    local inner = pf.Flow{ name = "Sub", start = pf.Node{ name = "Deep", prep = function() error("deep", 0) end } }
    local outer = pf.Node{ name = "Outer", exec = function() return inner:run({}) end }
    local l = failing(function() return pf.Flow{ name = "Main", start = outer }:run({}) end)
    assert.same({ "deep", "in Sub > Deep (prep)" }, { l[1], l[2] })
  end)

  it("names errors of the engine's own checks", function()
    local l = failing(function() return pf.Flow{ name = "Empty" }:run({}) end)
    assert.matches("Empty: flow has no start node$", l[1])
    assert.equal("in Empty (walk)", l[2])
    local b = pf.BatchNode{ name = "B", prep = function() return 5 end }
    l = failing(function() return pf.Flow{ name = "Main", start = b }:run({}) end)
    assert.matches("B: prep must return an array of items %(got number%)$", l[1])
    assert.equal("in Main > B (prep)", l[2])
  end)

  it("is added once, to the first line only", function()
    local n = pf.Node{ name = "N", exec = function() error("x", 0) end }
    local _, err = failing(function()
      return pf.Flow{ name = "Outer", start = pf.Node{ exec = function() return n:run({}) end } }:run({})
    end)
    local _, count = err:gsub("\nin ", "")
    assert.equal(1, count)
    local _, tracebacks = err:gsub("stack traceback:", "")
    assert.equal(1, tracebacks)
  end)

  it("names the node whose exec made a bad run call", function()
    local inner = pf.Node{ name = "Inner" }
    local outer = pf.Node{ name = "Outer", exec = function() return inner:run({}, { x = 1 }) end }
    local l = failing(function() return pf.Flow{ name = "Main", start = outer }:run({}) end)
    assert.matches(": unknown run option 'x'$", l[1])
    assert.equal("in Main > Outer (exec, attempt 1 of 1)", l[2])
    local p = pf.ParallelBatchNode{ name = "P", prep = function() return { 1, 2 } end,
      exec = function(_, x) if x == 2 then return inner:run({}, { z = 1 }) end end }
    l = failing(function() return pf.Flow{ name = "Main", start = p }:run({}) end)
    assert.matches(": unknown run option 'z'$", l[1])
    assert.equal("in Main > P (exec, attempt 1 of 1, item 2)", l[2])
  end)

  it("passes a table through unchanged", function()
    local e = { code = 503 }
    local n = pf.Node{ max_retries = 2, exec = function() error(e) end }
    local ok, got = pcall(function() return pf.Flow(n):run({}) end)
    assert.is_false(ok)
    assert.is_true(rawequal(e, got))
    assert.is_nil(getmetatable(got))
    assert.same({ code = 503 }, got)
  end)

  it("is not added to an error caught inside the task", function()
    local n = pf.Node{ name = "N", exec = function() error("x", 0) end }
    local ok, err = pf.run(function() return pcall(n.run, n, {}) end)
    assert.is_false(ok)
    assert.equal("x", err)
  end)
end)

describe("a post that returns a non-string action", function()
  it("raises when the node has successors", function()
    for _, case in ipairs({ { 42, "a number (42)" }, { 4.5, "a number (4.5)" },
                            { true, "a boolean (true)" }, { {}, "a table" } }) do
      local d = pf.Node{ name = "Decide", post = function() return case[1] end }
      d:next(pf.Node(), "yes")
      local l = failing(function() return pf.Flow{ name = "Main", start = d }:run({}) end)
      assert.matches("Decide: post returned " .. case[2]:gsub("[%(%)%.]", "%%%0")
                     .. "; actions are strings$", l[1])
      assert.equal("in Main > Decide (post)", l[2])
    end
  end)

  it("is returned as it was when the node has no successors", function()
    local t = {}
    assert.equal(42, pf.Flow(pf.Node{ post = function() return 42 end }):run({}))
    assert.equal(t, pf.Flow(pf.Node{ post = function() return t end }):run({}))
    assert.equal(42, pf.Node{ post = function() return 42 end }:run({}))
  end)
end)

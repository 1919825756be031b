-- Nodes: prep -> exec -> post, retries, fallback, classes, aliases (API.md §2)
local pf = require "pocketflow"

local capture_warnings = require("support.warnings").capture

describe("a node", function()
  it("runs prep, exec and post in order and returns post's value", function()
    local order = {}
    local N = pf.Node:extend("N")
    function N:prep(shared) order[#order + 1] = "prep"; return shared.x end
    function N:exec(x) order[#order + 1] = "exec"; return x * 2 end
    function N:post(shared, p, e)
      order[#order + 1] = "post"
      shared.p, shared.e = p, e
      return "next"
    end
    local shared = { x = 21 }
    assert.equal("next", N():run(shared))
    assert.same({ "prep", "exec", "post" }, order)
    assert.equal(21, shared.p)
    assert.equal(42, shared.e)
  end)

  it("keeps a nil post result nil", function()
    assert.is_nil(pf.Node():run({}))
  end)

  it("has optional methods: an empty node runs", function()
    assert.has_no.errors(function() pf.Node():run({}) end)
    assert.has_no.errors(function() pf.BaseNode():run({}) end)
  end)

  it("takes methods from the options table", function()
    local n = pf.Node{ exec = function(_, x) return (x or 0) + 1 end,
                       post = function(_, _, _, e) return e end }
    assert.equal(1, n:run({}))
  end)

  it("defaults to max_retries = 1 and wait = 0", function()
    local n = pf.Node()
    assert.equal(1, n.max_retries)
    assert.equal(0, n.wait)
  end)

  it("retries exec up to max_retries with cur_retry counting failures", function()
    local seen = {}
    local n = pf.Node{ max_retries = 3,
      exec = function(self)
        seen[#seen + 1] = self.cur_retry
        if self.cur_retry < 2 then error("flaky") end
        return "ok"
      end,
      post = function(_, _, _, e) return e end }
    assert.equal("ok", n:run({}))
    assert.same({ 0, 1, 2 }, seen)
  end)

  it("calls exec_fallback with prep_res and the last error", function()
    local got
    local n = pf.Node{ max_retries = 2,
      prep = function() return "input" end,
      exec = function() error({ code = 7 }) end,
      exec_fallback = function(_, prep_res, err) got = { prep_res, err }; return "fallback" end,
      post = function(_, _, _, e) return e end }
    assert.equal("fallback", n:run({}))
    assert.equal("input", got[1])
    assert.same({ code = 7 }, got[2])
  end)

  it("re-raises the error unchanged when there is no fallback", function()
    local err = setmetatable({}, { __name = "MyError" })
    local n = pf.Node{ exec = function() error(err) end }
    local ok, e = pcall(n.run, n, {})
    assert.is_false(ok)
    assert.is_true(rawequal(err, e))
  end)

  it("does not retry errors in prep or post", function()
    local preps, posts = 0, 0
    local a = pf.Node{ max_retries = 3, prep = function() preps = preps + 1; error("bad prep") end }
    local b = pf.Node{ max_retries = 3, post = function() posts = posts + 1; error("bad post") end }
    assert.has_error(function() a:run({}) end)
    assert.has_error(function() b:run({}) end)
    assert.equal(1, preps)
    assert.equal(1, posts)
  end)

  it("waits between attempts without blocking other tasks", function()
    -- a ticker sleeping 0.01 s at a time runs while the node waits 0.05 s
    -- between attempts: its timer is due first, so each wait lets at
    -- least one more tick in (an order, not a timing). A wait that blocked
    -- the loop would let none in until the node ended.
    local ticks, seen = 0, {}
    local n = pf.Node{ max_retries = 3, wait = 0.05,
      exec = function(self)
        seen[#seen + 1] = ticks
        if self.cur_retry < 2 then error("again") end
        return "done"
      end,
      post = function(_, _, _, e) return e end }
    local t0 = pf.now()
    local result = pf.run(function()
      local ticker = pf.spawn(function()
        for _ = 1, 5 do pf.sleep(0.01); ticks = ticks + 1 end
      end)
      -- the ticker's first sleep starts before the node's first wait, so
      -- its deadline is the earlier one however slow the process runs
      pf.sleep(0)
      local r = n:run({})
      ticker:wait()
      return r
    end)
    assert.equal("done", result)
    assert.is_true(pf.now() - t0 >= 0.099)
    assert.equal(3, #seen)
    assert.equal(0, seen[1])
    assert.is_true(seen[2] >= 1, "no tick during the first wait")
    assert.is_true(seen[3] >= 2, "no tick during the second wait")
    assert.equal(5, ticks)
  end)

  it("lets exec wait with pf.sleep", function()
    local n = pf.Node{ exec = function() pf.sleep(0.01); return "slept" end,
                       post = function(_, _, _, e) return e end }
    assert.equal("slept", n:run({}))
  end)

  it("warns when run alone with successors", function()
    local seen, restore = capture_warnings()
    local a, b = pf.Node(), pf.Node()
    a:next(b)
    a:run({})
    restore()
    assert.equal(1, #seen)
    assert.equal("Node: node won't run successors; use a Flow", seen[1])
  end)

  it("does not keep fields set on self during a run", function()
    local n = pf.Node{ exec = function(self) self.scratch = 1; return self.scratch end,
                       post = function(_, _, _, e) return e end }
    assert.equal(1, n:run({}))
    assert.is_nil(rawget(n, "scratch"))
  end)

  it("sees its params as self.params", function()
    local n = pf.Node{ post = function(self) return self.params.k end }
    n:set_params({ k = "v" })
    assert.equal("v", n:run({}))
  end)
end)

describe("classes", function()
  it("extend makes subclasses that extend further, with names", function()
    local A = pf.Node:extend("A")
    function A:exec() return "A" end
    local B = A:extend("B")
    function B:post(_, _, e) return e .. "B" end
    assert.equal("AB", B():run({}))
    assert.equal("B", B.__name)
    assert.matches("^B: ", tostring(B()))
  end)

  it("runs a custom init, which may call the super init", function()
    local C = pf.Node:extend()
    function C:init(label, opts)
      pf.Node.init(self, opts)
      self.label = label
    end
    function C:post() return self.label .. self.max_retries end
    assert.equal("x4", C("x", { max_retries = 4 }):run({}))
  end)

  it("accepts init without opts", function()
    local C = pf.Node:extend()
    function C:init() pf.Node.init(self, nil) end
    assert.has_no.errors(function() C():run({}) end)
  end)
end)

describe("the seed's async names", function()
  it("are aliases of the plain classes", function()
    assert.equal(pf.Node, pf.AsyncNode)
    assert.equal(pf.Flow, pf.AsyncFlow)
    assert.equal(pf.BatchNode, pf.AsyncBatchNode)
    assert.equal(pf.BatchFlow, pf.AsyncBatchFlow)
    assert.equal(pf.ParallelBatchNode, pf.AsyncParallelBatchNode)
    assert.equal(pf.ParallelBatchFlow, pf.AsyncParallelBatchFlow)
    assert.equal(pf.Node.run, pf.Node.run_async)
  end)

  it("use prep_async, exec_async, post_async and exec_fallback_async", function()
    local W = pf.AsyncNode:extend("W")
    function W:prep_async(shared) return shared.city end
    function W:exec_async(city) pf.sleep(0.01); error("down: " .. city) end
    function W:exec_fallback_async(city) return "Sunny in " .. city end
    function W:post_async(shared, _, e) shared.report = e; return "done" end
    local shared = { city = "London" }
    assert.equal("done", W():run_async(shared))
    assert.equal("Sunny in London", shared.report)
  end)

  it("work as options too", function()
    local n = pf.AsyncNode{ exec_async = function() return 5 end,
                            post_async = function(_, _, _, e) return e end }
    assert.equal(5, n:run({}))
  end)

  -- which of prep/prep_async, ... a node ran, by name
  local names = { "prep", "exec", "exec_fallback", "post" }
  local function methods(tag, log)
    local m = {}
    for _, name in ipairs(names) do
      m[name] = function(_, ...)
        log[name] = tag
        if name == "exec" then error("fail", 0) end
        return (...)
      end
    end
    return m
  end
  local function check_async_won(node, log)
    node:run({})
    for _, name in ipairs(names) do assert.equal("async", log[name], name) end
  end

  it("win over the plain names defined after them in a class", function()
    local log = {}
    local C = pf.Node:extend("C")
    local plain, async = methods("plain", log), methods("async", log)
    for _, name in ipairs(names) do C[name .. "_async"] = async[name] end
    for _, name in ipairs(names) do C[name] = plain[name] end
    check_async_won(C(), log)
  end)

  it("win over the plain names defined before them in a class", function()
    local log = {}
    local C = pf.Node:extend("C")
    local plain, async = methods("plain", log), methods("async", log)
    for _, name in ipairs(names) do C[name] = plain[name] end
    for _, name in ipairs(names) do C[name .. "_async"] = async[name] end
    check_async_won(C(), log)
  end)

  it("win over plain names given as options, or defined in a subclass", function()
    local log = {}
    local C = pf.Node:extend("C")
    local plain, async = methods("plain", log), methods("async", log)
    for _, name in ipairs(names) do C[name .. "_async"] = async[name] end
    check_async_won(C(plain), log)
    log = {}
    plain, async = methods("plain", log), methods("async", log)
    local P = pf.Node:extend("P")
    for _, name in ipairs(names) do P[name .. "_async"] = async[name] end
    local D = P:extend("D")
    for _, name in ipairs(names) do D[name] = plain[name] end
    check_async_won(D(), log)
  end)

  it("win in an options table that gives both names, whatever pairs() order", function()
    -- the fields' order in pairs() depends on the table's size and layout:
    -- padding fields vary it so that both orders occur
    for pad = 0, 64 do
      local log = {}
      local plain, async = methods("plain", log), methods("async", log)
      local opts = {}
      for i = 1, pad do opts["pad" .. i] = i end
      for _, name in ipairs(names) do
        opts[name] = plain[name]
        opts[name .. "_async"] = async[name]
      end
      check_async_won(pf.Node(opts), log)
    end
  end)
end)

describe("bad node input", function()
  it("rejects max_retries that is not a positive integer, naming the field", function()
    for _, v in ipairs({ 0, -1, 1.5, "3" }) do
      local ok, err = pcall(pf.Node, { max_retries = v })
      assert.is_false(ok)
      assert.matches("max_retries must be a positive integer", err)
    end
  end)

  it("rejects wait that is negative or not a number, naming the field", function()
    for _, v in ipairs({ -0.5, "1", 0 / 0 }) do
      local ok, err = pcall(pf.Node, { wait = v })
      assert.is_false(ok)
      assert.matches("wait must be a non%-negative number", err)
    end
  end)

  it("points the construction error at the caller's line", function()
    local ok, err = pcall(function()
      local n = pf.Node{ max_retries = 0 }
      return n
    end)
    assert.is_false(ok)
    assert.matches("node_spec.lua:%d+:", err)
  end)

  it("rejects options that are not a table", function()
    local ok, err = pcall(pf.Node, 42)
    assert.is_false(ok)
    assert.matches("options must be a table", err)
  end)

  it("catches max_retries broken after construction at run time", function()
    local n = pf.Node()
    n.max_retries = 0
    n.exec = function() error("x") end
    local ok, err = pcall(n.run, n, {})
    assert.is_false(ok)
    assert.matches("max_retries must be a positive integer", err)
  end)

  it("shows the user's file and line for an error in exec", function()
    local n = pf.Node{ exec = function() error("user boom") end }
    local ok, err = pcall(n.run, n, {})
    assert.is_false(ok)
    assert.matches("node_spec.lua:%d+: user boom", err)
    assert.matches("stack traceback:", err)
    local _, count = err:gsub("stack traceback:", "")
    assert.equal(1, count)
    assert.matches("node_spec.lua:%d+: in", err:match("stack traceback:.*"))
  end)
end)

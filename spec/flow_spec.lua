-- Flows: transitions, actions, nesting, params, warnings (API.md §2)
local pf = require "pocketflow"

local capture_warnings = require("support.warnings").capture

-- a node that appends its name to shared.path and returns an action
local function step(name, action)
  return pf.Node{ post = function(_, shared)
    shared.path = (shared.path or "") .. name
    if type(action) == "function" then return action(shared) end
    return action
  end }
end

describe("connecting nodes", function()
  it("a >> b >> c chains and returns the right side", function()
    local a, b, c = step("a"), step("b"), step("c")
    local r = a >> b >> c
    assert.equal(c, r)
    assert.equal(b, a.successors.default)
    assert.equal(c, b.successors.default)
  end)

  it("a - 'x' >> b sets the named transition", function()
    local a, b = step("a"), step("b")
    local r = a - "x" >> b
    assert.equal(b, r)
    assert.equal(b, a.successors.x)
  end)

  it("next(node, action) is the method form and returns node", function()
    local a, b = step("a"), step("b")
    assert.equal(b, a:next(b, "go"))
    assert.equal(b, a.successors.go)
    assert.equal(b, a:next(b))
    assert.equal(b, a.successors.default)
  end)

  it("warns when an action is redefined, and replaces it", function()
    local seen, restore = capture_warnings()
    local a, b, c = step("a"), step("b"), step("c")
    local _ = a - "x" >> b
    _ = a - "x" >> c
    restore()
    assert.equal(c, a.successors.x)
    assert.equal(1, #seen)
    assert.matches("overwriting successor for action 'x'", seen[1])
  end)

  it("node - x with x not a string names the type given", function()
    local a = step("a")
    local ok, err = pcall(function() local t = a - 42; return t end)
    assert.is_false(ok)
    assert.matches("action must be a string %(got number%)", err)
    ok, err = pcall(function() local t = a - {}; return t end)
    assert.is_false(ok)
    assert.matches("got table", err)
  end)

  it("rejects a successor that is not a node", function()
    local ok, err = pcall(function() local t = step("a") >> 5; return t end)
    assert.is_false(ok)
    assert.matches("successor must be a pocketflow node", err)
  end)
end)

describe("a flow", function()
  it("follows default transitions and returns the last post's value", function()
    local a, b, c = step("a"), step("b"), step("c", "end")
    local _ = a >> b >> c
    local shared = {}
    assert.equal("end", pf.Flow{ start = a }:run(shared))
    assert.equal("abc", shared.path)
  end)

  it("keeps a nil last action nil", function()
    assert.is_nil(pf.Flow{ start = step("a") }:run({}))
  end)

  it("branches on the action post returns", function()
    local decide = step("d", function(s) return s.go end)
    local left, right = step("L"), step("R")
    local _ = decide - "left" >> left
    _ = decide - "right" >> right
    local f = pf.Flow(decide)
    local s1, s2 = { go = "left" }, { go = "right" }
    f:run(s1)
    f:run(s2)
    assert.equal("dL", s1.path)
    assert.equal("dR", s2.path)
  end)

  it("loops until an action has no successor", function()
    local count = step("", function(s)
      s.n = (s.n or 0) + 1
      if s.n < 5 then return "again" end
      return "stop"
    end)
    local _ = count - "again" >> count
    local shared = {}
    local seen, restore = capture_warnings()
    assert.equal("stop", pf.Flow(count):run(shared))
    restore()
    assert.equal(5, shared.n)
    assert.equal(1, #seen)
    assert.equal("Node: flow ends: 'stop' not found in [again]", seen[1])
  end)

  it("lists the known actions sorted in the flow-end warning", function()
    local a = step("a", "zzz")
    local _ = a - "b" >> step("b")
    _ = a - "a" >> step("a")
    _ = a >> step("c")
    local seen, restore = capture_warnings()
    pf.Flow(a):run({})
    restore()
    assert.equal("Node: flow ends: 'zzz' not found in [a, b, default]", seen[1])
  end)

  it("does not warn when the node has no successors", function()
    local seen, restore = capture_warnings()
    pf.Flow(step("a", "whatever")):run({})
    restore()
    assert.equal(0, #seen)
  end)

  it("accepts transitions listed in its constructor", function()
    local a, b, c = step("a"), step("b", "retry"), step("c")
    local f = pf.Flow{ start = a, a >> b, b - "retry" >> c }
    local shared = {}
    f:run(shared)
    assert.equal("abc", shared.path)
  end)

  it("start stores start_node; start() stays a method returning the node", function()
    local a = step("a")
    local f1 = pf.Flow{ start = a }
    assert.equal(a, f1.start_node)
    local f2 = pf.Flow()
    assert.equal(a, f2:start(a))
    assert.equal(a, f2.start_node)
    local f3 = pf.Flow(a)
    assert.equal(a, f3.start_node)
  end)

  it("runs its own prep and post around the walk", function()
    local F = pf.Flow:extend("F")
    function F:prep(shared) shared.path = "[" end
    function F:post(shared, _, last) shared.path = shared.path .. "]"; return last end
    local shared = {}
    local a = step("a", "x")
    assert.equal("x", F{ start = a }:run(shared))
    assert.equal("[a]", shared.path)
  end)

  it("with no start node raises an error", function()
    local ok, err = pcall(function() return pf.Flow():run({}) end)
    assert.is_false(ok)
    assert.matches("flow has no start node", err)
  end)

  it("rejects a start that is not a node", function()
    local ok, err = pcall(pf.Flow, { start = 3 })
    assert.is_false(ok)
    assert.matches("start must be a pocketflow node", err)
  end)

  it("lets nodes wait, and wait between attempts, without blocking the loop", function()
    -- a ticker sleeping 0.01 s at a time is due before each 0.05 s wait of
    -- the flow's nodes ends, so each wait lets a tick in (an order, not a
    -- timing); a wait that blocked the loop would let none in
    local ticks, seen = 0, {}
    local a = pf.Node{ exec = function() pf.sleep(0.05); seen.sleep = ticks; return 1 end,
                       post = function(_, s, _, e) s.v = e end }
    local b = pf.Node{ max_retries = 2, wait = 0.05,
                       exec = function(self)
                         seen[#seen + 1] = ticks
                         if self.cur_retry == 0 then error("again") end
                       end }
    local _ = a >> b
    local s = {}
    pf.run(function()
      local ticker = pf.spawn(function()
        for _ = 1, 20 do pf.sleep(0.01); ticks = ticks + 1 end
      end)
      pf.sleep(0)   -- the ticker's first deadline now comes before any wait's
      local before = ticks
      pf.Flow(a):run(s)
      seen.before = before
      ticker:cancel()
    end)
    assert.equal(1, s.v)
    assert.equal(0, seen.before)
    assert.is_true(seen.sleep >= 1, "no tick during the node's sleep")
    assert.equal(2, #seen)
    assert.is_true(seen[2] > seen[1], "no tick during the retry wait")
  end)
end)

describe("nested flows", function()
  it("run as nodes, and the inner last action drives the outer flow", function()
    local inner_a, inner_b = step("1"), step("2", "inner_done")
    local _ = inner_a >> inner_b
    local inner = pf.Flow(inner_a)
    local after = step("X")
    _ = inner - "inner_done" >> after
    local outer = pf.Flow{ start = step("S") }
    _ = outer.start_node >> inner
    local shared = {}
    outer:run(shared)
    assert.equal("S12X", shared.path)
  end)

  it("run 1,000 deep", function()
    local leaf = step("leaf", "deep")
    local f = pf.Flow(leaf)
    for _ = 2, 1000 do f = pf.Flow(f) end
    local shared = {}
    assert.equal("deep", f:run(shared))
    assert.equal("leaf", shared.path)
  end)

  it("run 1,000 deep with waits inside", function()
    local leaf = pf.Node{ exec = function() pf.sleep(0) return "w" end,
                          post = function(_, _, _, e) return e end }
    local f = pf.Flow(leaf)
    for _ = 2, 1000 do f = pf.Flow(f) end
    assert.equal("w", f:run({}))
  end)
end)

describe("params", function()
  it("are set by a flow on every node it runs", function()
    local seen = {}
    local a = pf.Node{ post = function(self) seen[#seen + 1] = self.params.k end }
    local b = pf.Node{ post = function(self) seen[#seen + 1] = self.params.k end }
    local _ = a >> b
    local f = pf.Flow(a)
    f:set_params({ k = "flow" })
    f:run({})
    assert.same({ "flow", "flow" }, seen)
    assert.same({}, a.params)  -- the node object keeps its own
  end)

  it("reach nodes of nested flows", function()
    local got
    local leaf = pf.Node{ post = function(self) got = self.params.k end }
    local outer = pf.Flow(pf.Flow(leaf))
    outer:set_params({ k = 1 })
    outer:run({})
    assert.equal(1, got)
  end)

  it("and fields set on self during a run do not persist", function()
    local a = pf.Node{ prep = function(self) self.tmp = (self.tmp or 0) + 1; return self.tmp end,
                       post = function(_, s, p) s.v = p end }
    local s = {}
    pf.Flow(a):run(s)
    pf.Flow(a):run(s)
    assert.equal(1, s.v)
    assert.is_nil(rawget(a, "tmp"))
  end)
end)

describe("long walks", function()
  -- 1,000,000 steps; 100,000 under the sanitizer and valgrind, which are
  -- 20-50x slower and check memory errors, not scale
  local steps = os.getenv("PF_MODE") == "plain" and 1000000 or 100000
  it(("run a %d-step loop in flat memory"):format(steps), function()
    local n = 0
    local node = pf.Node{ post = function()
      n = n + 1
      if n < steps then return "loop" end
    end }
    local _ = node - "loop" >> node
    local mid
    collectgarbage()
    local before = collectgarbage("count")
    -- sample memory half-way through
    local counter = node.post
    node.post = function(self, ...)
      if n == steps // 2 then collectgarbage(); mid = collectgarbage("count") end
      return counter(self, ...)
    end
    local _, restore = capture_warnings()
    pf.Flow(node):run({})
    restore()
    node.post = counter
    collectgarbage()
    local after = collectgarbage("count")
    assert.equal(steps, n)
    assert.is_true(mid - before < 1024, ("grew %.0f KB"):format(mid - before))
    -- and nothing a step made is left once the walk has ended
    assert.is_true(after - before < 1024, ("kept %.0f KB"):format(after - before))
  end)
end)

-- pf.interrupt: human input (API.md section 8, "Human input"). This file:
-- the run option on_interrupt (no store), the ids, and that an interrupt
-- is never retried nor given to exec_fallback.
local pf = require "pocketflow"

-- on_interrupt that records each question and answers "<payload>!"
local function recorder()
  local log = {}
  local function answer(payload, id)
    log[#log + 1] = { payload = payload, id = id }
    return tostring(payload) .. "!"
  end
  return log, answer
end

local function ids(log, sorted)
  local out = {}
  for i, q in ipairs(log) do out[i] = q.id end
  if sorted then table.sort(out) end
  return out
end

local errmsg = require("support.util").errmsg

describe("pf.interrupt with on_interrupt", function()
  it("answers in prep, exec and post, in order", function()
    local Ask = pf.Node:extend("Ask")
    function Ask:prep() return pf.interrupt("p") end
    function Ask:exec(p)
      local a = pf.interrupt("e1")
      return { p, a, pf.interrupt("e2") }
    end
    function Ask:post(shared, _, e)
      shared.got = e
      shared.post = pf.interrupt("q")
    end
    local log, answer = recorder()
    local shared = {}
    pf.Flow{ name = "Main", start = Ask() }:run(shared, { on_interrupt = answer })
    assert.same({ "p!", "e1!", "e2!" }, shared.got)
    assert.equal("q!", shared.post)
    assert.same({ "p", "e1", "e2", "q" },
                { log[1].payload, log[2].payload, log[3].payload, log[4].payload })
    assert.same({ "Main/Ask#1", "Main/Ask#2", "Main/Ask#3", "Main/Ask#4" }, ids(log))
  end)

  it("works in node:run and with a tail call", function()
    local n = pf.Node{ name = "Solo", exec = function() return pf.interrupt(7) end,
                       post = function(_, s, _, e) s.e = e end }
    local log, answer = recorder()
    local shared = {}
    n:run(shared, { on_interrupt = answer })
    assert.equal("7!", shared.e)
    assert.same({ "Solo#1" }, ids(log))
  end)

  it("passes the payload as it is and returns the answer as it is", function()
    local payload = { text = "ok?", n = 3 }
    local seen, back
    local answer = { approved = true }
    local n = pf.Node{ name = "N", exec = function() back = pf.interrupt(payload) end }
    n:run({}, { on_interrupt = function(p) seen = p return answer, "dropped" end })
    assert.equal(payload, seen)
    assert.equal(answer, back)
  end)

  it("answers every item of a batch node, its id naming the item", function()
    local B = pf.BatchNode:extend("Review")
    function B:prep() return { "a", "b", "c" } end
    function B:exec(x) return pf.interrupt(x) end
    function B:post(s, _, r) s.r = r end
    for _, retries in ipairs { 1, 3 } do   -- the item runs in a frame of its own with retries
      local log, answer = recorder()
      local shared = {}
      pf.Flow{ name = "Main", start = B{ max_retries = retries } }:run(shared, { on_interrupt = answer })
      assert.same({ "a!", "b!", "c!" }, shared.r)
      assert.same({ "Main/Review[1]#1", "Main/Review[2]#1", "Main/Review[3]#1" }, ids(log))
    end
  end)

  it("answers the items of a parallel batch while on_interrupt waits", function()
    local waiting, most = 0, 0
    local function answer(p, id)
      waiting = waiting + 1
      most = math.max(most, waiting)
      pf.sleep(0.02)
      waiting = waiting - 1
      return id
    end
    for _, retries in ipairs { 1, 2 } do   -- exec as the item's body, or an item frame
      local P = pf.ParallelBatchNode:extend("Ask")
      function P:prep() return { 1, 2, 3, 4 } end
      function P:exec(i) return pf.interrupt(i) end
      function P:post(s, _, r) s.r = r end
      local shared = {}
      most = 0
      pf.Flow{ name = "Main", start = P{ max_retries = retries } }:run(shared, { on_interrupt = answer })
      assert.same({ "Main/Ask[1]#1", "Main/Ask[2]#1", "Main/Ask[3]#1", "Main/Ask[4]#1" }, shared.r)
      assert.equal(4, most)   -- all four questions were open at once
    end
  end)

  it("names the walk of a parallel batch flow and of a batch flow in the id", function()
    for _, Kind in ipairs { pf.ParallelBatchFlow, pf.BatchFlow } do
      local F = Kind:extend("PerDoc")
      function F:prep() return { { doc = "x" }, { doc = "y" } } end
      local Q = pf.Node:extend("Q")
      function Q:exec() return pf.interrupt(self.params.doc) end
      function Q:post(s, _, e) s[#s + 1] = e end
      local log, answer = recorder()
      local shared = {}
      pf.Flow{ name = "Main", start = F{ start = Q() } }:run(shared, { on_interrupt = answer })
      table.sort(shared)
      assert.same({ "x!", "y!" }, shared)
      assert.same({ "Main/PerDoc[1]/Q#1", "Main/PerDoc[2]/Q#1" }, ids(log, true))
    end
  end)

  it("works in an exec with a timeout (which may run it in a task of its own)", function()
    local Ask = pf.Node:extend("Ask")
    function Ask:exec()
      local a = pf.interrupt("q")
      return a
    end
    function Ask:post(s, _, e) s.e = e end
    local log, answer = recorder()
    local shared = {}
    pf.Flow{ name = "Main", start = Ask{ timeout = 30, max_retries = 2 } }:run(shared, { on_interrupt = answer })
    assert.equal("q!", shared.e)
    assert.same({ "Main/Ask#1" }, ids(log))
    -- with a store
    local flow = pf.Flow{ name = "Main", start = Ask{ timeout = 30, max_retries = 2 } }
    local store = pf.memory()
    local _, run = flow:run({}, { store = store, run_id = "t" })
    assert.equal("interrupted", run.status)
    assert.equal("Main/Ask#1", run.interrupts[1].id)
    _, run = flow:resume(store, "t", { answer = "yes" })
    assert.equal("done", run.status)
    assert.equal("yes", store:get("t").shared.e)
    -- an error of on_interrupt is not retried there either
    local tries = 0
    local Once = pf.Node:extend("Once")
    function Once:exec()
      tries = tries + 1
      local a = pf.interrupt("q")
      return a
    end
    local f2 = pf.Flow{ name = "Main", start = Once{ timeout = 30, max_retries = 3 } }
    local ok, err = pcall(f2.run, f2, {}, { on_interrupt = function() error("no one") end })
    assert.is_false(ok)
    assert.matches("no one", err)
    assert.equal(1, tries)
  end)

  it("lets on_interrupt wait for an answer from another task", function()
    local inbox = {}
    local Ask = pf.Node:extend("Approve")
    function Ask:exec() return pf.interrupt("ship it?") end
    function Ask:post(s, _, e) s.answer = e end
    local shared = {}
    pf.run(function()
      local person = pf.spawn(function()
        pf.sleep(0.02)
        inbox.answer = "yes"
      end)
      pf.Flow{ name = "Main", start = Ask() }:run(shared, { on_interrupt = function(q)
        while inbox.answer == nil do pf.sleep(0.005) end
        return q .. " " .. inbox.answer
      end })
      person:wait()
    end)
    assert.equal("ship it? yes", shared.answer)
  end)

  it("is cancelled with its run while on_interrupt waits", function()
    local reached, ended = false, false
    local n = pf.Node{ name = "N", exec = function()
      pf.interrupt("?")
      ended = true
    end }
    local err = errmsg(pf.timeout, 0.05, function()
      n:run({}, { on_interrupt = function()
        reached = true
        pf.sleep(60)
      end })
    end)
    assert.matches("timeout", err)
    assert.is_true(reached)
    assert.is_false(ended)
  end)
end)

describe("pf.interrupt ids", function()
  it("are the same for the same run", function()
    local function once()
      local P = pf.ParallelBatchNode:extend("Items")
      function P:prep() return { 1, 2, 3 } end
      function P:exec(i)
        pf.sleep(0.001 * (4 - i))   -- they ask in another order than they started
        local a = pf.interrupt("first")
        return a .. pf.interrupt("second")
      end
      local Ask = pf.Node:extend("Ask")
      function Ask:prep() return pf.interrupt("prep") end
      local a, p = Ask(), P()
      local _ = a >> p
      local log, answer = recorder()
      pf.Flow{ name = "Main", start = a }:run({}, { on_interrupt = answer })
      return ids(log, true)
    end
    local first = once()
    assert.same({ "Main/Ask#1", "Main/Items[1]#1", "Main/Items[1]#2", "Main/Items[2]#1",
                  "Main/Items[2]#2", "Main/Items[3]#1", "Main/Items[3]#2" }, first)
    assert.same(first, once())
  end)

  it("count the questions of one run of a node: a node run again starts at 1", function()
    local Ask = pf.Node:extend("Ask")
    function Ask:exec()
      for i = 1, 3 do pf.interrupt(i) end
    end
    function Ask:post(s)
      s.n = (s.n or 0) + 1
      return s.n < 2 and "again" or "stop"
    end
    local a = Ask()
    local _ = a - "again" >> a
    _ = a - "stop" >> pf.Node()
    local log, answer = recorder()
    pf.Flow{ name = "Loop", start = a }:run({}, { on_interrupt = answer })
    assert.same({ "Loop/Ask#1", "Loop/Ask#2", "Loop/Ask#3",
                  "Loop/Ask#1", "Loop/Ask#2", "Loop/Ask#3" }, ids(log))
  end)

  it("belong to the innermost run", function()
    local inner = pf.Flow{ name = "Inner", start = pf.Node{ name = "Q",
      exec = function() return pf.interrupt("in") end } }
    local outer_log, outer = recorder()
    local inner_log, inner_answer = recorder()
    local Call = pf.Node:extend("Call")
    function Call:exec()
      pf.interrupt("out")
      inner:run({}, { on_interrupt = inner_answer })
      return errmsg(inner.run, inner, {})   -- no options: its own run has no on_interrupt
    end
    function Call:post(s, _, e) s.err = e end
    local shared = {}
    pf.Flow{ name = "Outer", start = Call() }:run(shared, { on_interrupt = outer })
    assert.same({ "Outer/Call#1" }, ids(outer_log))
    assert.same({ "Inner/Q#1" }, ids(inner_log))
    assert.matches("pf.interrupt needs a store or on_interrupt", shared.err)
  end)
end)

describe("pf.interrupt is not an error", function()
  local Count = pf.Node:extend("Ask")
  function Count:exec()
    self.tries.n = self.tries.n + 1
    return pf.interrupt("?")
  end
  function Count:exec_fallback()
    self.tries.fell_back = true
    return "fallback"
  end

  it("runs exec once when answered", function()
    local tries = { n = 0 }
    local shared = {}
    pf.Flow{ name = "Main", start = Count{ max_retries = 3, tries = tries,
      post = function(_, s, _, e) s.e = e end } }:run(shared, { on_interrupt = function() return "a" end })
    assert.equal(1, tries.n)
    assert.is_nil(tries.fell_back)
    assert.equal("a", shared.e)
  end)

  it("is not retried nor given to exec_fallback when on_interrupt fails", function()
    for _, Kind in ipairs { pf.Node, pf.BatchNode, pf.ParallelBatchNode } do
      local tries = { n = 0 }
      local K = Kind:extend("Ask")
      K.exec, K.exec_fallback = Count.exec, Count.exec_fallback
      if Kind ~= pf.Node then function K.prep() return { 1 } end end
      local node = K{ max_retries = 3, tries = tries }
      local err = errmsg(pf.Flow{ name = "Main", start = node }.run, pf.Flow{ name = "Main", start = node }, {},
        { on_interrupt = function() error("nobody answered") end })
      assert.matches("nobody answered", err)
      assert.equal(1, tries.n)
      assert.is_nil(tries.fell_back)
    end
  end)

  it("keeps the error a table when on_interrupt raises one", function()
    local e = { code = 42 }
    local tries = { n = 0 }
    local ok, err = pcall(Count{ max_retries = 2, tries = tries }.run,
      Count{ max_retries = 2, tries = tries }, {}, { on_interrupt = function() error(e) end })
    assert.is_false(ok)
    assert.equal(e, err)
    assert.equal(1, tries.n)
  end)

  it("still lets exec's own errors retry, asking again", function()
    local log, answer = recorder()
    local n = 0
    local node = pf.Node{ name = "Ask", max_retries = 3, exec = function()
      local a = pf.interrupt("q")
      n = n + 1
      if n < 3 then error("flaky") end
      return a
    end, post = function(_, s, _, e) s.e = e end }
    local shared = {}
    node:run(shared, { on_interrupt = answer })
    assert.equal("q!", shared.e)
    assert.same({ "Ask#1", "Ask#2", "Ask#3" }, ids(log))
  end)
end)

describe("pf.interrupt errors", function()
  it("needs a store or on_interrupt, and is not retried then either", function()
    local tries = { n = 0 }
    local Ask = pf.Node:extend("Ask")
    function Ask:exec()
      tries.n = tries.n + 1
      local a = pf.interrupt("?")
      return a
    end
    function Ask:exec_fallback() tries.fell_back = true end
    local flow = pf.Flow{ name = "Main", start = Ask{ max_retries = 3 } }
    local err = errmsg(flow.run, flow, {})
    assert.matches("^[^\n]*interrupt_spec.lua:%d+: pf.interrupt needs a store or on_interrupt\n", err)
    assert.matches("\nin Main > Ask %(exec, attempt 1 of 3%)", err)
    assert.equal(1, tries.n)
    assert.is_nil(tries.fell_back)
    -- options without on_interrupt are the same
    assert.matches("pf.interrupt needs a store or on_interrupt", errmsg(flow.run, flow, {}, {}))
  end)

  it("outside a node's prep, exec or post", function()
    assert.matches("^[^\n]*interrupt_spec.lua:%d+: pf.interrupt: not in a node's prep, exec or post",
                   errmsg(function() pf.interrupt("?") end))
    assert.matches("pf.interrupt: not in a node's prep, exec or post",
                   errmsg(pf.run, function() pf.interrupt("?") end))
    -- a task the node spawned is not the node
    local n = pf.Node{ name = "N", exec = function()
      return pf.spawn(function() return pf.interrupt("?") end):wait()
    end }
    assert.matches("pf.interrupt: not in a node's prep, exec or post",
                   errmsg(n.run, n, {}, { on_interrupt = function() return 1 end }))
  end)

  it("rejects an on_interrupt that is not a function", function()
    local n = pf.Node()
    assert.matches("run: on_interrupt must be a function %(got number%)",
                   errmsg(n.run, n, {}, { on_interrupt = 42 }))
    assert.matches("run: on_interrupt must be a function %(got table%)",
                   errmsg(pf.Flow{ start = n }.run, pf.Flow{ start = n }, {}, { on_interrupt = {} }))
  end)
end)

-- The group's side of interrupts (src/group.c): an item that ends with a
-- pending value (core.pending_mt(), what pf.interrupt raises with a store)
-- lets its siblings run to their end.
describe("a pending value in a parallel batch", function()
  local core = require "pocketflow.core"
  local MT = core.pending_mt()
  local function pending(v) return setmetatable(v, MT) end

  local function batch(kind, exec, n)
    local P = (kind or pf.ParallelBatchNode):extend("P")
    function P:prep()
      local items = {}
      for i = 1, n or 4 do items[i] = i end
      return items
    end
    P.exec = exec
    function P:post(s, _, r) s.r = r end
    return P
  end

  it("lets the other items finish, then is raised as it is", function()
    local ended = {}
    local p = pending { id = "x" }
    local P = batch(nil, function(_, i)
      if i == 1 then error(p) end
      pf.sleep(0.01)
      ended[#ended + 1] = i
      return i
    end)
    for _, maxc in ipairs { 4, 1 } do   -- all at once, and one at a time after it
      ended = {}
      local shared = {}
      local ok, err = pcall(P{ max_concurrency = maxc }.run, P{ max_concurrency = maxc }, shared)
      assert.is_false(ok)
      assert.equal(p, err)
      table.sort(ended)
      assert.same({ 2, 3, 4 }, ended)
      assert.is_nil(shared.r)   -- post did not run
    end
  end)

  it("gathers several in the order they ended", function()
    local P = batch(nil, function(_, i)
      pf.sleep(0.005 * (5 - i))
      if i % 2 == 0 then error(pending { i = i }) end
      return i
    end)
    local ok, err = pcall(P().run, P(), {})
    assert.is_false(ok)
    assert.equal(MT, getmetatable(err))
    assert.same({ 4, 2 }, { err.pending[1].i, err.pending[2].i })
  end)

  it("gives way to a real error, which cancels the others", function()
    local ended = {}
    local P = batch(nil, function(_, i)
      if i == 1 then error(pending { i = 1 }) end
      if i == 2 then pf.sleep(0.01) error("boom") end
      pf.sleep(30)
      ended[#ended + 1] = i
    end)
    local ok, err = pcall(P().run, P(), {})
    assert.is_false(ok)
    assert.matches("boom", tostring(err))
    assert.same({}, ended)
  end)

  it("works the same for the walks of a parallel batch flow, nested", function()
    local F = pf.ParallelBatchFlow:extend("F")
    function F:prep() return { { k = 1 }, { k = 2 }, { k = 3 } } end
    local done = {}
    local Q = pf.Node:extend("Q")
    function Q:exec()
      if self.params.k ~= 2 then error(pending { k = self.params.k }) end
      pf.sleep(0.01)
      done[#done + 1] = self.params.k
    end
    local ok, err = pcall(pf.Flow{ start = F{ start = Q() } }.run, pf.Flow{ start = F{ start = Q() } }, {})
    assert.is_false(ok)
    assert.equal(MT, getmetatable(err))
    local ks = { err.pending[1].k, err.pending[2].k }
    table.sort(ks)
    assert.same({ 1, 3 }, ks)
    assert.same({ 2 }, done)
  end)
end)

-- With a store: the question ends the run, flow:resume answers it.
describe("pf.interrupt with a store", function()
  local BIN = os.getenv("PF_BIN")

  local function rm_db(path)
    os.remove(path); os.remove(path .. "-wal"); os.remove(path .. "-shm")
  end

  local function ids_of(run)
    local out = {}
    for i, q in ipairs(run.interrupts) do out[i] = q.id end
    return out
  end

  it("ends the run as interrupted; resume answers; each question is asked once", function()
    local preps, asked = 0, {}
    local Ask = pf.Node:extend("Ask")
    function Ask:prep() preps = preps + 1 end
    function Ask:exec()
      local out = {}
      for i = 1, 3 do out[i] = pf.interrupt("question " .. i) end
      return out
    end
    function Ask:post(s, _, e) s.answers = e end
    local flow = pf.Flow{ name = "Main", start = Ask() }
    local store = pf.memory()
    local shared = { n = 1 }
    local last, run = flow:run(shared, { store = store, run_id = "q3" })
    assert.is_nil(last)
    assert.equal("interrupted", run.status)
    assert.equal("q3", run.id)
    assert.same({ { id = "Main/Ask#1", node = "Ask", payload = "question 1" } }, run.interrupts)
    asked[#asked + 1] = run.interrupts[1].id
    for i = 1, 3 do
      last, run = flow:resume(store, "q3", { answer = "a" .. i })
      if i < 3 then
        assert.equal("interrupted", run.status)
        assert.equal(1, #run.interrupts)
        assert.equal("question " .. (i + 1), run.interrupts[1].payload)
        asked[#asked + 1] = run.interrupts[1].id
      end
    end
    assert.equal("done", run.status)
    assert.same({}, run.interrupts)
    assert.same({ "Main/Ask#1", "Main/Ask#2", "Main/Ask#3" }, asked)   -- no question twice
    assert.equal(4, preps)   -- the node reran from prep at each resume
    assert.same({ "a1", "a2", "a3" }, store:get("q3").shared.answers)
    assert.equal("done", store:runs()[1].status)
  end)

  it("asks in prep and post too, and in a node run again by a loop afresh", function()
    local Ask = pf.Node:extend("Ask")
    function Ask:prep(s) s.p = pf.interrupt("prep") end
    function Ask:post(s)
      s.visits = (s.visits or 0) + 1
      s["post" .. s.visits] = pf.interrupt("post")
      return s.visits < 2 and "again" or "stop"
    end
    local a = Ask()
    local _ = a - "again" >> a
    _ = a - "stop" >> pf.Node{ name = "End" }
    local flow = pf.Flow{ name = "Loop", start = a }
    local store = pf.memory()
    local _, run = flow:run({}, { store = store, run_id = "loop" })
    local asked = { run.interrupts[1].payload }
    for _, answer in ipairs { "p1", "x1", "p2", "x2" } do
      _, run = flow:resume(store, "loop", { answer = answer })
      asked[#asked + 1] = run.interrupts[1] and run.interrupts[1].payload
    end
    assert.equal("done", run.status)
    -- the second visit asks its prep and post questions again: the first
    -- visit's answers are not replayed to it
    assert.same({ "prep", "post", "prep", "post" }, asked)
    local s = store:get("loop").shared
    assert.same({ "p2", "x1", "x2", 2 }, { s.p, s.post1, s.post2, s.visits })
  end)

  it("is not retried nor given to exec_fallback", function()
    local tries, fell = 0, 0
    local Ask = pf.Node:extend("Ask")
    function Ask:exec()
      tries = tries + 1
      return pf.interrupt("?")
    end
    function Ask:exec_fallback() fell = fell + 1 return "fallback" end
    function Ask:post(s, _, e) s.e = e end
    for _, Kind in ipairs { "node", "batch" } do
      tries, fell = 0, 0
      local node = Ask{ max_retries = 3, wait = 0 }
      if Kind == "batch" then
        local B = pf.BatchNode:extend("Ask")
        B.exec, B.exec_fallback, B.post = Ask.exec, Ask.exec_fallback, Ask.post
        function B.prep() return { 1 } end
        node = B{ max_retries = 3 }
      end
      local flow = pf.Flow{ name = "Main", start = node }
      local store = pf.memory()
      local _, run = flow:run({}, { store = store, run_id = "r" })
      assert.equal("interrupted", run.status)
      assert.same({ 1, 0 }, { tries, fell })
      _, run = flow:resume(store, "r", { answer = "yes" })
      assert.equal("done", run.status)
      assert.same({ 2, 0 }, { tries, fell })
    end
  end)

  it("lets the other items of a parallel batch finish; their results are kept", function()
    local runs = {}
    local P = pf.ParallelBatchNode:extend("Review")
    function P:prep() return { 1, 2, 3, 4 } end
    function P:exec(i)
      runs[i] = (runs[i] or 0) + 1
      if i % 2 == 0 then return pf.interrupt("item " .. i) end
      pf.sleep(0.01)   -- still running when the questions are asked
      return "auto" .. i
    end
    function P:post(s, _, r) s.r = r end
    local flow = pf.Flow{ name = "Main", start = P() }
    local path = os.tmpname()
    rm_db(path)
    local store = pf.sqlite(path)
    local _, run = flow:run({}, { store = store, run_id = "pb" })
    assert.equal("interrupted", run.status)
    assert.same({ "Main/Review[2]#1", "Main/Review[4]#1" }, ids_of(run))
    assert.same({ 1, 1, 1, 1 }, runs)
    -- two pending: a plain answer, or an id that is not pending, is refused
    -- and the run stays as it was
    local ok, err = pcall(flow.resume, flow, store, "pb", { answer = "yes" })
    assert.is_false(ok)
    assert.matches("2 interrupts pending; answer by id", err)
    ok, err = pcall(flow.resume, flow, store, "pb", { answer = { ["Main/Review[3]#1"] = 1 } })
    assert.is_false(ok)
    assert.matches("run 'pb' has no question 'Main/Review%[3%]#1' pending %(pending: " ..
                   "Main/Review%[2%]#1, Main/Review%[4%]#1%)", err)
    assert.equal("interrupted", store:runs()[1].status)
    -- one answered by id: the other asks again
    _, run = flow:resume(store, "pb", { answer = { ["Main/Review[2]#1"] = "two" } })
    assert.equal("interrupted", run.status)
    assert.same({ "Main/Review[4]#1" }, ids_of(run))
    assert.same({ 1, 2, 1, 2 }, runs)   -- finished items did not run again
    _, run = flow:resume(store, "pb", { answer = "four" })
    assert.equal("done", run.status)
    assert.same({ 1, 2, 1, 3 }, runs)
    assert.same({ "auto1", "two", "auto3", "four" }, store:get("pb").shared.r)
    store:close()
    rm_db(path)
  end)

  it("answers both at once by id", function()
    local P = pf.ParallelBatchNode:extend("Review")
    function P:prep() return { "a", "b" } end
    function P:exec(x) return pf.interrupt(x) end
    function P:post(s, _, r) s.r = r end
    local flow = pf.Flow{ name = "Main", start = P() }
    local store = pf.memory()
    local _, run = flow:run({}, { store = store, run_id = "two" })
    assert.same({ "Main/Review[1]#1", "Main/Review[2]#1" }, ids_of(run))
    _, run = flow:resume(store, "two", { answer = { ["Main/Review[1]#1"] = 1, ["Main/Review[2]#1"] = 2 } })
    assert.equal("done", run.status)
    assert.same({ 1, 2 }, store:get("two").shared.r)
  end)

  it("a real error of another item wins: the run fails", function()
    local P = pf.ParallelBatchNode:extend("Review")
    function P:prep() return { 1, 2 } end
    function P:exec(i)
      if i == 1 then return pf.interrupt("?") end
      pf.sleep(0.01)
      error("broken item")
    end
    local flow = pf.Flow{ name = "Main", start = P() }
    local store = pf.memory()
    local ok, err = pcall(flow.run, flow, {}, { store = store, run_id = "bad" })
    assert.is_false(ok)
    assert.matches("broken item", tostring(err))
    assert.equal("failed", store:runs()[1].status)
  end)

  it("works in nested flows and the walks of batch flows", function()
    for _, Kind in ipairs { pf.BatchFlow, pf.ParallelBatchFlow } do
      local done = {}
      local F = Kind:extend("PerDoc")
      function F:prep() return { { doc = "x" }, { doc = "y" } } end
      local Q = pf.Node:extend("Q")
      function Q:exec() return pf.interrupt(self.params.doc) end
      function Q:post(_, _, e) done[#done + 1] = self.params.doc .. "=" .. e end
      local flow = pf.Flow{ name = "Main", start = pf.Flow{ name = "Inner", start = F{ start = Q() } } }
      local store = pf.memory()
      local _, run = flow:run({}, { store = store, run_id = "nest" })
      assert.equal("interrupted", run.status)
      local answers = {}
      while run.status == "interrupted" do
        for _, q in ipairs(run.interrupts) do answers[q.id] = q.payload:upper() end
        local pending = {}
        for _, q in ipairs(run.interrupts) do pending[q.id] = answers[q.id] end
        _, run = flow:resume(store, "nest", { answer = pending })
      end
      assert.equal("done", run.status)
      table.sort(done)
      assert.same({ "x=X", "y=Y" }, done)
      local ids = {}
      for id in pairs(answers) do ids[#ids + 1] = id end
      table.sort(ids)
      assert.same({ "Main/Inner/PerDoc[1]/Q#1", "Main/Inner/PerDoc[2]/Q#1" }, ids)
    end
  end)

  it("resume without an answer asks again; an answer with nothing pending is refused", function()
    local flow = pf.Flow{ name = "Main", start = pf.Node{ name = "Ask",
      exec = function() return pf.interrupt("?") end } }
    local store = pf.memory()
    local _, run = flow:run({}, { store = store, run_id = "again" })
    _, run = flow:resume(store, "again")
    assert.equal("interrupted", run.status)
    assert.same({ "Main/Ask#1" }, ids_of(run))
    -- a table answer to one question is the answer itself
    local given
    local flow2 = pf.Flow{ name = "Main", start = pf.Node{ name = "Ask",
      exec = function() given = pf.interrupt("?") end } }
    _, run = flow2:resume(store, "again", { answer = { ok = true } })
    assert.equal("done", run.status)
    assert.same({ ok = true }, given)
    -- a run stopped elsewhere than at a question takes no answer
    store:fork("again", nil, "copy")
    local ok, err = pcall(flow2.resume, flow2, store, "copy", { answer = 1 })
    assert.is_false(ok)
    assert.matches("run 'copy' has no question pending; answer is not used", err)
  end)

  it("refuses a payload that cannot be saved, at the question, without retry", function()
    local tries = 0
    local flow = pf.Flow{ name = "Main", start = pf.Node{ name = "Ask", max_retries = 3,
      exec = function()
        tries = tries + 1
        local a = pf.interrupt({ reply = print })
        return a
      end } }
    local store = pf.memory()
    local ok, err = pcall(flow.run, flow, {}, { store = store, run_id = "fn" })
    assert.is_false(ok)
    assert.matches("^[^\n]*interrupt_spec.lua:%d+: pf.interrupt: cannot serialize payload.reply %(function%)",
                   err)
    assert.equal(1, tries)
    assert.equal("failed", store:runs()[1].status)
  end)

  it("refuses on_interrupt with a store", function()
    local flow = pf.Flow{ start = pf.Node() }
    local ok, err = pcall(flow.run, flow, {}, { store = pf.memory(), on_interrupt = print })
    assert.is_false(ok)
    assert.matches("run: on_interrupt is for runs without a store; with a store, answer with flow:resume",
                   err)
  end)

  it("is answered from a second process", function()
    local path, script = os.tmpname(), os.tmpname()
    rm_db(path)
    local f = assert(io.open(script, "w"))
    f:write(([[
local pf = require "pocketflow"
local Ask = pf.Node:extend("Ask")
function Ask:prep(s) return s.text end
function Ask:exec(text) return pf.interrupt({ text = text }) end
function Ask:post(s, _, answer) s.answer = answer end
local flow = pf.Flow{ name = "Main", start = Ask() }
local store = pf.sqlite(%q)
local _, run
if arg[1] == "start" then
  _, run = flow:run({ text = "ship?" }, { store = store, run_id = "proc" })
else
  _, run = flow:resume(store, "proc", { answer = arg[2] })
end
print(run.status, run.interrupts[1] and run.interrupts[1].id, (require("pocketflow.core").store_proc()))
store:close()
]]):format(path))
    f:close()
    local function child(...)
      local r = pf.exec({ BIN, script, ... }, { timeout = 60 })
      assert.equal(0, r.code, r.stderr)
      return r.stdout
    end
    local first = child("start")
    assert.matches("^interrupted\tMain/Ask#1\t%d+\n$", first)
    local second = child("answer", "yes")
    assert.matches("^done\tnil\t%d+\n$", second)
    assert.not_equal(first:match("(%d+)\n$"), second:match("(%d+)\n$"))   -- two processes
    local store = pf.sqlite(path)
    assert.equal("yes", store:get("proc").shared.answer)
    assert.equal("done", store:runs()[1].status)
    store:close()
    rm_db(path)
    os.remove(script)
  end)
end)

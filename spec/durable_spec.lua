-- Durable runs (API.md section 8): checkpoints after every post, resume
-- after a SIGKILL in a new process, idempotency keys, transient keys,
-- fork, keep, durability, and the errors.
local pf = require "pocketflow"
local core = require "pocketflow.core"

local BIN = assert(os.getenv("PF_BIN"), "PF_BIN: the built pocketflow binary")
local SRC = assert(os.getenv("PF_SRC"), "PF_SRC: the source tree")
local CHILD = SRC .. "/spec/support/durable_child.lua"

local function rm_db(path)
  os.remove(path); os.remove(path .. "-wal"); os.remove(path .. "-shm")
end

local function tmp()
  local path = os.tmpname()
  os.remove(path)
  return path
end

-- the message of the error f raises: its first line (an error leaving
-- the task pf.run started outside any task gains where and a traceback)
local function errmsg(f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok, "expected an error")
  return (tostring(err):match("^[^\n]*"))
end

-- runs the child; returns its output and how it ended ("exit 0", "signal 9")
local function child(kind, db, log, mode, durability)
  local p = io.popen(("exec %s %s %s %s %s %s %s 2>&1"):format(BIN, CHILD, kind, db, log,
                                                              mode, durability or "sync"))
  local out = p:read("a")
  local _, how, code = p:close()
  return out, how .. " " .. code
end

-- the log's lines, counted
local function counts(log)
  local c = {}
  for line in io.lines(log) do
    line = line:gsub("%s+$", "")
    c[line] = (c[line] or 0) + 1
  end
  return c
end

local ONCE_AZ = { ["A prep"] = 1, ["A exec nil"] = 1, ["A post"] = 1,
                  ["Z prep"] = 1, ["Z exec nil"] = 1, ["Z post"] = 1 }

local function with(t)
  local out = {}
  for k, v in pairs(ONCE_AZ) do out[k] = v end
  for k, v in pairs(t) do out[k] = v end
  return out
end

-- the lines of walks 1-4 of C -> D, walk 'cut' cut in D (or C: in_c)
local function walks(cut, in_c)
  local t = { ["X prep"] = 1, ["X post"] = 1 }
  for w = 1, 4 do
    w = tostring(w)
    local c, d = w == cut and in_c and 2 or 1, w == cut and not in_c and 2 or 1
    t["C prep " .. w], t["C exec " .. w], t["C post " .. w] = c, c, 1
    t["D prep " .. w], t["D exec " .. w], t["D post " .. w] = d, d, 1
  end
  return with(t)
end

local items = { 10, 20, 30, 40, 50 }

local KINDS = {
  { "node", with { ["X prep"] = 2, ["X exec 20"] = 2, ["X post"] = 1 }, 21 },
  { "batch", with { ["X prep"] = 1, ["X exec 1"] = 1, ["X exec 2"] = 1,
                    ["X exec 3"] = 2, ["X exec 4"] = 1, ["X exec 5"] = 1,
                    ["X post"] = 1 }, items },
  { "parallel_batch", with { ["X prep"] = 1, ["X exec 1"] = 1, ["X exec 2"] = 1,
                             ["X exec 3"] = 2, ["X exec 4"] = 1, ["X exec 5"] = 1,
                             ["X post"] = 1 }, items },
  { "flow", with { ["X prep"] = 1, ["C prep"] = 1, ["C exec nil"] = 1, ["C post"] = 1,
                   ["D prep"] = 2, ["D exec nil"] = 2, ["D post"] = 1, ["X post"] = 1 },
    "flow" },
  { "batch_flow", walks("2"), "batch flow" },
  { "batch_flow_c", walks("2", true), "batch flow" },
  { "parallel_batch_flow", walks("3"), "parallel batch flow" },
  { "timed_flow", with { ["X prep"] = 1, ["C prep"] = 1, ["C exec nil"] = 1, ["C post"] = 1,
                         ["D prep"] = 2, ["D exec nil"] = 2, ["D post"] = 1, ["X post"] = 1 },
    "flow" },
  { "timed_parallel_batch_flow", walks("3"), "parallel batch flow" },
}

describe("durable runs: SIGKILL in the middle, resume in a new process", function()
  for _, k in ipairs(KINDS) do
    local kind, want, x = k[1], k[2], k[3]
    for _, durability in ipairs { "sync", "async" } do
      it(("a %s (%s): finished nodes once, the cut one again, the state right")
           :format(kind, durability), function()
        local db, log = tmp(), tmp()
        local out, code = child(kind, db, log, "run", durability)
        assert.equals("signal 9", code, out)
        local store = pf.sqlite(db)
        assert.equals("running", store:runs()[1].status)
        store:close()
        out, code = child(kind, db, log, "resume")
        assert.equals("exit 0", code, out)
        assert.matches("^done%s%d+", out)
        assert.same(want, counts(log))
        store = pf.sqlite(db)
        local c = store:get("run-" .. kind)
        assert.same("done", store:runs()[1].status)
        store:close()
        rm_db(db)
        os.remove(log)
        local s = c.shared
        assert.is_true(s.start and s.a and s.z)
        assert.same(x, s.x)
        assert.is_nil(s.__pocketflow_run)
        if kind == "batch_flow" then
          assert.equals("run-batch_flow:Main/X#2[2]/D#2", s.d2)
          assert.equals("run-batch_flow:Main/X#2[1]/C#1", s.c1)
        elseif kind == "parallel_batch_flow" then
          assert.equals("run-parallel_batch_flow:Main/X#2[3]/D#2", s.d3)
        elseif kind == "timed_parallel_batch_flow" then
          assert.equals("run-timed_parallel_batch_flow:Main/X#2[3]/D#2", s.d3)
        elseif kind == "timed_flow" then
          assert.equals("run-timed_flow:Main/X#2/D#2", s.d)
        elseif kind == "flow" then
          assert.equals("run-flow:Main/X#2/D#2", s.d)
        end
      end)
    end
  end

  it("a run held by a live process is refused, naming its pid", function()
    local db, log = tmp(), tmp()
    local p = io.popen(("exec %s %s node %s %s hold"):format(BIN, CHILD, db, log))
    local line = p:read("l")
    local pid = tonumber(line:match("^holding (%d+)$"))
    assert.is_number(pid, line)
    local store = pf.sqlite(db)
    local ok, err = pcall(function()
      -- the same graph as the child's (names and kinds), not the same objects
      local A = pf.Node:extend("A")
      local X = pf.Node:extend("X")
      local Z = pf.Node:extend("Z")
      local a1, x1, z1 = A(), X(), Z()
      a1:next(x1); x1:next(z1)
      return pf.Flow{ start = a1, name = "Main" }:resume(store, "run-node")
    end)
    os.execute("kill -9 " .. pid)
    p:close()
    assert.is_false(ok)
    assert.equals(("run 'run-node' is running (pid %d)"):format(pid), tostring(err))
    store:close()
    rm_db(db)
    os.remove(log)
  end)
end)

-- ---------------------------------------------------------------- in process

local function counter()
  local n = {}
  return n, function(name, phase) n[name .. " " .. phase] = (n[name .. " " .. phase] or 0) + 1 end
end

describe("durable runs in one process", function()
  local store
  before_each(function() store = pf.memory() end)
  after_each(function() store:close() end)

  local function chain(fail, note, keys)
    local function N(name)
      local c = pf.Node:extend(name)
      function c:prep(s)
        note(name, "prep")
        if keys then keys[#keys + 1] = self.idempotency_key end
      end
      function c:exec()
        note(name, "exec")
        if fail[name] then fail[name] = nil error("cut in " .. name, 0) end
      end
      function c:post(s) note(name, "post") s[name] = true end
      return c()
    end
    local a, b, c = N("A"), N("B"), N("C")
    a:next(b); b:next(c)
    return pf.Flow{ start = a, name = "Main" }
  end

  it("returns last and the run record, saving after every post", function()
    local n, note = counter()
    local keys = {}
    local flow = chain({}, note, keys)
    local last, run = flow:run({}, { store = store, run_id = "r" })
    assert.is_nil(last)
    assert.same({ id = "r", status = "done", step = 5, interrupts = {} }, run)
    local h = store:history("r")
    local paths = {}
    for i, e in ipairs(h) do paths[i] = e.path end
    assert.same({ "Main", "Main > B", "Main > C", "Main", "Main" }, paths)
    assert.same({ "r:Main/A#1", "r:Main/B#2", "r:Main/C#3" }, keys)
    assert.equals(1, n["A exec"])
  end)

  it("saves after the first node's post too: a run cut after it only ends", function()
    local n, note = counter()
    local flow = chain({}, note)
    local post = flow.post
    flow.post = function(self, s, p, e) s.posted = true return post(self, s, p, e) end
    flow:run({}, { store = store, run_id = "e" })
    assert.is_true(store:get("e").shared.posted)
    assert.same({ finished = true }, store:get("e").state)
    -- as if the process died before the run was marked done
    store:fork("e", nil, "e2")
    local last, run = flow:resume(store, "e2")
    assert.is_nil(last)
    assert.equals("done", run.status)
    assert.equals(1, n["C exec"])
  end)

  it("generates a run id when none is given", function()
    local _, run = chain({}, function() end):run({}, { store = store })
    assert.matches("^%d+%-%d+%-%x+$", run.id)
    assert.equals("done", store:runs()[1].status)
  end)

  it("a failed run resumes at the node that failed; finished ones never rerun", function()
    local n, note = counter()
    local keys = {}
    local flow = chain({ B = true }, note, keys)
    local err = errmsg(flow.run, flow, {}, { store = store, run_id = "f" })
    assert.equals("cut in B", err)
    assert.equals("failed", store:runs()[1].status)
    local _, run = flow:resume(store, "f")
    assert.equals("done", run.status)
    assert.same({ ["A prep"] = 1, ["A exec"] = 1, ["A post"] = 1, ["B prep"] = 2,
                  ["B exec"] = 2, ["B post"] = 1, ["C prep"] = 1, ["C exec"] = 1,
                  ["C post"] = 1 }, n)
    local s = store:get("f").shared
    -- B's key is the same in both runs: its side effect can be made once
    assert.same({ "f:Main/A#1", "f:Main/B#2", "f:Main/B#2", "f:Main/C#3" }, keys)
    assert.is_true(s.A and s.B and s.C)
  end)

  it("idempotency keys are unique per item, and absent without a store", function()
    local seen = {}
    local P = pf.ParallelBatchNode:extend("P")
    function P:prep() return { 1, 2, 3 } end
    function P:exec(i) seen[#seen + 1] = self.idempotency_key return i end
    local B = pf.BatchNode:extend("B")
    function B:prep() return { "x", "y" } end
    function B:exec(i) seen[#seen + 1] = self.idempotency_key return i end
    function B:post() seen[#seen + 1] = self.idempotency_key end
    local p, b = P(), B()
    p:next(b)
    local flow = pf.Flow{ start = p, name = "F" }
    flow:run({}, { store = store, run_id = "k" })
    table.sort(seen)
    assert.same({ "k:F/B#2", "k:F/B#2[1]", "k:F/B#2[2]", "k:F/P#1[1]", "k:F/P#1[2]",
                  "k:F/P#1[3]" }, seen)
    seen = {}
    flow:run({})
    assert.same({}, seen)
  end)

  it("any task of the run finds the run's record and the running node's key", function()
    local got = {}
    local N = pf.Node:extend("N")
    function N:prep()
      local rec, key = core.run_context()
      got.prep = { rec.run.id, key }
    end
    function N:exec()
      local child = pf.spawn(function()
        local rec, key = core.run_context()
        return rec.run.id, key
      end)
      got.spawned = { child:wait() }
    end
    local P = pf.ParallelBatchNode:extend("P")
    function P:prep() return { 1, 2 } end
    function P:exec(i)
      local rec, key = core.run_context()
      got[i] = { rec.run.id, rec.index, key }
    end
    local n, p = N(), P()
    n:next(p)
    local _, run = pf.Flow{ start = n, name = "F" }:run({}, { store = store, run_id = "c" })
    assert.equals("done", run.status)
    assert.same({ "c", "c:F/N#1" }, got.prep)
    assert.same({ "c" }, got.spawned)   -- no walk in the spawned task
    assert.same({ "c", 1, "c:F/P#2[1]" }, got[1])
    assert.same({ "c", 2, "c:F/P#2[2]" }, got[2])
    assert.is_nil(core.run_context())   -- the run is over
    local stop = pf.Node:extend("Stop")
    function stop:prep()
      local rec = core.run_context()
      rec.run.stop = "interrupted"
      rec.run.interrupts[1] = { id = "q1", node = "Stop", payload = "ok?" }
      error({})
    end
    local last, run2 = pf.Flow{ start = stop(), name = "G" }:run({}, { store = store,
                                                                      run_id = "i" })
    assert.is_nil(last)
    assert.same({ id = "i", status = "interrupted", step = 1,
                  interrupts = { { id = "q1", node = "Stop", payload = "ok?" } } }, run2)
  end)

  it("a batch's items are saved one by one: checkpoints do not grow with them", function()
    local runs = {}
    local fail_at = 150
    local B = pf.BatchNode:extend("B")
    function B:prep()
      local t = {}
      for i = 1, 300 do t[i] = ("%03d"):format(i) .. ("x"):rep(200) end
      return t
    end
    function B:exec(item)
      local i = tonumber(item:sub(1, 3))
      runs[i] = (runs[i] or 0) + 1
      if i == fail_at then fail_at = nil error("cut", 0) end
      return item:upper()
    end
    function B:post(s, _, r) s.n = #r s.last = r[300] end
    local flow = pf.Flow{ start = B(), name = "F" }
    errmsg(flow.run, flow, {}, { store = store, run_id = "big" })
    local h = store:history("big")
    assert.equals(2, #h)                        -- the start, the batch's start
    assert.equals(150, #store:_items("big"))    -- prep and items 1..149
    local _, run = flow:resume(store, "big")
    assert.equals("done", run.status)
    for i = 1, 300 do assert.equals(i == 150 and 2 or 1, runs[i], "item " .. i) end
    local s = store:get("big").shared
    assert.same({ 300, ("300" .. ("x"):rep(200)):upper() }, { s.n, s.last })
    assert.same({}, store:_items("big"))         -- dropped once done
  end)

  it("a loop's visits get keys of their own", function()
    local keys = {}
    local L = pf.Node:extend("L")
    function L:prep(s) keys[#keys + 1] = self.idempotency_key end
    function L:post(s) s.n = s.n + 1 return s.n < 3 and "again" or "stop" end
    local l = L()
    l:next(l, "again")
    l:next(pf.Node{ name = "End" }, "stop")
    pf.Flow{ start = l, name = "F" }:run({ n = 0 }, { store = store, run_id = "l" })
    assert.same({ "l:F/L#1", "l:F/L#2", "l:F/L#3" }, keys)
  end)

  it("transient keys are left out and put back by resume", function()
    local fail = true
    local used = {}
    local N = pf.Node:extend("N")
    function N:prep(s) used[#used + 1] = s.client end
    function N:exec() if fail then fail = false error("once", 0) end end
    local M = pf.Node:extend("M")
    local n, m = N(), M()
    M.prep = N.prep
    m:next(n)
    local flow = pf.Flow{ start = m, name = "F" }
    local client = io.stdout
    assert.equals("cannot checkpoint shared.client (userdata); list it in transient",
                  errmsg(flow.run, flow, { client = client }, { store = store, run_id = "t0" }))
    errmsg(flow.run, flow, { client = client, v = 1 },
           { store = store, run_id = "t", transient = { "client" } })
    local c = store:get("t")
    assert.is_nil(c.shared.client)
    assert.equals(1, c.shared.v)
    local _, run = flow:resume(store, "t", { shared = { client = client } })
    assert.equals("done", run.status)
    assert.same({ client, client, client }, used)
  end)

  it("fork resumes a copy from an earlier checkpoint; keep bounds the history", function()
    local n, note = counter()
    local flow = chain({}, note)
    flow:run({}, { store = store, run_id = "o" })
    assert.equals("o2", store:fork("o", 3, "o2"))
    local _, run = flow:resume(store, "o2")
    assert.equals("done", run.status)
    assert.equals(2, n["C exec"])       -- step 3 was saved before C ran
    assert.equals(1, n["B exec"])
    assert.equals("done", store:runs{ status = "done" }[1].status)
    local small = pf.memory{ keep = 2 }
    chain({}, function() end):run({}, { store = small, run_id = "s" })
    assert.equals(2, #small:history("s"))
    small:close()
  end)

  it("the run errors of section 8", function()
    local flow = chain({}, function() end)
    flow:run({}, { store = store, run_id = "inv-42" })
    assert.equals("run 'inv-42' exists (done); use flow:resume",
                  errmsg(flow.run, flow, {}, { store = store, run_id = "inv-42" }))
    assert.equals("run 'inv-42' is done", errmsg(flow.resume, flow, store, "inv-42"))
    assert.equals("no run 'nope'", errmsg(flow.resume, flow, store, "nope"))
    local dup = pf.Node:extend("Sum")
    local x, y = dup(), dup()
    x:next(y)
    local F = pf.Flow{ start = x, name = "F" }
    assert.equals("checkpoint needs unique node names in flow 'F': 'Sum' twice; set name=",
                  errmsg(F.run, F, {}, { store = store }))
    assert.equals("run: durability must be \"sync\" or \"async\" (got fast)",
                  errmsg(flow.run, flow, {}, { store = store, durability = "fast" }))
    assert.equals("run: shared must be a table to checkpoint (got number)",
                  errmsg(flow.run, flow, 5, { store = store }))
    assert.equals("run: store must be a store from pf.sqlite or pf.memory (got table)",
                  errmsg(flow.run, flow, {}, { store = {} }))
  end)

  it("a run whose task was cancelled can be resumed in the same process", function()
    local slow = true
    local n, note = counter()
    local S = pf.Node:extend("S")
    function S:exec()
      note("S", "exec")
      if slow then slow = false pf.sleep(30) end
    end
    local flow = pf.Flow{ start = S(), name = "F" }
    pf.run(function()
      local t = pf.spawn(function() flow:run({}, { store = store, run_id = "cx" }) end)
      pf.sleep(0.01)
      -- held by this process and walked: refused
      assert.equals("run 'cx' is running (pid " .. core.store_proc() .. ")",
                    errmsg(flow.resume, flow, store, "cx"))
      t:cancel()
    end)
    assert.equals("running", store:runs()[1].status)
    local _, run = flow:resume(store, "cx")
    assert.equals("done", run.status)
    assert.equals(2, n["S exec"])
  end)

  it("a changed graph refuses resume unless force = true", function()
    local flow = chain({ B = true }, function() end)
    errmsg(flow.run, flow, {}, { store = store, run_id = "g" })
    local other = chain({}, function() end)
    other.start_node.successors.default.successors.default:next(pf.Node{ name = "D" })
    assert.equals("run 'g' was made by a different graph; pass force = true",
                  errmsg(other.resume, other, store, "g"))
    assert.equals("failed", store:runs()[1].status)
    local _, run = other:resume(store, "g", { force = true })
    assert.equals("done", run.status)
  end)
end)

describe("durable runs on SQLite", function()
  it("sync and async runs leave the same checkpoints", function()
    for _, d in ipairs { "sync", "async" } do
      local db = tmp()
      local store = pf.sqlite(db)
      local B = pf.BatchNode:extend("B")
      function B:prep() return { 1, 2, 3 } end
      function B:exec(i) return i * 2 end
      function B:post(s, _, r) s.r = r end
      local _, run = pf.Flow{ start = B(), name = "F" }:run({}, { store = store,
        run_id = "x", durability = d })
      assert.equals("done", run.status)
      store:close()
      store = pf.sqlite(db)
      assert.same({ 2, 4, 6 }, store:get("x").shared.r)
      assert.equals(4, #store:history("x"))
      store:close()
      rm_db(db)
    end
  end)
end)

-- Random graphs of every kind, nested, cut again and again at random
-- points (an error in prep, exec or post of a random call), resumed each
-- time until done: the end state is the one a plain run leaves, so every
-- node's post counted once per visit, and every batch item once.
describe("durable runs of random graphs, cut and resumed", function()
  local function rng(seed)
    local s = (seed * 0x9E3779B97F4A7C15) ~ 0x2545F4914F6CDD1D
    return function(n)
      s = s ~ (s << 13); s = s ~ (s >> 7); s = s ~ (s << 17)
      return (s >> 1) % n + 1
    end
  end

  local KINDS = { "Node", "BatchNode", "ParallelBatchNode", "Flow", "BatchFlow",
                  "ParallelBatchFlow" }
  local SEEDS = tonumber(os.getenv("PF_DURABLE_SEEDS"))
                or ({ plain = 150, asan = 80, valgrind = 30 })[os.getenv("PF_MODE") or "plain"]
                or 150
  local cut_at, calls = {}, 0

  local function maybe_cut(where)
    calls = calls + 1
    if cut_at[calls] then error("cut " .. where .. " at call " .. calls, 0) end
  end

  local function gen(rand, depth, ids)
    ids.n = ids.n + 1
    local name = "N" .. ids.n
    local kind = KINDS[rand(depth >= 3 and 3 or #KINDS)]
    local cls = pf[kind]:extend(name)
    local batch = kind:find("Batch") ~= nil
    local n_items, loops = rand(4) - 1, not kind:find("Flow") and rand(3) == 1
    local function w(self) return self.params.w or 0 end
    function cls:prep(s)
      maybe_cut(name .. " prep")
      if not batch then return w(self) end
      local items = {}
      for i = 1, n_items do
        items[i] = kind:find("Flow") and { w = w(self) * 10 + i } or i + w(self)
      end
      return items
    end
    if not kind:find("Flow") then
      function cls:exec(p)
        maybe_cut(name .. " exec")
        return type(p) == "number" and p * 3 + #name or 0
      end
    end
    function cls:post(s, p, e)
      s.count[name] = (s.count[name] or 0) + 1
      local add = ids.n * 7 + w(self)
      if type(e) == "table" then for _, v in ipairs(e) do add = add + v end
      elseif type(e) == "number" then add = add + e end
      s.sum = s.sum + add
      maybe_cut(name .. " post")
      -- a loop: this node once more, per walk it is in
      local v = name .. ":" .. w(self)
      s.visits[v] = (s.visits[v] or 0) + 1
      if loops and s.visits[v] < 2 then return "again" end
    end
    local node
    if kind:find("Flow") then
      local first, last = gen(rand, depth + 1, ids), nil
      last = first
      for _ = 2, rand(3) do
        local nxt = gen(rand, depth + 1, ids)
        last:next(nxt)
        last = nxt
      end
      node = cls{ start = first }
    else
      node = cls()
      node:next(node, "again")
    end
    return node
  end

  local function plain_and_durable(seed)
    local function build()
      local rand = rng(seed)
      local ids = { n = 0 }
      local first = gen(rand, 1, ids)
      local last = first
      for _ = 2, 3 do
        local nxt = gen(rand, 1, ids)
        last:next(nxt)
        last = nxt
      end
      return pf.Flow{ start = first, name = "Main" }, ids.n
    end
    local flow, n = build()
    cut_at, calls = {}, 0
    local plain = { sum = 0, count = {}, visits = {} }
    flow:run(plain)
    local total = calls
    -- the same graph again (its random actions again), cut at random calls
    local flow2 = build()
    local rand = rng(seed + 1)
    cut_at, calls = {}, 0
    for _ = 1, 3 do cut_at[rand(total + 1)] = true end
    local store = pf.memory()
    local ok, err = pcall(flow2.run, flow2, { sum = 0, count = {}, visits = {} },
                          { store = store, run_id = "g" })
    local cuts = 0
    while not ok do
      assert.matches("^cut ", tostring(err))
      cuts = cuts + 1
      assert.is_true(cuts <= 4, "too many cuts")
      ok, err = pcall(flow2.resume, flow2, store, "g")
    end
    local s = store:get("g").shared
    store:close()
    return plain, s, n
  end

  it(("end as a plain run does (%d graphs)"):format(SEEDS), function()
    local warned = pf.on_warning
    pf.on_warning = function() end   -- flows ending on "again" without a loop
    for seed = 1, SEEDS do
      local plain, s, n = plain_and_durable(seed)
      assert.same(plain.count, s.count, "seed " .. seed .. " (" .. n .. " nodes)")
      assert.equals(plain.sum, s.sum, "seed " .. seed)
    end
    pf.on_warning = warned
  end)
end)

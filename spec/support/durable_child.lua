-- A child process for spec/durable_spec.lua: a flow A -> X -> Z where X
-- is a node of one kind, run (or resumed) on a SQLite store, each side
-- effect logged as a line in a file. The first run SIGKILLs itself in
-- the middle of X (in an item, for the batch kinds), once the run has
-- saved what it saves before that point; "hold" sleeps there instead.
-- usage: pocketflow durable_child.lua KIND DB LOG run|resume|hold [durability]
local pf = require "pocketflow"
local core = require "pocketflow.core"

local kind, db, logpath, mode, durability = ...
local store = pf.sqlite(db)
local ID = "run-" .. kind

local function log(...)
  local f = assert(io.open(logpath, "a"))
  f:write(table.concat({ ... }, " "), "\n")
  f:close()
end

-- The cut: once the run has saved n checkpoints and items (the cut
-- happens after exactly n: sequential kinds have saved them; a parallel
-- item waits for the others), this process dies (run) or waits to be
-- killed (hold); a resumed run goes on.
local function cut(n)
  if mode == "resume" then return end
  local saved, give_up = 0, pf.now() + 60
  while saved < n and pf.now() < give_up do
    saved = #store:history(ID) + #store:_items(ID)
    if saved < n then pf.sleep(0.005) end
  end
  if saved ~= n then
    print(("saved %d before the cut, not %d"):format(saved, n))
    os.exit(3)
  end
  if mode == "hold" then
    io.stdout:write("holding ", (core.store_proc()), "\n")
    io.stdout:flush()
    pf.sleep(60)
  end
  os.execute("kill -9 " .. (core.store_proc()))
  pf.sleep(60)   -- not reached
end

local function logged(cls, name, methods)
  local c = cls:extend(name)
  function c:prep(s)
    log(name, "prep", self.params.w or "")
    if methods.prep then return methods.prep(self, s) end
  end
  function c:exec(p)
    log(name, "exec", self.params.w or tostring(p))
    if methods.exec then return methods.exec(self, p) end
  end
  function c:post(s, p, e)
    log(name, "post", self.params.w or "")
    if methods.post then return methods.post(self, s, p, e) end
  end
  return c
end

local A = logged(pf.Node, "A", { post = function(_, s) s.a = true end })
local Z = logged(pf.Node, "Z", { post = function(_, s) s.z = true end })

-- an inner flow C -> D for the flow kinds; D (or C: in_c) is cut in
-- walk 'cut_w'
local function inner(cut_w, n, in_c)
  local function maybe_cut(self, here)
    if here and (self.params.w or "") == cut_w then cut(n) end
  end
  local C = logged(pf.Node, "C", {
    exec = function(self) maybe_cut(self, in_c) end,
    post = function(self, s) s["c" .. (self.params.w or "")] = self.idempotency_key end })
  local D = logged(pf.Node, "D", {
    exec = function(self) maybe_cut(self, not in_c) end,
    post = function(self, s) s["d" .. (self.params.w or "")] = self.idempotency_key end })
  local c = C()
  c:next(D())
  return c
end

local function walks(s) return { { w = "1" }, { w = "2" }, { w = "3" }, { w = "4" } } end

local X = {
  node = function()
    return logged(pf.Node, "X", {
      prep = function(_, s) return 20 end,
      exec = function(_, p) cut(2) return p + 1 end,
      post = function(_, s, _, e) s.x = e end })()
  end,
  batch = function()
    return logged(pf.BatchNode, "X", {
      prep = function() return { 1, 2, 3, 4, 5 } end,
      exec = function(_, i) if i == 3 then cut(6) end return i * 10 end,
      post = function(_, s, _, r) s.x = r end })()
  end,
  parallel_batch = function()
    return logged(pf.ParallelBatchNode, "X", {
      prep = function() return { 1, 2, 3, 4, 5 } end,
      exec = function(_, i) if i == 3 then cut(8) end pf.sleep(0.001) return i * 10 end,
      post = function(_, s, _, r) s.x = r end })()
  end,
  flow = function()
    local f = logged(pf.Flow, "X", { post = function(_, s) s.x = "flow" end })
    return f{ start = inner("", 3) }
  end,
  timed_flow = function()   -- its frame runs again in a task of its own
    local f = logged(pf.Flow, "X", { post = function(_, s) s.x = "flow" end })
    return f{ start = inner("", 3), timeout = 600 }
  end,
  timed_parallel_batch_flow = function()
    local f = logged(pf.ParallelBatchFlow, "X", { prep = walks,
      post = function(_, s) s.x = "parallel batch flow" end })
    return f{ start = inner("3", 14), deadline = 600 }
  end,
  batch_flow = function()
    local f = logged(pf.BatchFlow, "X", { prep = walks,
      post = function(_, s) s.x = "batch flow" end })
    return f{ start = inner("2", 8) }
  end,
  batch_flow_c = function()   -- cut in the first node of walk 2
    local f = logged(pf.BatchFlow, "X", { prep = walks,
      post = function(_, s) s.x = "batch flow" end })
    return f{ start = inner("2", 7, true) }
  end,
  parallel_batch_flow = function()
    local f = logged(pf.ParallelBatchFlow, "X", { prep = walks,
      post = function(_, s) s.x = "parallel batch flow" end })
    return f{ start = inner("3", 14) }
  end,
}

local a, x, z = A(), X[kind](), Z()
a:next(x)
x:next(z)
local flow = pf.Flow{ start = a, name = "Main" }
local last, run
if mode == "resume" then
  last, run = flow:resume(store, ID)
else
  last, run = flow:run({ start = true }, { store = store, run_id = ID,
                                           durability = durability })
end
print(run.status, run.step)

-- pocketflow.interrupt: pf.interrupt, a question to a person from inside
-- a node (API.md section 8, "Human input"). Without a store, the run
-- option on_interrupt answers it; the question's id names where it was
-- asked, so that the same run asks the same questions under the same ids.
local core = require "pocketflow.core"

local M = {}

-- the questions asked so far in each node run: run (the table core.node_here
-- gives for one run of a node) -> { [key] = count }; a run ends, its
-- table goes
local asked = setmetatable({}, { __mode = "k" })

-- raises msg at level (as error's: 2 is the caller of fail's caller),
-- marked so that the node's attempts end at once (no retry, no fallback)
local function fail(msg, level)
  local info = debug.getinfo(level + 1, "Sl")
  if info and info.currentline > 0 then
    msg = ("%s:%d: %s"):format(info.short_src, info.currentline, msg)
  end
  core.no_retry(msg)
  error(msg, 0)
end

-- the id of the next question of the node run: its key (path and items,
-- "Main/Review[3]") and its order in the run, from 1: "Main/Review[3]#1"
local function next_id(key, run)
  local counts = asked[run]
  if counts == nil then
    counts = {}
    asked[run] = counts
  end
  local n = (counts[key] or 0) + 1
  counts[key] = n
  return key .. "#" .. n
end

-- ------------------------------------------------------ with a store
-- The question ends the run: pf.interrupt raises a pending value (the
-- metatable of src/group.c, so the other items of a parallel batch run
-- to their end), never retried; the run ends "interrupted" with the
-- questions in run.interrupts. flow:resume gives the answers, by id; the
-- node reruns from prep and its questions get their answers in order.

local Pending = core.pending_mt()
Pending.__name = "pocketflow.interrupt"

-- the questions a pending value carries, in order: { { id, node, payload } }
local function list(v, out)
  out = out or {}
  if getmetatable(v) ~= Pending then return out end
  if rawget(v, "pending") then
    for _, e in ipairs(v.pending) do list(e, out) end
  else
    out[#out + 1] = { id = v.id, node = v.node, payload = v.payload }
  end
  return out
end
M.list = list

function Pending.__tostring(v)
  local ids = {}
  for i, q in ipairs(list(v)) do ids[i] = q.id end
  return "interrupted: " .. table.concat(ids, ", ")
end

-- True if v ends a run as interrupted.
function M.is_pending(v)
  return getmetatable(v) == Pending
end

-- the key of an id: "Main/Ask[2]#3" -> "Main/Ask[2]"
local function key_of(id)
  return (id:gsub("#%d+$", ""))
end

-- The answers a run's resume gives: pending is the questions the run
-- stopped on, answer resume's option. Returns { [id] = answer }, or
-- raises (level 0: the message alone).
local function given(run_id, pending, answer)
  local out = {}
  if answer == nil then return out end
  if #pending == 0 then
    error(("run '%s' has no question pending; answer is not used"):format(run_id), 0)
  end
  local ids, known = {}, {}
  for i, q in ipairs(pending) do
    ids[q.id] = true
    known[i] = q.id
  end
  -- by id: a plain table whose keys are all pending ids (with one
  -- question pending, any other value, a table among them, is the answer)
  local by_id = type(answer) == "table" and getmetatable(answer) == nil and next(answer) ~= nil
  if by_id then
    for k in pairs(answer) do
      if not ids[k] then
        if #pending == 1 then by_id = false break end
        error(("run '%s' has no question '%s' pending (pending: %s)"):format(
          run_id, tostring(k), table.concat(known, ", ")), 0)
      end
    end
  end
  if by_id then
    for k, v in pairs(answer) do out[k] = v end
  elseif #pending == 1 then
    out[pending[1].id] = answer
  else
    error(("%d interrupts pending; answer by id"):format(#pending), 0)
  end
  return out
end

-- The answers to keep with an interrupted run: those of the node runs
-- the run was cut in (the keys of the pending questions), so that they
-- replay when those nodes run again.
local function kept(answers, pending)
  local keys, out = {}, {}
  for _, q in ipairs(pending) do keys[key_of(q.id)] = true end
  for id, v in pairs(answers or {}) do
    if keys[key_of(id)] then out[id] = v end
  end
  return out
end

-- durable.lua, resuming run_id with its saved meta: the answers the walk
-- replays, the kept ones and resume's (answer), by id. meta forgets the
-- questions: they are asked again or answered.
function M.resume_answers(run_id, meta, answer)
  local pending = {}
  if type(meta.interrupts) == "table" then   -- what a run saved: checked all the same
    for _, q in ipairs(meta.interrupts) do
      if type(q) == "table" and type(q.id) == "string" then pending[#pending + 1] = q end
    end
  end
  local out = given(run_id, pending, answer)
  if type(meta.answers) == "table" then
    for id, v in pairs(meta.answers) do
      if out[id] == nil then out[id] = v end
    end
  end
  meta.interrupts, meta.answers = nil, nil
  return out
end

-- durable.lua, a walk that ended with the error err: "interrupted" if it
-- is a pending value, the run's interrupts and answers to keep then set
-- (run.interrupts, run.meta); else nil.
function M.stopped(run, err)
  if getmetatable(err) ~= Pending then return nil end
  local pending = list(err)
  run.interrupts = pending
  run.meta.interrupts = pending
  run.meta.answers = kept(run.answers, pending)
  return "interrupted"
end

-- With a store: run.answers { [id] = answer } (the kept ones and
-- resume's); run.owner { [key] = node run }: the node run the answers of
-- a key belong to, the first to ask after the resume (the node cut by
-- the interrupt reruns first). Another run of that node (a loop) finds
-- none: they are dropped.
local function ask_store(run, id, key, node_run, name, payload)
  local answers = run.answers
  if answers ~= nil then
    local owner = run.owner
    if owner == nil then   -- strong: a finished run must not be taken for none
      owner = {}
      run.owner = owner
    end
    local first = owner[key]
    if first == nil then owner[key] = node_run end
    if first ~= nil and first ~= node_run then
      for k in pairs(answers) do
        if key_of(k) == key then answers[k] = nil end
      end
      owner[key] = node_run
    end
    local v = answers[id]
    if v ~= nil then return v end
  end
  local ok, err = pcall(core.serialize, payload, { root = "payload" })
  if not ok then   -- saved with the run: say so now, not as the run ends
    fail(("pf.interrupt: %s"):format(tostring(err):gsub("^pf%.serialize: ", "")), 3)
  end
  local p = setmetatable({ id = id, node = name, payload = payload }, Pending)
  core.no_retry(p)
  error(p, 0)
end

-- the durable run of the running task, or nil
local function store_run()
  local rec = core.run_context()
  return rec and rec.run
end

-- pf.interrupt(payload) -> the answer
function M.interrupt(payload)
  local opts, key, run, name = core.node_here()
  if key == nil then fail("pf.interrupt: not in a node's prep, exec or post", 2) end
  local id = next_id(key, run)
  local durable = store_run()
  if durable ~= nil then
    local v = ask_store(durable, id, key, run, name, payload)
    return v
  end
  local answer = opts and rawget(opts, "on_interrupt")
  if answer == nil then fail("pf.interrupt needs a store or on_interrupt", 2) end
  local ok, v = pcall(answer, payload, id)
  if not ok then
    core.no_retry(v)
    error(v, 0)
  end
  return v
end

return M

-- pocketflow.durable: durable runs (API.md section 8), the run's side.
-- flow:run with a store and flow:resume: the graph checks, the run's
-- life in the store, and the checkpoints' bytes. What a checkpoint holds
-- of the walk, and the run record every task of a run reaches, are the
-- walk's (src/checkpoint.c).
--
-- A checkpoint is pf.serialize(shared) with the walk's saved frames under
-- one more key of shared, STATE, for the time of the call: shared and the
-- frames (prep results, params) keep their shared references. A batch's
-- prep result and finished items are saved one by one (store:_item),
-- under the batch's idempotency key: a checkpoint stays the size of
-- shared and the frames, however many items are done.
local core = require "pocketflow.core"
local store_mod = require "pocketflow.store"
local events = require "pocketflow.events"
local interrupt = require "pocketflow.interrupt"

local M = {}

local fmt = string.format
local kinds = core.kinds
local WALK = core.walk_kind
local STATE = "__pocketflow_run"

-- ------------------------------------------------------------ the graph

local function kind_of(node)
  local mt = type(node) == "table" and getmetatable(node)
  return type(mt) == "table" and mt.__pfkind or nil
end

local function name_of(node)
  local name = node.name
  if type(name) == "string" then return name end
  name = node.__name
  return type(name) == "string" and name or "node"
end

local function is_flow(k)
  return k == kinds.flow or k == kinds.batch_flow or k == kinds.parallel_batch_flow
end

local function sorted_actions(succ)
  local acts = {}
  for a in pairs(succ) do acts[#acts + 1] = a end
  table.sort(acts)
  return acts
end

-- the nodes of a flow's graph, from its start along the sorted actions
local function graph_nodes(flow)
  local list, seen, i = {}, {}, 1
  local start = flow.start_node
  if kind_of(start) then list[1], seen[start] = start, true end
  while list[i] do
    local succ = rawget(list[i], "successors")
    i = i + 1
    if type(succ) == "table" then
      for _, a in ipairs(sorted_actions(succ)) do
        local m = succ[a]
        if kind_of(m) and not seen[m] then
          seen[m] = true
          list[#list + 1] = m
        end
      end
    end
  end
  return list
end

-- appends flow's graph to out, nested flows inside; raises on a repeated
-- name in one flow (nodes are found again by their names)
local function describe(flow, out, open)
  if open[flow] then return end
  open[flow] = true
  local names = {}
  for _, n in ipairs(graph_nodes(flow)) do
    local name, k = name_of(n), kind_of(n)
    if names[name] then
      error(fmt("checkpoint needs unique node names in flow '%s': '%s' twice; set name=",
                name_of(flow), name), 0)
    end
    names[name] = true
    out[#out + 1] = fmt("%q:%d", name, k)
    local succ = rawget(n, "successors")
    if type(succ) == "table" then
      for _, a in ipairs(sorted_actions(succ)) do
        if kind_of(succ[a]) then out[#out + 1] = fmt("%q>%q", a, name_of(succ[a])) end
      end
    end
    if is_flow(k) then
      out[#out + 1] = "{"
      describe(n, out, open)
      out[#out + 1] = "}"
    end
  end
  open[flow] = nil
end

-- FNV-1a, 64 bits, of the graph's description
local function graph_hash(node)
  local out = { fmt("%q:%d", name_of(node), kind_of(node)) }
  if is_flow(kind_of(node)) then describe(node, out, {}) end
  local s, h = table.concat(out, "\n"), -3750763034362895579
  for i = 1, #s do h = (h ~ s:byte(i)) * 1099511628211 end
  return fmt("%016x", h)
end

-- name -> node of a flow's graph, cached per resume
local function finder()
  local maps = {}
  return function(flow, name)
    local map = maps[flow]
    if not map then
      map = {}
      for _, n in ipairs(graph_nodes(flow)) do map[name_of(n)] = n end
      maps[flow] = map
    end
    return map[name]
  end
end

local function mismatch(id)
  error(fmt("run '%s': its checkpoint does not match the graph", id), 0)
end

local function first_missing(r)
  local i = 1
  while r[i] do i = i + 1 end
  return i
end

-- Puts a batch's saved items back into its descriptor d (checkpoint.c);
-- returns false if the walk saved above it has ended since.
local function fill(id, d, rows)
  local r = rows[d.key]
  if not r or not r[0] then mismatch(id) end
  d.prep = r[0][1]
  if d.k == kinds.batch then
    d.res, d.index = {}, first_missing(r)
    for i = 1, d.index - 1 do d.res[i] = r[i][1] end
  elseif d.k == kinds.batch_flow then
    local running = d.index
    d.index = first_missing(r)
    return not r[running]
  else
    local done, live = {}, d.live or {}
    for i, v in pairs(r) do
      if i > 0 then done[i], live[i] = v, nil end
    end
    d.group, d.live = { done = done, live = live }, nil
  end
  return true
end

-- Finds the nodes of saved frames again: a walk's node by its name in
-- its flow; puts the saved items of batches back. frames[1] runs node,
-- or is a walk of flow.
local function resolve(id, find, rows, frames, node, flow)
  for i, d in ipairs(frames) do
    if d.k == WALK then
      if not flow then mismatch(id) end
      node = nil
      if d.node ~= nil then
        node = find(flow, d.node)
        if not node then mismatch(id) end
        d.obj = node
      end
    else
      if not node or d.k ~= kind_of(node) then mismatch(id) end
      if is_flow(d.k) then flow = node end
      if d.key ~= nil and not fill(id, d, rows) then
        for j = #frames, i + 1, -1 do frames[j] = nil end   -- that walk is done
        return
      end
      if d.group then
        for _, fr in pairs(d.group.live) do resolve(id, find, rows, fr, nil, node) end
      end
    end
  end
end

-- the items saved of run id: rows[batch key][idx] = { value }
local function load_rows(store, id)
  local rows = {}
  for _, it in ipairs(store:_items(id)) do
    local r = rows[it.batch] or {}
    rows[it.batch] = r
    r[it.idx] = core.deserialize(it.blob)
  end
  return rows
end

-- ------------------------------------------------------------- the run

local function record(run, status)
  return { id = run.id, status = status, step = run.step, interrupts = run.interrupts }
end

-- Serializes shared with the walk's frames and adds the checkpoint
-- (async: without waiting, whatever the durability).
local function commit(run, path, async)
  if run.failed then return end   -- an item failed: the run ends
  local shared = run.shared
  rawset(shared, STATE, run.root)
  local ok, blob = pcall(core.serialize, shared, run.sopts)
  rawset(shared, STATE, nil)
  if not ok then error(blob, 0) end
  run.step = run.step + 1
  run.store:_save(run.id, run.step, path, blob, async and run.async_opts or run.save_opts)
end

local function new_run(store, id, shared, meta)
  local run = { store = store, id = id, shared = shared, step = 0, root = {},
                interrupts = {}, meta = meta,
                sopts = { root = "shared", skip = meta.transient, checkpoint = true },
                iopts = { root = "item", checkpoint = true }, async_opts = { sync = false },
                save_opts = { sync = meta.durability ~= "async" } }
  -- the walk calls these (checkpoint.c): after a post or an item, and
  -- when an item of a parallel batch ends
  function run.save(rec, frames, path, async)
    while rec.outer do   -- a timed flow's task: its frames over its parent's
      local base = rec.base
      frames = table.move(frames, 1, #frames, #base + 1, table.move(base, 1, #base, 1, {}))
      rec = rec.outer
    end
    if rec.group then rec.group.live[rec.index] = frames else run.root = frames end
    commit(run, path, async)
  end
  -- item i of the batch of that key (0: its prep result) ended with v
  function run.item(key, i, v, async)
    if run.failed then return end
    local ok, blob = pcall(core.serialize, { v }, run.iopts)
    if not ok then error(blob, 0) end
    store:_item(id, key, i, blob, async and run.async_opts or run.save_opts)
  end
  function run.item_done(rec, r)
    local g = rec.group
    g.done[rec.index], g.live[rec.index] = { r }, nil
    run.item(g.key, rec.index, r)
  end
  return run
end

-- Walks node for run, from the frames saved (nil: from the start), and
-- records how the run ended. run.stop, set before an error is raised
-- through the walk, ends the run early with that status.
local function walk(run, node, frames, opts)
  local rec = { run = run, prefix = run.id, path = "" }
  -- the run's observers (on_event, trace, capture, progress, PF_TRACE,
  -- pf.on): its run span, as node:run opens it for a run without a store
  local guard <close> = events.walk_guard("run", opts, name_of(node))
  -- a cancelled task closes it: the run, left running, can be resumed in
  -- this process
  local walked = false
  local _ <close> = setmetatable({}, { __close = function()
    if not walked then run.store:_abandon(run.id) end
  end })
  local before = core.task_run(rec)
  local ok, last = xpcall(core.machine, core.walk_msgh, kind_of(node), node,
                          run.shared, nil, rec, frames)
  core.task_run(before)
  walked = true
  local status = ok and "done" or run.stop or interrupt.stopped(run, last) or "failed"
  if guard then
    if ok then events.walk_finish(guard)
    elseif status == "failed" then events.walk_stop(guard, "error", last)
    else events.walk_stop(guard, status) end
  end
  local saved, meta = pcall(core.serialize, run.meta)
  if not saved then
    ok, last, status, meta = false, meta, "failed", nil
  end
  if ok or status ~= "failed" then
    run.store:_finish(run.id, status, meta)
    if not ok then last = nil end
    return last, record(run, status)
  end
  pcall(run.store._finish, run.store, run.id, "failed", meta)
  error(last, 0)
end

local function check_store(fname, store, level)
  if getmetatable(store) ~= store_mod.Store then
    error(fmt("%s: store must be a store from pf.sqlite or pf.memory (got %s)", fname,
              type(store)), level + 1)
  end
end

local function check_transient(list, level)
  if list == nil then return {} end
  if type(list) ~= "table" then
    error(fmt("run: transient must be a list of keys of shared (got %s)", type(list)),
          level + 1)
  end
  local out = {}
  for i, k in ipairs(list) do
    if type(k) ~= "string" and math.type(k) ~= "integer" then
      error(fmt("run: transient[%d] must be a string or an integer (got %s)", i, type(k)),
            level + 1)
    end
    out[i] = k
  end
  return out
end

local function check_durability(d, fname, level)
  if d ~= nil and d ~= "sync" and d ~= "async" then
    error(fmt("%s: durability must be \"sync\" or \"async\" (got %s)", fname, tostring(d)),
          level + 1)
  end
  return d or "sync"
end

-- runs f(...), raising its error at level, without the position in this
-- file a store's message gets
local function try(level, f, ...)
  local r = table.pack(pcall(f, ...))
  if not r[1] then
    local err = r[2]
    if type(err) == "string" then err = err:gsub("^pocketflow%.durable:%d+: ", "") end
    error(err, level + 1)
  end
  return table.unpack(r, 2, r.n)
end

-- node:run(shared, { store = ... }), from walk.c's run (level 3: its caller)
function M.run(node, shared, opts)
  check_store("run", opts.store, 3)
  local id = opts.run_id
  if id ~= nil and (type(id) ~= "string" or id == "") then
    error(fmt("run: run_id must be a non-empty string (got %s)",
              id == "" and '""' or type(id)), 3)
  end
  local meta = { transient = check_transient(opts.transient, 3),
                 durability = check_durability(opts.durability, "run", 3) }
  if type(shared) ~= "table" then
    error(fmt("run: shared must be a table to checkpoint (got %s)", type(shared)), 3)
  end
  if rawget(shared, STATE) ~= nil then
    error(fmt("run: shared.%s is the run's own; rename it", STATE), 3)
  end
  local graph = try(3, graph_hash, node)
  local store = opts.store
  id = try(3, store._begin, store, id, { graph = graph, meta = core.serialize(meta) })
  local run = new_run(store, id, shared, meta)
  local ok, err = pcall(core.run, commit, run, name_of(node))
  if not ok then
    pcall(store._finish, store, id, "failed")
    error(err, 3)
  end
  return core.run(walk, run, node, nil, opts)
end

local RESUME_OPTS = { shared = "table", force = "boolean", durability = "string" }

local function check_resume_opts(opts)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    error(fmt("resume: options must be a table (got %s)", type(opts)), 3)
  end
  for k, v in pairs(opts) do
    local want = RESUME_OPTS[k]
    if k ~= "answer" and want == nil then
      error(fmt("resume: unknown option '%s'", tostring(k)), 3)
    end
    if want and type(v) ~= want then
      error(fmt("resume: %s must be a %s (got %s)", k, want, type(v)), 3)
    end
  end
  check_durability(opts.durability, "resume", 3)
  return opts
end

-- puts a taken run back as it was, and raises msg at level
local function give_back(store, got, msg, level)
  local status = got.status == "running" and "failed" or got.status
  pcall(store._finish, store, got.id, status)
  error(msg, level + 1)
end

-- flow:resume(store, id, { shared =, force =, answer =, durability = })
function M.resume(node, store, id, opts)
  if not kind_of(node) then
    error(fmt("resume: expected a pocketflow node (got %s)", type(node)), 2)
  end
  check_store("resume", store, 2)
  opts = check_resume_opts(opts)
  local graph = try(2, graph_hash, node)
  local got = try(2, store._acquire, store, id)
  if got.graph ~= graph and not opts.force then
    give_back(store, got, fmt("run '%s' was made by a different graph; pass force = true",
                              id), 2)
  end
  local ok, meta = pcall(core.deserialize, got.meta or "")
  local c = got.checkpoint
  if not ok or type(meta) ~= "table" or not c or type(c.shared) ~= "table" then
    give_back(store, got, fmt("run '%s' has no checkpoint to resume from", id), 2)
  end
  local shared, frames = c.shared, c.state or {}
  local ok3, answers = pcall(interrupt.resume_answers, got.id, meta, opts.answer)
  if not ok3 then give_back(store, got, answers, 2) end
  meta.durability = opts.durability or meta.durability
  local run = new_run(store, got.id, shared, meta)
  run.step, run.root, run.answers, run.resumed = c.step, frames, answers, got.status
  if frames.finished then   -- it died after its last post: it is done
    store:_finish(got.id, "done", core.serialize(meta))
    return nil, record(run, "done")
  end
  for k, v in pairs(opts.shared or {}) do shared[k] = v end
  local ok2, err = pcall(function()
    resolve(id, finder(), load_rows(store, id), frames, node, nil)
  end)
  if not ok2 then give_back(store, got, err, 2) end
  return core.run(walk, run, node, frames)
end

M.STATE = STATE
M.graph_hash = graph_hash
M.kind_of = kind_of
core.set_durable(M.run)

return M

-- pocketflow.events: the event bus. Subscribers (pf.on, a run's
-- on_event, trace and progress sinks) get every event the walk emits
-- (through core.event / C pf_emit) and every pf.emit. The bus fills what
-- the emitter left out: t, run_id, span_id, parent_id, node, path and,
-- on ends, dur. Spans nest per task thread; a task's first span has the
-- current span of the nearest task above it as parent, so concurrent
-- items never share a span. With no subscriber, core.set_dispatch(nil)
-- clears the flag the walk tests and nothing here runs.
local core = require "pocketflow.core"

local now, call_handler, warn = core.now, core.call_handler, core.warn
local task_threads = core.task_threads
local running = coroutine.running
local random = math.random
local format = string.format

local M = {}

local subs = {}          -- array, replaced (never changed) on on/off
local frames = setmetatable({}, { __mode = "k" })  -- thread -> span stack

-- event types that open and close spans
local opens = { run_start = true, node_start = true, item_start = true }
local closes = { run_end = "run_start", node_end = "node_start", item_end = "item_start" }
M.engine_types = {
  run_start = true, run_end = true, node_start = true, node_end = true,
  retry = true, fallback = true, item_start = true, item_end = true,
  checkpoint = true, interrupt = true, progress = true,
}

-- ids: 16 hex for spans, 32 for runs (OpenTelemetry's span and trace ids);
-- a random prefix per process and a counter, so they are unique and cheap
local span_prefix = format("%08x", random(0, 0x7fffffff) * 2 + 1)
local span_count = 0
local hex2 = {}
for i = 0, 255 do hex2[i] = format("%02x", i) end
local function new_span_id()   -- string.format costs three times this
  local n = (span_count + 1) & 0xffffffff
  span_count = n
  return span_prefix .. hex2[n >> 24] .. hex2[(n >> 16) & 255] .. hex2[(n >> 8) & 255]
         .. hex2[n & 255]
end
local function new_run_id()
  return format("%08x%08x%08x%08x", random(0, 0xffffffff), random(0, 0xffffffff),
                random(0, 0xffffffff), random(1, 0xffffffff))
end
M.new_span_id, M.new_run_id = new_span_id, new_run_id

-- The current span of a thread with no stack: that of the nearest task
-- above it.
local function inherited()
  local up = { task_threads() }
  for i = 2, #up do
    local pst = frames[up[i]]
    if pst and pst.n > 0 then return pst[pst.n] end
  end
  return nil
end

-- The span stack of the current thread, made on its first span.
local function stack_of(co)
  local st = frames[co]
  if st then return st end
  st = { n = 0, base = inherited() }
  frames[co] = st
  return st
end

local function top(st)
  if st.n > 0 then return st[st.n] end
  return st.base
end

-- the current span, without making a stack
local function current(co)
  local st = frames[co]
  if st then return top(st) end
  return inherited()
end

-- Paths: arrays of names from the outermost flow down, interned so that
-- a run makes no table per node and sinks can cache what they make of
-- one. A run's span has the empty path; a node's extends its parent's.
local ROOT_PATH = {}
local children = setmetatable({}, { __mode = "k" })  -- path -> name -> path
local function child_path(parent, name)
  if type(parent) ~= "table" then parent = ROOT_PATH end
  local kids = children[parent]
  if kids == nil or kids.n > 1000 then   -- names made per item: no growth
    kids = { n = 0, paths = {} }
    children[parent] = kids
  end
  local p = kids.paths[name]
  if p == nil then
    p = table.move(parent, 1, #parent, 1, {})
    p[#p + 1] = name
    kids.paths[name] = p
    kids.n = kids.n + 1
  end
  return p
end
M.ROOT_PATH = ROOT_PATH

-- progress bars of a batch class (its progress option), by the start
-- event of the batch's span: closed when the span ends
local bars_of = setmetatable({}, { __mode = "k" })
local function close_bars(f)
  local bars = bars_of[f]
  if bars ~= nil then
    bars_of[f] = nil
    bars:close()
  end
end

local function fill_from(ev, f)
  if f == nil then return end
  if ev.run_id == nil then ev.run_id = f.run_id end
  if ev.node == nil then ev.node = f.node end
  if ev.path == nil then ev.path = f.path end
end

local function open_span(ev, st)
  local up = top(st)
  if ev.span_id == nil then ev.span_id = new_span_id() end
  if ev.path == nil then
    local ty = ev.type
    if ty == "node_start" then ev.path = child_path(up and up.path, ev.node)
    elseif ty == "item_start" then ev.path = up and up.path or ROOT_PATH
    else ev.path = ROOT_PATH end
  end
  local bars = ev.bars
  if bars ~= nil then
    ev.bars = nil
    bars.span_id = ev.span_id
    bars_of[ev] = bars
  end
  if ev.parent_id == nil and up then ev.parent_id = up.span_id end
  if ev.run_id == nil then
    if ev.type == "run_start" or up == nil then ev.run_id = new_run_id()
    else ev.run_id = up.run_id end
  end
  local n = st.n + 1
  st.n = n
  st[n] = ev   -- the start event is the frame: no table more per span
end

local function close_span(ev, st)
  local n = st.n
  local want, opener = ev.span_id, closes[ev.type]
  local i = n
  while i > 0 do
    local f = st[i]
    if (want and f.span_id == want) or (not want and f.type == opener) then break end
    i = i - 1
  end
  if i == 0 then   -- no such span open on this thread: pass it as it is
    fill_from(ev, top(st))
    return
  end
  local f = st[i]
  ev.span_id = f.span_id
  if ev.parent_id == nil then ev.parent_id = f.parent_id end
  fill_from(ev, f)
  if ev.dur == nil and f.t then ev.dur = ev.t - f.t end
  if ev.item == nil then ev.item = f.item end
  if f.type == "item_start" and (f.fell_back or ev.status == "error") then
    local batch = i > 1 and st[i - 1] or st.base   -- progress's failed
    if batch then batch.failed = (batch.failed or 0) + 1 end
  end
  for j = i, n do
    if bars_of[st[j]] then close_bars(st[j]) end
    st[j] = nil
  end
  st.n = i - 1
  if st.n == 0 then frames[running()] = nil end  -- threads are reused
end

local function complete(ev)
  if ev.t == nil then ev.t = now() end
  local co = running()
  local ty = ev.type
  if opens[ty] then
    open_span(ev, stack_of(co))
  elseif closes[ty] then
    close_span(ev, stack_of(co))
  else
    local f = current(co)
    if f then
      if ty == "fallback" then f.fell_back = true
      elseif ty == "progress" and f.failed then ev.failed = f.failed end
      if ev.span_id == nil then ev.span_id = f.span_id end
      if ev.parent_id == nil then ev.parent_id = f.parent_id end
      fill_from(ev, f)
    end
  end
end

local function deliver(ev, list)
  local ty, run = ev.type, ev.run_id
  for i = 1, #list do
    local s = list[i]
    if (s.types == nil or s.types[ty]) and (s.run == nil or s.run == run) then
      local ok, err = call_handler(s.fn, ev)
      if not ok then warn("event handler failed: " .. err) end
    end
  end
end

-- dispatch(ev): what core.event and C pf_emit call
function M.dispatch(ev)
  local list = subs
  if #list == 0 then return end
  complete(ev)
  deliver(ev, list)
end

local Sub = {}
Sub.__index = Sub

local function set_list(list)
  subs = list
  core.set_dispatch(#list > 0 and M.dispatch or nil)
end

function Sub:off()
  local list = {}
  for i = 1, #subs do
    if subs[i] ~= self then list[#list + 1] = subs[i] end
  end
  if #list ~= #subs then set_list(list) end
end

local function check_types(filter, fname, level)
  if filter == nil then return nil end
  if type(filter) ~= "table" then
    error(("%s: filter must be an array of event types (got %s)"):format(fname, type(filter)), level + 1)
  end
  local set = {}
  for i = 1, #filter do
    local ty = filter[i]
    if type(ty) ~= "string" then
      error(("%s: filter[%d] must be a string (got %s)"):format(fname, i, type(ty)), level + 1)
    end
    set[ty] = true
  end
  return set
end

-- subscribe(fn, filter, run_id): the common part of pf.on and the run
-- options (on_event, trace, progress), which pass their run's run_id
function M.subscribe(fn, filter, run_id, level)
  level = level or 2
  if type(fn) ~= "function" and not (type(fn) == "table" and getmetatable(fn)
                                     and getmetatable(fn).__call) then
    error(("pf.on: handler must be a function (got %s)"):format(type(fn)), level + 1)
  end
  local s = setmetatable({ fn = fn, types = check_types(filter, "pf.on", level + 1),
                           run = run_id }, Sub)
  local list = table.move(subs, 1, #subs, 1, {})
  list[#list + 1] = s
  set_list(list)
  return s
end

-- pf.on(fn, filter) -> sub
function M.on(fn, filter)
  return M.subscribe(fn, filter, nil, 2)
end

-- pf.emit(type, data): a custom event from inside a node
function M.emit(ty, data)
  if type(ty) ~= "string" or ty == "" then
    error(("pf.emit: type must be a non-empty string (got %s)"):format(
      type(ty) == "string" and '""' or type(ty)), 2)
  end
  if M.engine_types[ty] then
    error(("pf.emit: '%s' is an engine event type; give custom events a name of their own"):format(ty), 2)
  end
  if #subs == 0 then return end
  M.dispatch({ type = ty, data = data })
end

-- run_sinks(opts, run_id): the run options on_event, trace (or
-- PF_TRACE), capture and progress (or PF_PROGRESS) as subscribers of the
-- run run_id. Returns a function that closes them (flushing the trace),
-- or nil when there is none.
function M.run_sinks(opts, run_id, level)
  level = level or 2
  local list = {}
  local target = opts.trace
  if target == nil then target = require("pocketflow.trace").from_env() end
  if target then   -- first: it may fail to open, before anything listens
    list[#list + 1] = require("pocketflow.trace").open(target,
      { capture = opts.capture, run_id = run_id }, level)
  end
  if opts.on_event ~= nil then
    list[#list + 1] = M.subscribe(opts.on_event, nil, run_id, level)
  end
  local bars = require("pocketflow.progress").new(opts.progress, { run_id = run_id })
  if bars then list[#list + 1] = bars end
  if #list == 0 then return nil end
  return function()
    for i = 1, #list do
      local s = list[i]
      if s.close then s:close() else s:off() end
    end
  end
end

-- how many subscribers listen (for the specs and the sinks)
function M.count() return #subs end

-- ------------------------------------------------------ the walk's guard
-- A walk (a run, a parallel item's walk) holds a guard in a slot marked
-- to be closed (src/events.c): the depth of its thread's span stack when
-- it began. When the walk ends, the spans above that depth end: ok
-- (finish), error (an error leaves the walk: __close gets it) or
-- cancelled (the task's thread is reset: __close gets nil). A run's sinks
-- close after its run_end.

local Guard = {}
Guard.__index = Guard

local end_of = { run_start = "run_end", node_start = "node_end", item_start = "item_end" }

local function err_string(e)
  if type(e) == "string" then return e end
  local ok, s = pcall(tostring, e)
  if ok and type(s) == "string" then return s end
  return "(a " .. type(e) .. " error)"
end

local function unwind(g, status, err)
  if g.done then return end
  g.done = true
  local co = running()
  local st = frames[co]
  while st ~= nil and st.n > g.mark do
    local n = st.n
    local f = st[n]
    if #subs > 0 then
      M.dispatch({ type = end_of[f.type] or "node_end", span_id = f.span_id,
                   status = status, error = err })
    end
    if st.n >= n then   -- nobody listens any more: drop it
      close_bars(f)
      st[n] = nil
      st.n = n - 1
      if st.n == 0 and frames[co] == st then frames[co] = nil end
    end
  end
  if g.close then g.close() end
end

-- walk_stop(g, status [, err]): the walk ended with that status (a
-- durable run stopped at a question: "interrupted")
function M.walk_stop(g, status, err)
  unwind(g, status, err ~= nil and err_string(err) or nil)
end

function Guard.__close(g, err)
  if g.done then return end
  if err == nil then unwind(g, "cancelled")
  else unwind(g, "error", err_string(err)) end
end

local env_sinks = false

-- walk_guard(kind, opts, name, item) -> guard or nil: what a walk that
-- starts while someone listens (or a run with options, or with PF_TRACE
-- or PF_PROGRESS set) keeps. kind: "run" (opts: its run options, checked
-- by the walk, src/events.c), "item"
-- (a parallel batch's item, its number), "walk". A run is a new run, with
-- its own run_id, span and sinks, unless it runs inside a span of another
-- and has no sinks of its own. Called from C: level 3 is the run's caller.
function M.walk_guard(kind, opts, name, item)
  local co = running()
  local st = frames[co]
  local g = setmetatable({ mark = st and st.n or 0 }, Guard)
  if kind == "run" then
    local own = opts ~= nil and (opts.on_event ~= nil or opts.trace or opts.progress ~= nil)
    if own or (current(co) == nil and (env_sinks or #subs > 0)) then
      local run_id = new_run_id()
      g.close = M.run_sinks(opts or {}, run_id, 4)
      if #subs == 0 then
        if g.close then g.close() end
        return nil
      end
      M.dispatch({ type = "run_start", run_id = run_id, node = name, path = ROOT_PATH,
                   capture = opts and opts.capture or nil })
    elseif #subs == 0 then
      return nil
    end
  elseif kind == "item" and #subs > 0 then
    M.dispatch({ type = "item_start", node = name, item = item })
  end
  return g
end

-- walk_finish(g [, done, total, in_flight]): the walk ended normally; an
-- item's walk tells its batch's progress after its span ended
function M.walk_finish(g, done, total, in_flight)
  unwind(g, "ok")
  if done ~= nil and #subs > 0 then
    M.dispatch({ type = "progress", done = done, failed = 0, total = total,
                 in_flight = in_flight })
  end
end

-- class_bars(mode): a batch class's progress option; nil when
-- PF_PROGRESS turns it off. Only the progress of its span is shown.
function M.class_bars(mode)
  return require("pocketflow.progress").new(mode, { own_span = true })
end

core.set_hooks(M.walk_guard, M.walk_finish, M.class_bars)

-- PF_TRACE or PF_PROGRESS (1 or json) make every run observed
do
  local tr, pr = os.getenv("PF_TRACE"), os.getenv("PF_PROGRESS")
  env_sinks = (tr ~= nil and tr ~= "") or pr == "1" or pr == "json"
  core.set_env_sinks(env_sinks)
end

return M

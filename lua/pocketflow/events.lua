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

local function fill_from(ev, f)
  if f == nil then return end
  if ev.run_id == nil then ev.run_id = f.run_id end
  if ev.node == nil then ev.node = f.node end
  if ev.path == nil then ev.path = f.path end
end

local function open_span(ev, st)
  local up = top(st)
  if ev.span_id == nil then ev.span_id = new_span_id() end
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
  for j = i, n do st[j] = nil end
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
function M.run_sinks(opts, run_id)
  local list = {}
  if opts.on_event ~= nil then
    list[#list + 1] = M.subscribe(opts.on_event, nil, run_id, 2)
  end
  local target = opts.trace
  if target == nil then target = require("pocketflow.trace").from_env() end
  if target then
    list[#list + 1] = require("pocketflow.trace").open(target,
      { capture = opts.capture, run_id = run_id }, 2)
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

return M

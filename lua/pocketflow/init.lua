-- pocketflow: PocketFlow's nodes and flows for Lua 5.4, on a C core.
-- This file is the thin layer: classes, operators, aliases. The walk,
-- retries, batches and the scheduler are in pocketflow.core (src/).
local core = require "pocketflow.core"

local pf = {}

local kinds = core.kinds

-- pocketflow.queue (section 9) is loaded on first use: a program that
-- distributes nothing keeps its heap (and the collector's work) smaller.
local function queue() return require "pocketflow.queue" end

-- The seed's async names: X_async is used in place of X whenever a node
-- has both, whatever the order they were defined in. A table that gets
-- X_async also gets it as X (the walk looks up X only); a plain X
-- written where an X_async is visible stays behind it; and a new node
-- takes the X_async it sees over an X of its own (init copies options
-- in pairs() order, which differs from process to process).
local async_of = {
  prep = "prep_async", exec = "exec_async", post = "post_async",
  exec_fallback = "exec_fallback_async",
}
local plain_of = {
  prep_async = "prep", exec_async = "exec", post_async = "post",
  exec_fallback_async = "exec_fallback", run_async = "run",
}

local function is_node(x)
  local mt = type(x) == "table" and getmetatable(x)
  return type(mt) == "table" and rawget(mt, "__pfkind") ~= nil
end

-- a timeout or deadline anywhere makes the walk look for them (until
-- then, no attempt pays for the lookups)
local timing = { timeout = true, deadline = true }

local function set_field(t, k, v)
  if timing[k] and v ~= nil then core.arm_timeouts() end
  local async = async_of[k]
  if async ~= nil then
    local a = t[async]
    if a ~= nil then v = a end
  end
  rawset(t, k, v)
  local plain = plain_of[k]
  if plain ~= nil and v ~= nil then rawset(t, plain, v) end
end

local function prefer_async(self)
  for plain, async in pairs(async_of) do
    local a = self[async]
    if a ~= nil and self[plain] ~= a then rawset(self, plain, a) end
  end
end

-- A node's name: the name option, else its class's name (see extend).
local function name_of(node)
  local name = node.name
  if type(name) == "string" then return name end
  name = node.__name
  return type(name) == "string" and name or "node"
end

-- A bad option value as messages show it: a number as itself (nan, inf,
-- -inf alike on every platform), anything else by its type, so no
-- __tostring of the user's runs here.
local function shown(v)
  if type(v) ~= "number" then return type(v) end
  if v ~= v then return "nan" end
  if v == math.huge then return "inf" end
  if v == -math.huge then return "-inf" end
  return tostring(v)
end

local function finite(v)
  return type(v) == "number" and v == v and v > -math.huge and v < math.huge
end

-- The options of section 6 (attempts): each a test and what it wants.
-- nil means none (timeout, deadline, max_wait, retry_on) or the default.
local ATTEMPT_OPTIONS = {
  { "timeout", function(v) return finite(v) and v > 0 end,
    "a finite number of seconds > 0" },
  { "deadline", function(v) return finite(v) and v > 0 end,
    "a finite number of seconds > 0" },
  { "backoff", function(v) return finite(v) and v >= 1 end,
    "a finite number >= 1" },
  { "max_wait", function(v) return finite(v) and v >= 0 end,
    "a finite number of seconds >= 0" },
  { "jitter", function(v) return finite(v) and v >= 0 and v <= 1 end,
    "a number in [0, 1]" },
  { "retry_on", function(v) return type(v) == "function" end, "a function" },
}

local function check_attempts(self, name)
  for i = 1, #ATTEMPT_OPTIONS do
    local o = ATTEMPT_OPTIONS[i]
    local v = self[o[1]]
    if v ~= nil and not o[2](v) then
      error(("%s: %s must be %s (got %s)"):format(name, o[1], o[3], shown(v)), 4)
    end
  end
end

-- progress, an option of the batch classes (section 7): true, "json" or
-- a function(p); false or nil for none
local batch_kinds = {
  [kinds.batch] = true, [kinds.parallel_batch] = true,
  [kinds.batch_flow] = true, [kinds.parallel_batch_flow] = true,
}
local function check_progress(self, name)
  local v = self.progress
  if v == nil or v == false or v == true or v == "json" or not batch_kinds[self.__pfkind] then
    return
  end
  if type(v) == "function" then return end
  local mt = type(v) == "table" and getmetatable(v)
  if type(mt) == "table" and mt.__call ~= nil then return end
  error(('%s: progress must be true, "json" or a function (got %s)'):format(
    name, type(v) == "string" and ("%q"):format(v) or shown(v)), 4)
end

local function check_options(self)
  local own = rawget(self, "name")
  if own ~= nil and type(own) ~= "string" then
    error(("%s: name must be a string (got %s)"):format(self.__name, type(own)), 3)
  end
  local name = name_of(self)
  local r = self.max_retries
  if r ~= nil and (math.type(r) == nil or math.tointeger(r) == nil or r < 1) then
    error(("%s: max_retries must be a positive integer (got %s)"):format(name, tostring(r)), 3)
  end
  local w = self.wait
  if w ~= nil and (type(w) ~= "number" or not (w >= 0)) then
    error(("%s: wait must be a non-negative number (got %s)"):format(name, tostring(w)), 3)
  end
  check_attempts(self, name)
  check_progress(self, name)
  local q = self.distribute
  if q ~= nil then
    if not queue().is_queue(q) then
      error(("%s: distribute must be a pf.queue (got %s)"):format(name, type(q)), 3)
    end
    local kind = rawget(getmetatable(self), "__pfkind")
    if kind ~= kinds.parallel_batch and kind ~= kinds.parallel_batch_flow then
      error(("%s: distribute needs a parallel batch node or flow (got a %s)")
        :format(name, self.__name or "node"), 3)
    end
  end
end

-- Options are checked once init is done (whichever init, however deep
-- its super calls), so errors point at the line that made the node.
local function new(cls, ...)
  local self = setmetatable({}, cls)
  self:init(...)
  prefer_async(self)
  check_options(self)
  return self
end

-- Class:extend([name]) makes a subclass. A class is the metatable of its
-- instances, so metamethods are copied down; its own metatable gives
-- inheritance, construction by call, and the async aliases.
local function extend(parent, name)
  if name ~= nil and type(name) ~= "string" then
    error(("extend: the class name must be a string (got %s)"):format(type(name)), 2)
  end
  local cls = {}
  for k, v in pairs(parent) do
    if type(k) == "string" and k:sub(1, 2) == "__" then rawset(cls, k, v) end
  end
  rawset(cls, "__index", cls)
  name = name or rawget(parent, "__name")
  rawset(cls, "__name", name)
  rawset(cls, "name", name)
  return setmetatable(cls, { __index = parent, __call = new, __newindex = set_field })
end

-- ------------------------------------------------------------- BaseNode

local BaseNode = setmetatable({}, { __call = new, __newindex = set_field })
rawset(BaseNode, "__index", BaseNode)
rawset(BaseNode, "__name", "BaseNode")
rawset(BaseNode, "name", "BaseNode")
rawset(BaseNode, "__pfkind", kinds.node)
rawset(BaseNode, "__newindex", set_field)
BaseNode.extend = extend
BaseNode.max_retries = 1
BaseNode.wait = 0

function BaseNode:init(opts)
  rawset(self, "params", {})
  rawset(self, "successors", {})
  if opts ~= nil then
    if type(opts) ~= "table" then
      error(("%s: options must be a table (got %s)"):format(name_of(self), type(opts)), 3)
    end
    for k, v in pairs(opts) do
      if type(k) == "string" then self[k] = v end
    end
  end
end

function BaseNode:set_params(params)
  if type(params) ~= "table" then
    error(("set_params: params must be a table (got %s)"):format(type(params)), 2)
  end
  rawset(self, "params", params)
end

function BaseNode:next(node, action)
  if action == nil then action = "default" end
  if type(action) ~= "string" then
    error(("next: action must be a string (got %s)"):format(type(action)), 2)
  end
  if not is_node(node) then
    error(("next: successor must be a pocketflow node (got %s)"):format(type(node)), 2)
  end
  local succ = rawget(self, "successors")
  if succ == nil then
    succ = {}
    rawset(self, "successors", succ)
  end
  if succ[action] ~= nil then
    pf.on_warning(("%s: overwriting successor for action '%s'"):format(name_of(self), action))
  end
  succ[action] = node
  return node
end

-- the defaults do nothing; the core skips calling them
BaseNode.prep = core.noop
BaseNode.exec = core.noop
BaseNode.post = core.noop
BaseNode.cur_retry = 0
BaseNode.exec_fallback = core.reraise   -- re-raises err unchanged

BaseNode.run = core.run_node
rawset(BaseNode, "run_async", core.run_node)

-- a - "action" >> b
local Transition = {}
Transition.__index = Transition
function Transition.__shr(t, node)
  if getmetatable(t) ~= Transition then
    error("'>>': the left side must be a node or node - \"action\"", 2)
  end
  return t.node:next(node, t.action)
end

rawset(BaseNode, "__sub", function(node, action)
  if not is_node(node) then
    error(("'-': the left side must be a node (got %s)"):format(type(node)), 2)
  end
  if type(action) ~= "string" then
    error(("node - action: action must be a string (got %s)"):format(type(action)), 2)
  end
  return setmetatable({ node = node, action = action }, Transition)
end)

rawset(BaseNode, "__shr", function(a, b)
  if not is_node(a) then return Transition.__shr(a, b) end
  return a:next(b)
end)

rawset(BaseNode, "__tostring", function(self)
  return ("%s: %p"):format(name_of(self), self)
end)

-- ---------------------------------------------------------------- nodes

local Node = extend(BaseNode, "Node")
local BatchNode = extend(Node, "BatchNode")
rawset(BatchNode, "__pfkind", kinds.batch)
local ParallelBatchNode = extend(BatchNode, "ParallelBatchNode")
rawset(ParallelBatchNode, "__pfkind", kinds.parallel_batch)

-- ---------------------------------------------------------------- flows

local Flow = extend(BaseNode, "Flow")
rawset(Flow, "__pfkind", kinds.flow)

function Flow:init(opts)
  if is_node(opts) then opts = { start = opts } end
  local start = type(opts) == "table" and opts.start or nil
  if start ~= nil then
    local rest = {}
    for k, v in pairs(opts) do if k ~= "start" then rest[k] = v end end
    opts = rest
  end
  BaseNode.init(self, opts)
  if start ~= nil then
    if not is_node(start) then
      error(("%s: start must be a pocketflow node (got %s)"):format(name_of(self), type(start)), 3)
    end
    rawset(self, "start_node", start)
  end
end

function Flow:start(node)
  if not is_node(node) then
    error(("start: expected a pocketflow node (got %s)"):format(type(node)), 2)
  end
  rawset(self, "start_node", node)
  return node
end

-- the last action of the inner walk drives the outer flow
function Flow.post(_, _, _, exec_res) return exec_res end

local BatchFlow = extend(Flow, "BatchFlow")
rawset(BatchFlow, "__pfkind", kinds.batch_flow)
local ParallelBatchFlow = extend(BatchFlow, "ParallelBatchFlow")
rawset(ParallelBatchFlow, "__pfkind", kinds.parallel_batch_flow)

local diagram = require "pocketflow.diagram"
Flow.to_mermaid = diagram.to_mermaid
Flow.to_dot = diagram.to_dot

-- --------------------------------------------------------------- export

pf.BaseNode = BaseNode
pf.Node = Node
pf.BatchNode = BatchNode
pf.ParallelBatchNode = ParallelBatchNode
pf.Flow = Flow
pf.BatchFlow = BatchFlow
pf.ParallelBatchFlow = ParallelBatchFlow

pf.AsyncNode = Node
pf.AsyncFlow = Flow
pf.AsyncBatchNode = BatchNode
pf.AsyncBatchFlow = BatchFlow
pf.AsyncParallelBatchNode = ParallelBatchNode
pf.AsyncParallelBatchFlow = ParallelBatchFlow

pf.run = core.run
pf.spawn = core.spawn
pf.gather = core.gather
pf.sleep = core.sleep
pf.await = core.await
pf.timeout = core.timeout
pf.now = core.now
pf.version = core.version
pf.exec = core.exec
pf.read_file = core.read_file
pf.write_file = core.write_file
pf.stat = core.stat
pf.list_dir = core.list_dir
pf.mkdir = core.mkdir
pf.remove = core.remove
pf.rename = core.rename
pf.serialize = core.serialize
pf.deserialize = core.deserialize
pf.http = require "pocketflow.http"
pf.json = require "pocketflow.json"
local store = require "pocketflow.store"
pf.sqlite, pf.memory, pf.store_id = store.sqlite, store.memory, store.id
BaseNode.resume = require("pocketflow.durable").resume
pf.redis = { connect = core.redis_connect, null = pf.json.null }
function pf.queue(opts)
  local q = queue().new(opts, 3)   -- not a tail call: errors at level 3
  return q
end
function pf.work(q, flow, opts)
  queue().work(q, flow, opts, 3)
end
pf.interrupt = require("pocketflow.interrupt").interrupt

local events = require "pocketflow.events"
pf.on = events.on
pf.emit = events.emit

-- a progress bar on the terminal is cleared around a warning and redrawn
local progress = require "pocketflow.progress"
local function write_warning(msg)
  io.stderr:write("pocketflow: warning: ", tostring(msg), "\n")
end
function pf.on_warning(msg)
  return progress.around_warning(write_warning, msg)
end
core.set_warn(function(msg) return progress.around_warning(pf.on_warning, msg) end)

return pf

-- pf.queue and pf.work (API.md section 9): the items of a parallel batch
-- node or flow with distribute = q go to workers through a Redis stream
-- with a consumer group, and their results come back to the walk.
--
-- Keys, for a queue named N (the {N} hash tag keeps them on one slot):
--   pf:{N}:items     the stream of items; consumer group "pf"
--   pf:{N}:dead      the dead-letter stream
--   pf:{N}:workers   sorted set: worker -> its last heartbeat (server time)
--   pf:{N}:seq       batch numbers
--   pf:{N}:claims    hash: entry id -> takeovers not counted in the entry
--   pf:{N}:m:<b>     batch b's meta (path, hash, params, shared); its
--                    presence means the batch is alive
--   pf:{N}:r:<b>     list: batch b's results, pushed by workers
--
-- An entry's fields: b (batch), i (item, from 1), p (node path, "\31"
-- joined), h (graph hash), v (the serialized item), t (failed runs
-- before this entry), e (the last error). A failed run re-adds the item
-- as a new entry with t + 1; a takeover counts in pf:{N}:claims. A run is
-- the (t + 1 + claims)th; past max_deliveries the item is dead.
local core = require "pocketflow.core"

local M = {}

local serialize, deserialize = core.serialize, core.deserialize
local sleep, now, spawn = core.sleep, core.now, core.spawn
local K_WALK = core.kinds.parallel_batch_flow + 1   -- walk.h: PF_K_WALK
local K_EXEC = core.kinds.parallel_batch_flow + 2   -- walk.h: PF_K_EXEC
local GROUP = "pf"
local CHUNK = 256          -- items per XADD script call
local SEP = "\31"

local function warn(msg)
  local pf = package.loaded.pocketflow
  if type(pf) == "table" and pf.on_warning then pcall(pf.on_warning, msg)
  else io.stderr:write("pocketflow: warning: ", msg, "\n") end
end

local function shown(v)
  if type(v) == "string" then return ("%q"):format(v) end
  if type(v) ~= "number" then return type(v) end
  if v ~= v then return "nan" end
  return tostring(v)
end

local function errstr(e)
  if type(e) == "string" then return e end
  local ok, s = pcall(tostring, e)
  return ok and type(s) == "string" and s or type(e)
end

-- ---------------------------------------------------------------- queue

local Queue = {}
Queue.__index = Queue
Queue.__name = "pf.queue"

local OPTIONS = {
  redis = { function(v) return type(v) == "string" and v:find("^redis://") end,
            "a redis:// URL" },
  name = { function(v) return type(v) == "string" and #v > 0 and #v <= 200 and
                         not v:find("[%c{}]") end,
           "a non-empty string without braces or control characters" },
  lease = { function(v) return type(v) == "number" and v >= 0.1 and v < math.huge end,
            "a finite number of seconds >= 0.1" },
  max_deliveries = { function(v) return math.type(v) == "integer" and v >= 1 end,
                     "a positive integer" },
}

function M.new(opts, level)
  level = level or 2
  if type(opts) ~= "table" then
    error(("pf.queue: options must be a table (got %s)"):format(type(opts)), level)
  end
  for k in pairs(opts) do
    if OPTIONS[k] == nil then
      error(("pf.queue: unknown option '%s'"):format(errstr(k)), level)
    end
  end
  local o = { lease = 30, max_deliveries = 3 }
  for k, v in pairs(opts) do o[k] = v end
  for _, k in ipairs { "redis", "name", "lease", "max_deliveries" } do
    local spec, v = OPTIONS[k], o[k]
    if v == nil then error(("pf.queue: %s is required (%s)"):format(k, spec[2]), level) end
    if not spec[1](v) then
      error(("pf.queue: %s must be %s (got %s)"):format(k, spec[2], shown(v)), level)
    end
  end
  local p = "pf:{" .. o.name .. "}:"
  return setmetatable({
    url = o.redis, name = o.name, lease = o.lease, max_deliveries = o.max_deliveries,
    stream = p .. "items", dead = p .. "dead", workers = p .. "workers",
    seq = p .. "seq", claims = p .. "claims", prefix = p,
  }, Queue)
end

function M.is_queue(v)
  return getmetatable(v) == Queue
end

function Queue:__tostring()
  return ("pf.queue: %s on %s"):format(self.name, self.url)
end

-- A connection error (the server went away, or is not back yet): the
-- queue's calls retry these for up to a lease.
local function transient(e)
  return type(e) == "string" and (e:find("^pf%.redis: connection to ") or
    e:find("^pf%.redis: cannot connect to ") or e:find(": LOADING ") ~= nil)
end

-- r:call(...) retried while Redis is away, for up to the queue's lease
local function call(q, r, ...)
  local deadline
  while true do
    local ok, res = pcall(r.call, r, ...)
    if ok then return res end
    if not transient(res) then error(res, 0) end
    deadline = deadline or now() + q.lease
    if now() > deadline then error(res, 0) end
    sleep(0.1)
  end
end

-- A Lua script run by EVALSHA, loaded again after NOSCRIPT (a restart).
local function script(src) return { src = src } end

local function run_script(q, r, s, keys, args)
  local a = { #keys }
  for i = 1, #keys do a[#a + 1] = keys[i] end
  for i = 1, #args do a[#a + 1] = args[i] end
  for _ = 1, 3 do
    if s.sha then
      local ok, res = pcall(call, q, r, "EVALSHA", s.sha, table.unpack(a))
      if ok then return res end
      if not errstr(res):find("NOSCRIPT", 1, true) then error(res, 0) end
    end
    s.sha = call(q, r, "SCRIPT", "LOAD", s.src)
  end
  error("pf.queue: the server keeps dropping its scripts", 0)
end

local function connect(q)
  return core.redis_connect(q.url)
end

local function ensure_group(q, r)
  local ok, e = pcall(call, q, r, "XGROUP", "CREATE", q.stream, GROUP, "0", "MKSTREAM")
  if not ok and not errstr(e):find("BUSYGROUP", 1, true) then error(e, 0) end
end

-- The queue's own client, for stats and the coordinators of this process;
-- tasks that want it while it connects wait for that connection.
function Queue:_client()
  local r = rawget(self, "r")
  if r then return r end
  local waiters = rawget(self, "connecting")
  if waiters then
    core.await(function(resume) waiters[#waiters + 1] = resume end)
    return self:_client()
  end
  waiters = {}
  rawset(self, "connecting", waiters)
  local done <close> = setmetatable({}, { __close = function()
    rawset(self, "connecting", nil)
    for _, w in ipairs(waiters) do w() end
  end })
  r = connect(self)
  rawset(self, "r", r)
  return r
end

local STATS = script [[
local t = redis.call('TIME')
local len = redis.call('XLEN', KEYS[1])
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1])
local inflight = 0
if type(p) == 'table' and p[1] then inflight = p[1] end
local dead = redis.call('XLEN', KEYS[2])
local w = redis.call('ZCOUNT', KEYS[3], tonumber(t[1]) - tonumber(ARGV[2]), '+inf')
return { len - inflight, inflight, dead, w }
]]

function Queue:stats()
  if getmetatable(self) ~= Queue then
    error("q:stats: expected a pf.queue (call it as q:stats())", 2)
  end
  local s = run_script(self, self:_client(), STATS,
                       { self.stream, self.dead, self.workers },
                       { GROUP, math.ceil(self.lease) })
  return { pending = s[1], in_flight = s[2], dead = s[3], workers = s[4] }
end

function Queue:close()
  local r = rawget(self, "r")
  rawset(self, "r", nil)
  if r then r:close() end
end

-- ---------------------------------------------------------------- graph

local function kind_of(node)
  local mt = getmetatable(node)
  return type(mt) == "table" and rawget(mt, "__pfkind") or nil
end

local function name_of(node)
  local n = node.name
  if type(n) == "string" then return n end
  n = node.__name
  return type(n) == "string" and n or "node"
end

local function fn_text(f)
  if type(f) ~= "function" then return type(f) end
  local ok, s = pcall(string.dump, f, true)
  return ok and s or "C"
end

-- FNV-1a, 64 bits, as 16 hex digits
local function fnv(s)
  local h = -3750763034362895579   -- 0xcbf29ce484222325
  for i = 1, #s do
    h = (h ~ s:byte(i)) * 1099511628211
  end
  return ("%016x"):format(h)
end

-- The hash of the graph under node: every node's name, kind, options of
-- its attempts and code (stripped bytecode), the actions between them.
local hashes = setmetatable({}, { __mode = "k" })
local function graph_hash(node)
  local h = hashes[node]
  if h then return h end
  local ids, order, parts = {}, {}, {}
  local function id(n)
    if ids[n] == nil then
      order[#order + 1] = n
      ids[n] = #order
    end
    return ids[n]
  end
  id(node)
  local i = 1
  while order[i] do
    local n = order[i]
    local p = { name_of(n), tostring(kind_of(n)), tostring(n.max_retries),
      tostring(n.wait), tostring(n.timeout), fn_text(n.prep), fn_text(n.exec),
      fn_text(n.post), fn_text(n.exec_fallback) }
    local start = rawget(n, "start_node") or n.start_node
    if type(start) == "table" then p[#p + 1] = "start>" .. id(start) end
    local succ = rawget(n, "successors")
    if type(succ) == "table" then
      local acts = {}
      for a in pairs(succ) do if type(a) == "string" then acts[#acts + 1] = a end end
      table.sort(acts)
      for _, a in ipairs(acts) do p[#p + 1] = a .. ">" .. id(succ[a]) end
    end
    parts[i] = table.concat(p, "\30")
    i = i + 1
  end
  h = fnv(table.concat(parts, "\29"))
  hashes[node] = h
  return h
end
M.graph_hash = graph_hash

-- Every node under flow by its path (names joined by SEP), false when a
-- path names two nodes.
local function index_graph(flow)
  local map = {}
  local function add(path, n)
    if map[path] == nil then map[path] = n
    elseif map[path] ~= n then map[path] = false end
  end
  local function visit(n, path, seen)
    add(path, n)
    if seen[n] then return end
    seen[n] = true
    local start = n.start_node
    if type(start) ~= "table" then return end
    local todo, inside = { start }, {}
    while #todo > 0 do
      local c = table.remove(todo)
      if not inside[c] then
        inside[c] = true
        visit(c, path .. SEP .. name_of(c), seen)
        local succ = rawget(c, "successors")
        if type(succ) == "table" then
          for _, s in pairs(succ) do
            if type(s) == "table" then todo[#todo + 1] = s end
          end
        end
      end
    end
  end
  visit(flow, name_of(flow), {})
  return map
end

-- the node at path, the exact path first, else the one path ending so
local function find_node(map, path)
  local n = map[path]
  if n ~= nil then return n or nil end
  local found
  for k, v in pairs(map) do
    if v and (k:sub(-#path - 1) == SEP .. path) then
      if found and found ~= v then return nil end
      found = v
    end
  end
  return found
end

-- ---------------------------------------------------------- coordinator

local ADD = script [[
local ids = {}
for j = 1, #ARGV - 4, 2 do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', 'b', ARGV[1], 'i', ARGV[4 + j],
    'p', ARGV[2], 'h', ARGV[3], 'v', ARGV[5 + j], 't', '0')
end
return ids
]]

local DROP = script [[
for j = 1, #ARGV do
  redis.call('XACK', KEYS[1], 'pf', ARGV[j])
  redis.call('XDEL', KEYS[1], ARGV[j])
end
return 1
]]

local function meta_ttl(q)
  return math.max(math.ceil(q.lease * 3 * 1000), 30000)
end

local function encode_item(name, i, v)
  local ok, s = pcall(serialize, v, "item")
  if not ok then
    error(("%s: item %d cannot go to workers: %s"):format(name, i, errstr(s)), 0)
  end
  return s
end

-- The state of one distributed batch, in the coordinator. Items are
-- serialized as they go (and again if Redis lost them), so that the
-- coordinator holds no second copy of a batch.
local Batch = {}
Batch.__index = Batch

function Batch:add(from, to)
  local q, args = self.q, { self.id, self.path, self.hash }
  args[4] = "x"   -- pads ARGV so that items start at 5
  for i = from, to do
    args[#args + 1] = tostring(i)
    args[#args + 1] = encode_item(self.name, i, self.items[i])
  end
  local ids = run_script(q, self.r, ADD, { q.stream }, args)
  for k, i in ipairs(ids) do self.ids[from + k - 1] = i end
end

-- Redis lost the batch (a restart without persistence): its group, meta
-- and every item not done go back.
function Batch:recover()
  ensure_group(self.q, self.r)
  call(self.q, self.r, "SET", self.meta_key, self.meta, "PX", meta_ttl(self.q))
  local i = 1
  while i < self.next do
    if self.got[i] then
      i = i + 1
    else
      local j = i
      while j + 1 < self.next and not self.got[j + 1] and j + 1 - i < CHUNK do j = j + 1 end
      self:add(i, j)
      i = j + 1
    end
  end
end

function Batch:tick()
  local t = now()
  if t < self.next_tick then return end
  self.next_tick = t + math.min(1, self.q.lease / 3)
  local alive = call(self.q, self.r, "PEXPIRE", self.meta_key, meta_ttl(self.q))
  if alive == 0 then self:recover() end
  if self.done > self.seen_done then self.seen_done, self.since = self.done, t end
  if not self.warned and t - self.since > self.q.lease and self.q:stats().workers == 0 then
    self.warned = true
    warn(("%s: no worker is attached to queue '%s'; the batch waits for one (pf.work)")
      :format(self.path:gsub(SEP, " > "), self.q.name))
  end
end

function Batch:take(blob)
  local ok, m = pcall(deserialize, blob)
  if not ok or type(m) ~= "table" or math.type(m.i) ~= "integer" then
    warn("pf.queue: a result that is not one was dropped")
    return
  end
  local i = m.i
  if i < 1 or i > self.n or self.got[i] then return end   -- counted once
  if not m.ok then
    error(("item %d failed on %d workers: %s"):format(i, m.tries, errstr(m.err)), 0)
  end
  self.got[i] = true
  self.ids[i] = nil
  self.done = self.done + 1
  if self.flow then self.changes[i] = m.set or {} else self.results[i] = m.v end
end

function Batch:cleanup()
  if self.cleaned then return end
  self.cleaned = true
  local q, r = self.q, self.r
  call(q, r, "DEL", self.meta_key, self.res_key)
  local ids = {}
  for i = 1, self.next - 1 do
    if not self.got[i] and self.ids[i] then ids[#ids + 1] = self.ids[i] end
    if #ids >= 1000 then run_script(q, r, DROP, { q.stream }, ids); ids = {} end
  end
  if #ids > 0 then run_script(q, r, DROP, { q.stream }, ids) end
end

function Batch:loop(maxc)
  local n, q = self.n, self.q
  local limit = maxc > 0 and maxc or n
  while self.done < n do
    while self.next <= n and self.next - 1 - self.done < limit do
      local k = math.min(CHUNK, limit - (self.next - 1 - self.done), n - self.next + 1)
      self:add(self.next, self.next + k - 1)
      self.next = self.next + k
    end
    self:tick()
    local got = call(q, self.rb, "BLPOP", self.res_key, 1)
    if got then
      self:take(got[2])
      local more = call(q, self.r, "LPOP", self.res_key, 1000)
      if more then for _, b in ipairs(more) do self:take(b) end end
    end
  end
end

-- q:_distribute(self, shared, items, params, maxc, flow, path): called by
-- the walk (walk.c, parallel_step) in place of the local group.
function Queue:_distribute(run, shared, items, params, maxc, flow, path)
  local node = getmetatable(run)
  local n = #items
  local name = name_of(run)
  if n == 0 then
    if flow then return nil end
    return {}
  end
  local r = self:_client()
  local b = setmetatable({ q = self, r = r, n = n, flow = flow, got = {},
    ids = {}, results = {}, changes = {}, done = 0, next = 1, next_tick = 0,
    seen_done = 0, since = now(),
    path = table.concat(path, SEP), hash = graph_hash(node), items = items,
    name = name }, Batch)
  local meta = { path = path, params = flow and params or run.params, flow = flow }
  if flow then
    local ok, s = pcall(serialize, shared, "shared")
    if not ok then error(("%s: shared cannot go to workers: %s"):format(name, errstr(s)), 0) end
    meta.shared = s
  end
  local okm, blob = pcall(serialize, meta, "params")
  if not okm then error(("%s: params cannot go to workers: %s"):format(name, errstr(blob)), 0) end
  b.meta = blob
  local rb <close> = connect(self)   -- BLPOP holds its connection
  b.rb = rb
  ensure_group(self, r)
  -- unique even when Redis restarts empty and seq starts again
  b.id = ("%d.%x"):format(call(self, r, "INCR", self.seq), math.random(0, 0x7fffffff))
  b.meta_key, b.res_key = self.prefix .. "m:" .. b.id, self.prefix .. "r:" .. b.id
  call(self, r, "SET", b.meta_key, b.meta, "PX", meta_ttl(self))
  -- cancelled: the cleanup waits, so it runs in a task of its own
  local guard <close> = setmetatable({}, { __close = function()
    if not b.cleaned then spawn(function() pcall(b.cleanup, b) end) end
  end })
  local ok, e = pcall(b.loop, b, maxc)
  pcall(b.cleanup, b)
  if not ok then error(e, 0) end
  if not flow then return b.results end
  for i = 1, n do
    for _, kv in ipairs(b.changes[i]) do shared[kv[1]] = kv[2] end
  end
  return nil
end

-- ---------------------------------------------------------------- worker

-- items done: KEYS stream, claims, then each item's meta and results
-- keys; ARGV each item's entry id and result. One variadic command for
-- all the items (one RPUSH a batch): a command called from a script
-- costs Redis about a microsecond, as much as a small XACK's work.
local ACK = script [[
local ids, batches, order = {}, {}, {}
for j = 1, #ARGV, 2 do
  ids[#ids + 1] = ARGV[j]
  local mk = KEYS[j + 2]
  local b = batches[mk]
  if not b then
    b = { rk = KEYS[j + 3] }
    batches[mk] = b
    order[#order + 1] = mk
  end
  b[#b + 1] = ARGV[j + 1]
end
-- unpack is bounded by Lua's C stack: slices of 4000
local function each(list, f)
  for s = 1, #list, 4000 do f(unpack(list, s, math.min(s + 3999, #list))) end
end
for _, mk in ipairs(order) do
  local b = batches[mk]
  if redis.call('EXISTS', mk) == 1 then
    each(b, function(...) redis.call('RPUSH', b.rk, ...) end)
  end
end
each(ids, function(...)
  redis.call('XACK', KEYS[1], 'pf', ...)
  redis.call('XDEL', KEYS[1], ...)
  redis.call('HDEL', KEYS[2], ...)
end)
return 1
]]

-- a failed run: the item again, as a new entry, with t and e
local RETRY = script [[
redis.call('XADD', KEYS[1], '*', 'b', ARGV[2], 'i', ARGV[3], 'p', ARGV[4], 'h', ARGV[5],
  'v', ARGV[6], 't', ARGV[7], 'e', ARGV[8])
redis.call('XACK', KEYS[1], 'pf', ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
]]

-- the last run failed: to the dead-letter stream, the failure to the batch
local DEAD = script [[
redis.call('XADD', KEYS[3], '*', 'b', ARGV[2], 'i', ARGV[3], 'p', ARGV[4], 'h', ARGV[5],
  'v', ARGV[6], 't', ARGV[7], 'e', ARGV[8])
if redis.call('EXISTS', KEYS[4]) == 1 then redis.call('RPUSH', KEYS[5], ARGV[9]) end
redis.call('XACK', KEYS[1], 'pf', ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
]]

local HEARTBEAT = script [[
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(t[1]) - tonumber(ARGV[2]) * 10)
return 1
]]

local Worker = {}
Worker.__index = Worker

local function fields_of(list)
  local f = {}
  if type(list) ~= "table" then return nil end
  for j = 1, #list - 1, 2 do f[list[j]] = list[j + 1] end
  return f
end

-- the batch's meta, cached; nil when the batch is over (or, for a
-- moment after Redis restarted empty, not back yet: not cached)
function Worker:meta(b)
  local m = self.metas[b]
  if m ~= nil then return m end
  local blob = call(self.q, self.r, "GET", self.q.prefix .. "m:" .. b)
  if blob == nil then return nil end
  m = deserialize(blob)
  if m.flow then
    local before = deserialize(m.shared)
    m.before = {}
    for k, v in pairs(before) do m.before[k] = serialize(v) end
  end
  self.metas[b] = m
  self.nmetas = self.nmetas + 1
  if self.nmetas > 64 then self.metas, self.nmetas = {}, 0 end
  return m
end

local function ensure_index(node)
  if type(rawget(node, "__index")) ~= "table" then rawset(node, "__index", node) end
end

-- one item's run: the node's exec frame, or a walk of the flow over a
-- copy of shared; returns what goes back (the result or the changes)
local function run_item(m, node, item)
  ensure_index(node)
  local run = setmetatable({ params = m.params or {} }, node)
  if not m.flow then
    rawset(run, "__index", run)
    return core.machine(K_EXEC, setmetatable({}, run), nil, item)
  end
  local shared = deserialize(m.shared)
  local params = {}
  for k, v in pairs(m.params or {}) do params[k] = v end
  for k, v in pairs(item) do params[k] = v end
  core.machine(K_WALK, run, shared, params)
  local set = {}
  for k, v in pairs(shared) do
    local s = serialize(v, "shared")
    if m.before[k] ~= s then set[#set + 1] = { k, v } end
  end
  for k in pairs(m.before) do
    if shared[k] == nil then set[#set + 1] = { k, nil } end
  end
  return nil, set
end

-- The acknowledgements of the items done, one script call for all those
-- that ended while the last call was on its way.
function Worker:flush()
  while true do
    if #self.acks.args == 0 then
      core.await(function(resume) self.flush_wake = resume end)
    end
    local a = self.acks
    self.acks = { keys = {}, args = {} }
    local ok, e = pcall(run_script, self.q, self.r, ACK,
      { self.q.stream, self.q.claims, table.unpack(a.keys) }, a.args)
    if not ok then warn("pf.work: " .. errstr(e)) end
  end
end

function Worker:finish(e, f, tries, ok, v)
  local q, r = self.q, self.r
  local mk, rk = q.prefix .. "m:" .. f.b, q.prefix .. "r:" .. f.b
  if ok then   -- v: the result, serialized; sent with the others done now
    local a = self.acks
    a.keys[#a.keys + 1] = mk
    a.keys[#a.keys + 1] = rk
    a.args[#a.args + 1] = e
    a.args[#a.args + 1] = v
    local wake = self.flush_wake
    self.flush_wake = nil
    if wake then wake() end
  elseif tries < q.max_deliveries then
    run_script(q, r, RETRY, { q.stream, q.claims },
      { e, f.b, f.i, f.p, f.h, f.v, tostring(tries), v })
  else
    local blob = serialize({ i = tonumber(f.i), ok = false, err = v, tries = tries })
    run_script(q, r, DEAD, { q.stream, q.claims, q.dead, mk, rk },
      { e, f.b, f.i, f.p, f.h, f.v, tostring(tries), v, blob })
  end
end

-- The item's node in this worker's graph, if its hash is the one the
-- item carries; else the item is left for other workers, with a warning.
function Worker:node_for(e, f)
  local node = find_node(self.map, f.p)
  if node and graph_hash(node) == f.h then return node end
  local key = f.b .. SEP .. f.p
  if not self.warned[key] then
    self.warned[key] = true
    local path = f.p:gsub(SEP, " > ")
    warn(("pf.work: item %s of %s comes from a different graph (%s); this worker's %s: left for another worker")
      :format(f.i, path, f.h, node and "differs" or self.map[f.p] == false and
        "has two nodes at that path (give them unique names)" or "lacks that node"))
  end
  -- others may take it at once; the takeover is not a delivery
  call(self.q, self.r, "XCLAIM", self.q.stream, GROUP, self.id, 0, e,
       "IDLE", math.ceil(self.q.lease * 1000), "JUSTID")
  call(self.q, self.r, "HINCRBY", self.q.claims, e, -1)
  self.left[e] = true
  self.nleft = self.nleft + 1
  if self.nleft > 10000 then self.left, self.nleft = {}, 0 end
  return nil
end

-- Starts the entry e in the slot taken for it (self.running), or gives
-- the slot back: an entry that is not ours, of a batch that is over, of
-- a different graph, or dead.
function Worker:start(e, list, claimed)
  local f = fields_of(list)
  local q = self.q
  local function none() self.running = self.running - 1 end
  if not f or not f.b or not f.i or not f.v then   -- not ours: drop it
    none()
    run_script(q, self.r, DROP, { q.stream }, { e })
    return
  end
  local m = self:meta(f.b)
  if not m then   -- the batch is over
    none()
    run_script(q, self.r, DROP, { q.stream }, { e })
    return
  end
  local node = self:node_for(e, f)
  if not node then return none() end
  self.left[e] = nil
  local tries = (tonumber(f.t) or 0) + 1
  if claimed then tries = tries + (tonumber(call(q, self.r, "HGET", q.claims, e)) or 0) end
  if tries > q.max_deliveries then
    none()
    self:finish(e, f, tries - 1, false, f.e or
      ("its worker stopped (no lease renewed for %g s)"):format(q.lease))
    return
  end
  self.batch_of[e] = f.b
  self.held[e] = spawn(function()
    local ok, v = pcall(function()
      local res, set = run_item(m, node, deserialize(f.v))
      return serialize({ i = tonumber(f.i), ok = true, v = res, set = set }, "result")
    end)
    if not ok then v = errstr(v) end
    local ok2, err2 = pcall(self.finish, self, e, f, tries, ok, v)
    self.held[e], self.batch_of[e] = nil, nil
    self.running = self.running - 1
    if not ok2 then warn("pf.work: " .. errstr(err2)) end
    self:pump()
  end)
end

-- Entries read but not started yet: a backlog of up to conc entries, so
-- that a slot that frees is filled without waiting for a read.
function Worker:enqueue(e, list, claimed)
  self.backlog[#self.backlog + 1] = { e, list, claimed }
  self.queued[e] = true
end

function Worker:waiting()
  return #self.backlog - self.bhead + 1
end

function Worker:pump()
  if self.pumping then return end
  self.pumping = true
  while self.running < self.conc and self.bhead <= #self.backlog do
    local ent = self.backlog[self.bhead]
    self.backlog[self.bhead] = nil
    self.bhead = self.bhead + 1
    self.queued[ent[1]] = nil
    self.running = self.running + 1
    local ok, err = pcall(self.start, self, ent[1], ent[2], ent[3])
    if not ok then warn("pf.work: " .. errstr(err)) end
  end
  if self.bhead > #self.backlog then self.backlog, self.bhead = {}, 1 end
  self.pumping = false
  self:wake()
end

function Worker:wake()
  local w = self.waiter
  if w then
    self.waiter = nil
    w()
  end
end

function Worker:wait_room()
  while self:waiting() >= self.conc do
    core.await(function(resume) self.waiter = resume end)
  end
end

-- Items of batches that ended (failed, cancelled) stop running.
function Worker:drop_dead_batches()
  local q, seen, held = self.q, {}, {}
  for e, b in pairs(self.batch_of) do held[#held + 1] = { e, b } end
  for _, eb in ipairs(held) do
    local e, b = eb[1], eb[2]
    if seen[b] == nil then
      seen[b] = call(q, self.r, "EXISTS", q.prefix .. "m:" .. b) == 1
      if not seen[b] then self.metas[b] = nil end
    end
    if not seen[b] and self.held[e] then
      local t = self.held[e]
      self.held[e], self.batch_of[e] = nil, nil
      t:cancel()
      self.running = self.running - 1
      run_script(q, self.r, DROP, { q.stream }, { e })
    end
  end
  self:pump()
end

-- Consumers of workers gone for 10 leases (and the second a read
-- blocks), holding nothing, leave the group (each worker process is a
-- consumer of its own; this one stays).
local FORGET = script [=[
local gone = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], 'pf')) do
  local f = {}
  for j = 1, #c, 2 do f[c[j]] = c[j + 1] end
  if f.pending == 0 and f.idle > tonumber(ARGV[1]) and f.name ~= ARGV[2] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], 'pf', f.name)
    gone = gone + 1
  end
end
return gone
]=]

-- Every lease/3: the heartbeat, the leases of held items renewed, the
-- items of a dead worker taken over.
function Worker:tick()
  local q, r = self.q, self.r
  run_script(q, r, HEARTBEAT, { q.workers }, { self.id, math.ceil(q.lease) })
  self.ticks = self.ticks + 1
  if self.ticks % 100 == 1 then
    run_script(q, r, FORGET, { q.stream }, { math.ceil(q.lease * 10000) + 1000, self.id })
  end
  self:drop_dead_batches()
  local ids = {}
  for e in pairs(self.held) do ids[#ids + 1] = e end
  for e in pairs(self.queued) do ids[#ids + 1] = e end
  for j = 1, #ids, 500 do
    call(q, r, "XCLAIM", q.stream, GROUP, self.id, 0,
         table.unpack(ids, j, math.min(j + 499, #ids)), "JUSTID")
  end
  local room = self.conc - self.running - self:waiting()
  if room <= 0 then return end
  -- a worker that left items lets the others take them first
  local idle = math.ceil(q.lease * 1000) * (next(self.left) and 2 or 1)
  local got = call(q, r, "XAUTOCLAIM", q.stream, GROUP, self.id, idle, "0",
                   "COUNT", room)
  if type(got) ~= "table" or type(got[2]) ~= "table" then return end
  for _, ent in ipairs(got[2]) do
    if type(ent) == "table" and type(ent[2]) == "table" then
      call(q, r, "HINCRBY", q.claims, ent[1], 1)
      self:enqueue(ent[1], ent[2], true)
    end
  end
  self:pump()
end

function Worker:read()
  local q = self.q
  local ok, got = pcall(call, q, self.rb, "XREADGROUP", "GROUP", GROUP, self.id,
    "COUNT", self.conc - self:waiting(), "BLOCK", 1000, "STREAMS", q.stream, ">")
  if not ok then
    if errstr(got):find("NOGROUP", 1, true) then
      ensure_group(q, self.r)
      return
    end
    error(got, 0)
  end
  if type(got) ~= "table" or type(got[1]) ~= "table" then return end
  for _, ent in ipairs(got[1][2]) do
    if type(ent) == "table" and type(ent[2]) == "table" then
      self:enqueue(ent[1], ent[2], false)
    end
  end
  self:pump()
end

local function hostname()
  local f = io.open("/proc/sys/kernel/hostname")
  local h = f and f:read("l")
  if f then f:close() end
  return h or "host"
end

local function mypid()
  local f = io.open("/proc/self/stat")
  local s = f and f:read("l")
  if f then f:close() end
  return s and s:match("^%d+") or "0"
end

local function work(q, flow, conc)
  local r <close> = connect(q)
  local rb <close> = connect(q)
  local pid = mypid()
  local w = setmetatable({ q = q, r = r, rb = rb, conc = conc, running = 0,
    acks = { keys = {}, args = {} }, ticks = 0, held = {}, queued = {}, backlog = {}, bhead = 1, batch_of = {}, left = {}, nleft = 0, warned = {}, metas = {}, nmetas = 0,
    map = index_graph(flow),
    id = ("%s:%s:%d"):format(hostname(), pid, math.random(1, 1 << 30)) }, Worker)
  ensure_group(q, r)
  local ticker = spawn(function()
    while true do
      local ok, e = pcall(w.tick, w)
      if not ok then warn("pf.work: " .. errstr(e)) end
      sleep(math.min(q.lease / 3, 1))
    end
  end)
  local flusher = spawn(w.flush, w)
  local bye <close> = setmetatable({}, { __close = function()
    ticker:cancel()
    flusher:cancel()
    spawn(function()
      pcall(call, q, r, "ZREM", q.workers, w.id)
    end)
  end })
  run_script(q, r, HEARTBEAT, { q.workers }, { w.id, math.ceil(q.lease) })
  while true do
    w:wait_room()
    w:read()
  end
end

-- pf.work(q, flow, { concurrency = 16 }): runs until cancelled or killed
function M.work(q, flow, opts, level)
  level = level or 2
  if getmetatable(q) ~= Queue then
    error(("pf.work: the queue must be a pf.queue (got %s)"):format(type(q)), level)
  end
  if kind_of(flow) == nil then
    error(("pf.work: the flow must be a pocketflow node (got %s)"):format(type(flow)), level)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error(("pf.work: options must be a table (got %s)"):format(type(opts)), level)
  end
  opts = opts or {}
  for k in pairs(opts) do
    if k ~= "concurrency" then
      error(("pf.work: unknown option '%s'"):format(errstr(k)), level)
    end
  end
  local conc = opts.concurrency or 16
  if math.type(conc) ~= "integer" or conc < 1 then
    error(("pf.work: concurrency must be a positive integer (got %s)"):format(shown(conc)), level)
  end
  return core.run(work, q, flow, conc)
end

return M

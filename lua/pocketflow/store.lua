-- pocketflow.store: durable-run stores, pf.sqlite and pf.memory.
-- One front end (argument checks, the rules of holding a run, the exact
-- error texts) over two back ends with the same primitive operations:
-- SQLite through the writer thread of src/store.c, and plain tables.
-- Every primitive runs inside a task; the front end starts one (pf.run)
-- when called outside any, and raises at its caller's level.
local core = require "pocketflow.core"

local M = {}

local FORMAT = 2           -- PRAGMA user_version of the files we write
local KEEP = 100
local BUSY = 5             -- seconds a writer waits for another process
local FINAL = { done = true, interrupted = true, failed = true }
local STATE = "__pocketflow_run"   -- the walk's frames in a checkpoint's shared

local fmt = string.format

local function q(sql, ...)
  return { sql = sql, n = select("#", ...), ... }
end

local ME
local function me()
  if not ME then
    local pid, host, start = core.store_proc()
    ME = { pid = pid, host = host, start = start }
  end
  return ME
end

-- ------------------------------------------------------------ SQLite

local NOW = "((julianday('now') - 2440587.5) * 86400.0)"

local SCHEMA = {
  [[CREATE TABLE IF NOT EXISTS runs(
      id TEXT PRIMARY KEY, status TEXT NOT NULL,
      step INTEGER NOT NULL DEFAULT 0, updated REAL NOT NULL,
      pid INTEGER, host TEXT, pstart INTEGER, graph TEXT, meta BLOB)]],
  [[CREATE TABLE IF NOT EXISTS checkpoints(
      run_id TEXT NOT NULL, step INTEGER NOT NULL, path TEXT,
      t REAL NOT NULL, blob BLOB, PRIMARY KEY(run_id, step))]],
  -- format 2: the items of a batch, saved one by one (durable.lua)
  [[CREATE TABLE IF NOT EXISTS items(
      run_id TEXT NOT NULL, batch TEXT NOT NULL, idx INTEGER NOT NULL,
      step INTEGER NOT NULL, blob BLOB, PRIMARY KEY(run_id, batch, idx))]],
  "PRAGMA user_version = " .. FORMAT,
}

local RUN_COLS = "id, status, step, updated, pid, host, pstart, graph, meta"
local HELD = "pid = ?3 AND host = ?4 AND pstart IS ?5"

local SQL = {
  load = "SELECT " .. RUN_COLS .. " FROM runs WHERE id = ?1",
  begin = "INSERT OR IGNORE INTO runs(" .. RUN_COLS .. ") VALUES " ..
          "(?1, 'running', 0, " .. NOW .. ", ?3, ?4, ?5, ?6, ?7)",
  take = "UPDATE runs SET status = 'running', pid = ?3, host = ?4, " ..
         "pstart = ?5, updated = " .. NOW .. " WHERE id = ?1 AND status = ?2 " ..
         "AND pid IS ?6 AND host IS ?7 AND pstart IS ?8",
  save_run = "UPDATE runs SET step = ?2, updated = " .. NOW ..
             " WHERE id = ?1 AND " .. HELD,
  save_ckpt = "INSERT OR REPLACE INTO checkpoints(run_id, step, path, t, blob) " ..
              "VALUES (?1, ?2, ?3, " .. NOW .. ", ?4)",
  trim = "DELETE FROM checkpoints WHERE run_id = ?1 AND step < " ..
         "(SELECT step FROM checkpoints WHERE run_id = ?1 " ..
         "ORDER BY step DESC LIMIT 1 OFFSET ?2)",
  finish = "UPDATE runs SET status = ?2, pid = NULL, host = NULL, " ..
           "pstart = NULL, meta = coalesce(?6, meta), updated = " .. NOW ..
           " WHERE id = ?1 AND status = 'running' AND pid = ?3 AND host = ?4 " ..
           "AND pstart IS ?5",
  runs_all = "SELECT id, status, step, updated FROM runs " ..
             "ORDER BY updated DESC, id",
  runs_status = "SELECT id, status, step, updated FROM runs WHERE status = ?1 " ..
                "ORDER BY updated DESC, id",
  exists = "SELECT status FROM runs WHERE id = ?1",
  history = "SELECT step, path, t FROM checkpoints WHERE run_id = ?1 ORDER BY step",
  get = "SELECT step, path, t, blob FROM checkpoints WHERE run_id = ?1 AND " ..
        "step = coalesce(?2, (SELECT max(step) FROM checkpoints WHERE run_id = ?1))",
  fork_run = "INSERT INTO runs(" .. RUN_COLS .. ") SELECT ?3, 'interrupted', " ..
             "c.step, " .. NOW .. ", NULL, NULL, NULL, r.graph, r.meta " ..
             "FROM runs r JOIN checkpoints c ON c.run_id = r.id " ..
             "WHERE r.id = ?1 AND c.step = ?2",
  fork_ckpt = "INSERT INTO checkpoints(run_id, step, path, t, blob) " ..
              "SELECT ?3, step, path, t, blob FROM checkpoints " ..
              "WHERE run_id = ?1 AND step = ?2",
  fork_items = "INSERT INTO items(run_id, batch, idx, step, blob) " ..
               "SELECT ?3, batch, idx, step, blob FROM items " ..
               "WHERE run_id = ?1 AND step < ?2",
  item = "INSERT OR REPLACE INTO items(run_id, batch, idx, step, blob) " ..
         "SELECT id, ?2, ?3, step, ?4 FROM runs WHERE id = ?1 AND " ..
         "pid = ?5 AND host = ?6 AND pstart IS ?7",
  items = "SELECT batch, idx, blob FROM items WHERE run_id = ?1",
  drop_items = "DELETE FROM items WHERE run_id = ?1 AND ?2 = 'done'",
}

local Sqlite = {}
Sqlite.__index = Sqlite

-- results, or nil, message (prefixed with the store's path unless it is
-- one of our own 'must' texts)
function Sqlite:exec(mode, ...)
  local res, err, mine = self.h:exec(mode, ...)
  if res then return res end
  if mine then return nil, err end
  return nil, fmt("store '%s': %s", self.path, err)
end

local function run_row(r)
  if r == nil then return nil end
  return { id = r[1], status = r[2], step = r[3], updated = r[4], pid = r[5],
           host = r[6], pstart = r[7], graph = r[8], meta = r[9] }
end

function Sqlite:load(id)
  local res, err = self:exec("n", q(SQL.load, id))
  if not res then return nil, err end
  return run_row(res[1][1])
end

-- nil if created, else the status of the run of that id
function Sqlite:begin(id, holder, graph, meta)
  local s = q(SQL.begin, id, nil, holder.pid, holder.host, holder.start, graph, meta)
  s.blob = { [7] = true }
  local res, err = self:exec("w", s)
  if not res then return nil, err end
  if res[1].changes == 1 then return true end
  local row, err2 = self:load(id)
  if not row then return nil, err2 or fmt("run '%s' exists", id) end
  return false, row.status
end

function Sqlite:take(row, holder)
  local res, err = self:exec("w", q(SQL.take, row.id, row.status, holder.pid,
    holder.host, holder.start, row.pid, row.host, row.pstart))
  if not res then return nil, err end
  return res[1].changes == 1
end

function Sqlite:checkpoint(id, step)
  local res, err = self:exec("n", q(SQL.get, id, step))
  if not res then return nil, err end
  local r = res[1][1]
  if r == nil then return false end
  return { step = r[1], path = r[2], t = r[3], blob = r[4] }
end

function Sqlite:save(id, step, path, blob, holder, sync)
  local s1 = q(SQL.save_run, id, step, holder.pid, holder.host, holder.start)
  s1.must = fmt("run '%s' is not held by this process", id)
  local s2 = q(SQL.save_ckpt, id, step, path, blob)
  s2.blob = { [4] = true }
  local s3 = q(SQL.trim, id, self.keep - 1)
  if not sync then
    self.h:exec("a", s1, s2, s3)
    return true
  end
  local res, err = self:exec("w", s1, s2, s3)
  if not res then return nil, err end
  return true
end

function Sqlite:finish(id, status, meta, holder)
  local s = q(SQL.finish, id, status, holder.pid, holder.host, holder.start, meta)
  s.blob = { [6] = true }
  s.must = fmt("run '%s' is not held by this process", id)
  local res, err = self:exec("w", s, q(SQL.drop_items, id, status))
  if not res then return nil, err end
  return true
end

function Sqlite:runs(status)
  local res, err
  if status then res, err = self:exec("n", q(SQL.runs_status, status))
  else res, err = self:exec("n", q(SQL.runs_all)) end
  if not res then return nil, err end
  local out = {}
  for i, r in ipairs(res[1]) do
    out[i] = { id = r[1], status = r[2], step = r[3], updated = r[4] }
  end
  return out
end

-- false if the run does not exist
function Sqlite:history(id)
  local res, err = self:exec("r", q(SQL.exists, id), q(SQL.history, id))
  if not res then return nil, err end
  if res[1][1] == nil then return false end
  local out = {}
  for i, r in ipairs(res[2]) do out[i] = { step = r[1], path = r[2], t = r[3] } end
  return out
end

function Sqlite:fork(id, step, new_id)
  local s1 = q(SQL.fork_run, id, step, new_id)
  s1.must = fmt("run '%s' has no checkpoint at step %d", id, step)
  local res, err = self:exec("w", s1, q(SQL.fork_ckpt, id, step, new_id),
                             q(SQL.fork_items, id, step, new_id))
  if not res then return nil, err end
  return true
end

function Sqlite:item(id, batch, idx, blob, holder, sync)
  local s = q(SQL.item, id, batch, idx, blob, holder.pid, holder.host, holder.start)
  s.blob = { [4] = true }
  s.must = fmt("run '%s' is not held by this process", id)
  if not sync then
    self.h:exec("a", s)
    return true
  end
  local res, err = self:exec("w", s)
  if not res then return nil, err end
  return true
end

function Sqlite:items(id)
  local res, err = self:exec("n", q(SQL.items, id))
  if not res then return nil, err end
  local out = {}
  for i, r in ipairs(res[1]) do out[i] = { batch = r[1], idx = r[2], blob = r[3] } end
  return out
end

function Sqlite:close()
  local h = self.h
  if h then
    self.h = nil
    h:close()
  end
end

local function open_sqlite(path, keep, busy)
  local h, err = core.sqlite_open(path, math.floor(busy * 1000))
  local b = setmetatable({ h = h, path = path, keep = keep }, Sqlite)
  if err == nil then
    local res
    res, err = b:exec("n", q("PRAGMA user_version"))
    local v = res and res[1][1][1]
    if v and v > FORMAT then
      err = fmt("store format %d; this pocketflow reads format %d or older", v, FORMAT)
    elseif v and v < FORMAT then
      local stmts = {}
      for i, sql in ipairs(SCHEMA) do stmts[i] = q(sql) end
      res, err = b:exec("w", table.unpack(stmts))
    end
    if err then err = err:gsub("^store '.-': ", "") end
  end
  if err then
    h:close()
    return nil, fmt("pf.sqlite: cannot open '%s': %s", path, err)
  end
  return b
end

-- ------------------------------------------------------------ memory

local Memory = {}
Memory.__index = Memory

local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

function Memory:load(id)
  local r = self.rows[id]
  return r and copy(r) or nil
end

function Memory:begin(id, holder, graph, meta)
  local r = self.rows[id]
  if r then return false, r.status end
  self.rows[id] = { id = id, status = "running", step = 0, updated = core.store_time(),
                    pid = holder.pid, host = holder.host, pstart = holder.start,
                    graph = graph, meta = meta }
  self.ckpts[id] = {}
  self.itemrows[id] = {}
  return true
end

function Memory:take(row, holder)
  local r = self.rows[row.id]
  if not r or r.status ~= row.status or r.pid ~= row.pid then return false end
  r.status, r.pid, r.host, r.pstart = "running", holder.pid, holder.host, holder.start
  r.updated = core.store_time()
  return true
end

local function find_step(list, step)
  if step == nil then return list[#list] end
  for _, c in ipairs(list) do if c.step == step then return c end end
end

function Memory:checkpoint(id, step)
  local c = find_step(self.ckpts[id] or {}, step)
  return c and copy(c) or false
end

local function held(r, holder)
  return r and r.pid == holder.pid and r.host == holder.host and r.pstart == holder.start
end

function Memory:save(id, step, path, blob, holder)
  local r = self.rows[id]
  if not held(r, holder) then return nil, fmt("run '%s' is not held by this process", id) end
  local list, now = self.ckpts[id], core.store_time()
  local c = { step = step, path = path, t = now, blob = blob }
  local i = #list
  while i > 0 and list[i].step > step do i = i - 1 end
  if i > 0 and list[i].step == step then list[i] = c else table.insert(list, i + 1, c) end
  while #list > self.keep do table.remove(list, 1) end
  r.step, r.updated = step, now
  return true
end

function Memory:finish(id, status, meta, holder)
  local r = self.rows[id]
  if not held(r, holder) or r.status ~= "running" then
    return nil, fmt("run '%s' is not held by this process", id)
  end
  r.status, r.pid, r.host, r.pstart = status, nil, nil, nil
  if meta ~= nil then r.meta = meta end
  if status == "done" then self.itemrows[id] = {} end
  r.updated = core.store_time()
  return true
end

function Memory:runs(status)
  local out = {}
  for _, r in pairs(self.rows) do
    if status == nil or r.status == status then
      out[#out + 1] = { id = r.id, status = r.status, step = r.step, updated = r.updated }
    end
  end
  table.sort(out, function(a, b)
    if a.updated ~= b.updated then return a.updated > b.updated end
    return a.id < b.id
  end)
  return out
end

function Memory:history(id)
  if not self.rows[id] then return false end
  local out = {}
  for i, c in ipairs(self.ckpts[id]) do out[i] = { step = c.step, path = c.path, t = c.t } end
  return out
end

function Memory:fork(id, step, new_id)
  local src, c = self.rows[id], find_step(self.ckpts[id] or {}, step)
  if not c then return nil, fmt("run '%s' has no checkpoint at step %d", id, step) end
  self.rows[new_id] = { id = new_id, status = "interrupted", step = c.step,
                        updated = core.store_time(), graph = src.graph, meta = src.meta }
  self.ckpts[new_id] = { copy(c) }
  local items = {}
  for k, it in pairs(self.itemrows[id] or {}) do
    if it.step < c.step then items[k] = it end
  end
  self.itemrows[new_id] = items
  return true
end

function Memory:item(id, batch, idx, blob, holder)
  local r = self.rows[id]
  if not held(r, holder) then return nil, fmt("run '%s' is not held by this process", id) end
  self.itemrows[id][batch .. "\0" .. idx] = { batch = batch, idx = idx, step = r.step, blob = blob }
  return true
end

function Memory:items(id)
  local out = {}
  for _, it in pairs(self.itemrows[id] or {}) do
    out[#out + 1] = { batch = it.batch, idx = it.idx, blob = it.blob }
  end
  return out
end

function Memory:close() end

-- ------------------------------------------------------------ front end

local Store = {}
Store.__index = Store

local function check_id(fname, id, arg)
  if type(id) ~= "string" or id == "" then
    error(fmt("%s: %s must be a non-empty string (got %s)", fname, arg or "id",
              type(id) == "string" and '""' or type(id)), 3)
  end
end

local function check_step(fname, step, optional)
  if step == nil and optional then return end
  if math.type(step) ~= "integer" or step < 1 then
    error(fmt("%s: step must be a positive integer (got %s)", fname, tostring(step)), 3)
  end
end

-- runs f(b, ...) in a task (starting one outside any); f returns its
-- results or nil, message; the message is raised at the caller's caller
local function call(self, f, ...)
  local b = self._b
  if b == nil then error("store: the store is closed", 3) end
  local r, err
  if self._mem then r, err = f(b, ...)
  else r, err = core.run(f, b, ...) end
  if r == nil and err then error(err, 3) end
  return r
end

-- sets c.shared from c.blob where pf.deserialize exists; nil, message
-- if the blob does not decode
local function decode(id, c)
  local des = core.deserialize
  if not des or c.blob == nil then return c end
  local ok, v = pcall(des, c.blob)
  if not ok then
    return nil, fmt("run '%s' step %d: the checkpoint cannot be decoded: %s", id, c.step,
                    tostring(v))
  end
  if type(v) == "table" then   -- a durable run's own part (durable.lua)
    c.state = rawget(v, STATE)
    rawset(v, STATE, nil)
  end
  c.shared = v
  return c
end

local function do_begin(b, id, graph, meta)
  local ok, status = b:begin(id, me(), graph, meta)
  if ok == nil then return nil, status end
  if not ok then return nil, fmt("run '%s' exists (%s); use flow:resume", id, status) end
  return id
end

-- _begin(id, { graph =, meta = }) -> id: a new run, held by this process
function Store:_begin(id, opts)
  if id == nil then id = core.store_id() end
  check_id("store:_begin", id)
  opts = opts or {}
  if type(opts) ~= "table" then
    error(fmt("store:_begin: options must be a table (got %s)", type(opts)), 2)
  end
  for _, k in ipairs { "graph", "meta" } do
    if opts[k] ~= nil and type(opts[k]) ~= "string" then
      error(fmt("store:_begin: %s must be a string (got %s)", k, type(opts[k])), 2)
    end
  end
  return call(self, do_begin, id, opts.graph, opts.meta)
end

-- The runs this process holds but no longer walks (durable.lua marks a
-- run whose walk's task was cancelled): they can be taken again here.
local ABANDONED = {}

local function walk_key(self, id)
  return (self._path or tostring(self._b)) .. "\0" .. id
end

-- _abandon(id): this process holds run id but no longer runs it
function Store:_abandon(id)
  ABANDONED[walk_key(self, id)] = true
end

local function ours(row, holder, abandoned)
  return row.pid == holder.pid and row.pstart == holder.start and abandoned
end

local function do_acquire(b, id, abandoned)
  local holder = me()
  for _ = 1, 8 do
    local row, err = b:load(id)
    if not row then return nil, err or fmt("no run '%s'", id) end
    if row.status == "done" then return nil, fmt("run '%s' is done", id) end
    if row.pid ~= nil then
      if row.host ~= holder.host then
        return nil, fmt("run '%s' is running (pid %d on host %s)", id, row.pid, row.host)
      end
      if core.store_alive(row.pid, row.pstart) and not ours(row, holder, abandoned) then
        return nil, fmt("run '%s' is running (pid %d)", id, row.pid)
      end
    end
    -- read and decoded before the run is taken: a bad one leaves it as it was
    local c, err2 = b:checkpoint(id)
    if c == nil then return nil, err2 end
    if c then
      c, err2 = decode(id, c)
      if not c then return nil, err2 end
    end
    local ok, err3 = b:take(row, holder)
    if ok == nil then return nil, err3 end
    if ok then
      return { id = id, status = row.status, step = row.step, graph = row.graph,
               meta = row.meta, checkpoint = c or nil }
    end
  end
  return nil, fmt("run '%s' is being taken by other processes; try again", id)
end

-- _acquire(id) -> record: takes an existing run to resume it
function Store:_acquire(id)
  check_id("store:_acquire", id)
  local key = walk_key(self, id)
  local got = call(self, do_acquire, id, ABANDONED[key])
  ABANDONED[key] = nil
  return got
end

local function do_save(b, ...) return b:save(...) end

-- _save(id, step, path, blob, { sync = true }): appends a checkpoint
function Store:_save(id, step, path, blob, opts)
  check_id("store:_save", id)
  check_step("store:_save", step)
  if path ~= nil and type(path) ~= "string" then
    error(fmt("store:_save: path must be a string (got %s)", type(path)), 2)
  end
  if type(blob) ~= "string" then
    error(fmt("store:_save: blob must be a string (got %s)", type(blob)), 2)
  end
  local sync = true
  if opts ~= nil then
    if type(opts) ~= "table" then
      error(fmt("store:_save: options must be a table (got %s)", type(opts)), 2)
    end
    if opts.sync ~= nil and type(opts.sync) ~= "boolean" then
      error(fmt("store:_save: sync must be a boolean (got %s)", tostring(opts.sync)), 2)
    end
    sync = opts.sync ~= false
  end
  local holder = me()
  if not sync then
    local b = self._b
    if b == nil then error("store: the store is closed", 2) end
    local ok, err = b:save(id, step, path, blob, holder, false)
    if not ok then error(err, 2) end
    return true
  end
  return call(self, do_save, id, step, path, blob, holder, true)
end

local function do_item(b, ...) return b:item(...) end

-- _item(id, batch, idx, blob, { sync = true }): saves item idx (0: the
-- prep result) of batch (a string) of a run held by this process, with
-- the run's step, in place of an earlier one; rows go when the run is done
function Store:_item(id, batch, idx, blob, opts)
  check_id("store:_item", id)
  if type(batch) ~= "string" then
    error(fmt("store:_item: batch must be a string (got %s)", type(batch)), 2)
  end
  if math.type(idx) ~= "integer" or idx < 0 then
    error(fmt("store:_item: idx must be an integer >= 0 (got %s)", tostring(idx)), 2)
  end
  if type(blob) ~= "string" then
    error(fmt("store:_item: blob must be a string (got %s)", type(blob)), 2)
  end
  local sync = not (type(opts) == "table" and opts.sync == false)
  if not sync then
    local b = self._b
    if b == nil then error("store: the store is closed", 2) end
    local ok, err = b:item(id, batch, idx, blob, me(), false)
    if not ok then error(err, 2) end
    return true
  end
  return call(self, do_item, id, batch, idx, blob, me(), true)
end

local function do_items(b, id) return b:items(id) end

-- _items(id) -> { { batch, idx, blob } }: the items saved, in no order
function Store:_items(id)
  check_id("store:_items", id)
  return call(self, do_items, id)
end

local function do_finish(b, ...) return b:finish(...) end

-- _finish(id, status, meta): the final status; the hold is released
function Store:_finish(id, status, meta)
  check_id("store:_finish", id)
  if not FINAL[status] then
    error(fmt("store:_finish: status must be \"done\", \"interrupted\" or \"failed\" (got %s)",
              tostring(status)), 2)
  end
  if meta ~= nil and type(meta) ~= "string" then
    error(fmt("store:_finish: meta must be a string (got %s)", type(meta)), 2)
  end
  return call(self, do_finish, id, status, meta, me())
end

local function do_runs(b, status) return b:runs(status) end

-- store:runs{ status = } -> { { id, status, step, updated } }, newest first
function Store:runs(opts)
  local status
  if opts ~= nil then
    if type(opts) ~= "table" then
      error(fmt("store:runs: options must be a table (got %s)", type(opts)), 2)
    end
    status = opts.status
    if status ~= nil and not (FINAL[status] or status == "running") then
      error(fmt("store:runs: status must be \"running\", \"done\", \"interrupted\" " ..
                "or \"failed\" (got %s)", tostring(status)), 2)
    end
  end
  return call(self, do_runs, status)
end

local function do_history(b, id)
  local h, err = b:history(id)
  if h == false then return nil, fmt("no run '%s'", id) end
  return h, err
end

-- store:history(id) -> { { step, path, t } }, oldest first
function Store:history(id)
  check_id("store:history", id)
  return call(self, do_history, id)
end

local function do_get(b, id, step)
  local row, err = b:load(id)
  if not row then return nil, err or fmt("no run '%s'", id) end
  local c, err2 = b:checkpoint(id, step)
  if c == nil then return nil, err2 end
  if c == false and step then return nil, fmt("run '%s' has no checkpoint at step %d", id, step) end
  if c == false then return false end
  return decode(id, c)
end

-- store:get(id[, step]) -> { step, path, t, blob, shared }, or nil when
-- the run has no checkpoint yet
function Store:get(id, step)
  check_id("store:get", id)
  check_step("store:get", step, true)
  local c = call(self, do_get, id, step)
  if c == false then return nil end
  return c
end

local function do_fork(b, id, step, new_id)
  local dst, err = b:load(new_id)
  if dst then return nil, fmt("run '%s' exists (%s); use flow:resume", new_id, dst.status) end
  if err then return nil, err end
  local src, err2 = b:load(id)
  if not src then return nil, err2 or fmt("no run '%s'", id) end
  if step == nil then
    local c, err3 = b:checkpoint(id)
    if c == nil then return nil, err3 end
    if c == false then return nil, fmt("run '%s' has no checkpoint", id) end
    step = c.step
  end
  local ok, err4 = b:fork(id, step, new_id)
  if not ok then return nil, err4 end
  return new_id
end

-- store:fork(id, step, new_id) -> new_id: a new run resuming from that
-- checkpoint (step nil: the latest; new_id nil: generated)
function Store:fork(id, step, new_id)
  check_id("store:fork", id)
  check_step("store:fork", step, true)
  if new_id == nil then new_id = core.store_id() end
  check_id("store:fork", new_id, "new_id")
  return call(self, do_fork, id, step, new_id)
end

local function do_close(b) b:close() return true end

-- store:close(): waits for the pending saves, then closes
function Store:close()
  local b = self._b
  if b == nil then return end
  if self._mem then self._b = nil return end
  core.run(do_close, b)
  self._b = nil
end

function Store:__tostring()
  return fmt("pocketflow.store (%s): %s", self._mem and "memory" or self._path,
             self._b and "open" or "closed")
end

local function check_opts(fname, opts)
  local keep, busy = KEEP, BUSY
  if opts == nil then return keep, busy end
  if type(opts) ~= "table" then
    error(fmt("%s: options must be a table (got %s)", fname, type(opts)), 3)
  end
  for k, v in pairs(opts) do
    if k == "keep" then
      if math.type(v) ~= "integer" or v < 1 then
        error(fmt("%s: keep must be a positive integer (got %s)", fname, tostring(v)), 3)
      end
      keep = v
    elseif k == "busy_timeout" and fname == "pf.sqlite" then
      if type(v) ~= "number" or not (v >= 0 and v <= 86400) then
        error(fmt("%s: busy_timeout must be a number of seconds in [0, 86400] (got %s)",
                  fname, tostring(v)), 3)
      end
      busy = v
    else
      error(fmt("%s: unknown option '%s'", fname, tostring(k)), 3)
    end
  end
  return keep, busy
end

-- pf.sqlite(path, { keep = 100, busy_timeout = 5 })
function M.sqlite(path, opts)
  if type(path) ~= "string" or path == "" then
    error(fmt("pf.sqlite: path must be a non-empty string (got %s)",
              type(path) == "string" and '""' or type(path)), 2)
  end
  local keep, busy = check_opts("pf.sqlite", opts)
  local b, err = core.run(open_sqlite, path, keep, busy)
  if not b then error(err, 2) end
  return setmetatable({ _b = b, _path = path }, Store)
end

-- pf.memory({ keep = 100 }): the same interface, in this Lua state
function M.memory(opts)
  local keep = check_opts("pf.memory", opts)
  local b = setmetatable({ rows = {}, ckpts = {}, itemrows = {}, keep = keep }, Memory)
  return setmetatable({ _b = b, _mem = true }, Store)
end

M.id = core.store_id
M.Store = Store

return M

-- tools/runs.lua: look into a pocketflow run store from the shell.
--
--   pocketflow tools/runs.lua runs.db                 list every run, newest first
--   pocketflow tools/runs.lua runs.db list [STATUS]   the same, only STATUS
--   pocketflow tools/runs.lua runs.db history ID      the checkpoints of run ID
--   pocketflow tools/runs.lua runs.db show ID [STEP]  one checkpoint (default: latest)
--   pocketflow tools/runs.lua runs.db diagram ID --script app.lua [--step N]
--              [--format mermaid|dot] [--direction LR] [--depth N]
--                                                     the run's state on its flow's
--                                                     diagram: done, current, failed
--
-- Exits 1 with a message on a bad command, an unknown run or a file that
-- is not a store. The store is opened with pf.sqlite (nothing is changed
-- in it, but a new file would be created as an empty store: it refuses a
-- path that does not exist).
local pf = pf or require "pocketflow"

local usage = "usage: pocketflow tools/runs.lua DB [list [STATUS] | history ID | show ID [STEP] |\n" ..
              "       diagram ID --script FILE [--step N] [--format mermaid|dot] " ..
              "[--direction D] [--depth N]]\n"

local function die(msg)
  io.stderr:write("runs: ", msg, "\n")
  os.exit(1)
end

local function when(t)
  if not t then return "-" end
  return os.date("!%Y-%m-%d %H:%M:%S", math.floor(t)) .. "Z"
end

-- prints rows (arrays of strings) as columns under head
local function table_out(head, rows)
  local w = {}
  for i, h in ipairs(head) do w[i] = #h end
  for _, r in ipairs(rows) do
    for i, c in ipairs(r) do if #c > w[i] then w[i] = #c end end
  end
  local function line(r)
    local out = {}
    for i, c in ipairs(r) do out[i] = c .. (" "):rep(w[i] - #c) end
    io.write((table.concat(out, "  "):gsub("%s+$", "")), "\n")
  end
  line(head)
  for _, r in ipairs(rows) do line(r) end
end

-- a checkpoint's state, shown when the payload can be decoded
local function show_value(v, indent, seen)
  indent = indent or ""
  seen = seen or {}
  if type(v) ~= "table" then return (type(v) == "string" and ("%q"):format(v)) or tostring(v) end
  if seen[v] then return "<cycle>" end
  seen[v] = true
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local out = { "{" }
  for _, k in ipairs(keys) do
    out[#out + 1] = ("%s  %s = %s,"):format(indent, tostring(k), show_value(v[k], indent .. "  ", seen))
  end
  out[#out + 1] = indent .. "}"
  seen[v] = nil
  return table.concat(out, "\n")
end

-- ------------------------------------------------------------ diagram

local function kind_of(x)
  local mt = type(x) == "table" and getmetatable(x)
  return type(mt) == "table" and rawget(mt, "__pfkind") or nil
end

local KINDS = require("pocketflow.core").kinds

local function is_flow(x)
  local k = kind_of(x)
  return k == KINDS.flow or k == KINDS.batch_flow or k == KINDS.parallel_batch_flow
end

-- The flow of a script: the one it returns, else the first one it runs
-- or resumes, which is then not run: the script runs in a coroutine,
-- and run and resume yield the flow out of it (through the script's own
-- pcalls); the script is left there. The script gets no arguments; print
-- does nothing meanwhile, and its stores are in memory, so loading it
-- changes no file.
local function load_flow(script)
  local chunk, err = loadfile(script)
  if not chunk then error(err, 0) end
  local STOP, co = {}, nil
  local function catch(self)
    if coroutine.running() == co then coroutine.yield(STOP, self) end
    error(STOP, 0)   -- in a task of the script's: stop it
  end
  local saved = {
    { pf.BaseNode, "run" }, { pf.BaseNode, "run_async" }, { pf.BaseNode, "resume" },
    { pf, "sqlite" }, { _G, "print" }, { _G, "arg" },
  }
  for _, s in ipairs(saved) do s[3] = rawget(s[1], s[2]) end
  rawset(pf.BaseNode, "run", catch)
  rawset(pf.BaseNode, "run_async", catch)
  rawset(pf.BaseNode, "resume", catch)
  pf.sqlite = function(_, opts) return pf.memory(opts and { keep = opts.keep }) end
  print = function() end
  arg = { [0] = script }
  co = coroutine.create(chunk)
  local ok, ret, flow = coroutine.resume(co)
  for _, s in ipairs(saved) do rawset(s[1], s[2], s[3]) end
  if coroutine.status(co) == "suspended" then coroutine.close(co) end
  if ok and ret == STOP and is_flow(flow) then return flow end
  if ok and is_flow(ret) then return ret end
  if not ok and ret ~= STOP then   -- a table: its message keeps its position
    error({ msg = ("%s failed: %s"):format(script, tostring(ret):gsub("\nstack traceback:.*", "")) }, 0)
  end
  error(("%s made no flow: return it from the script, or run it"):format(script), 0)
end

-- the names on a checkpoint's path: "Main > Docs[2] > Ask" or
-- "Main/Docs[2]/Ask", items left out
local function path_names(path)
  local names, sep = {}, path:find(" > ", 1, true) and " > " or "/"
  local i = 1
  while true do
    local j = path:find(sep, i, true)
    local name = path:sub(i, j and j - 1 or -1):gsub("%[%d+%]$", "")
    names[#names + 1] = name
    if not j then break end
    i = j + #sep
  end
  return names
end

-- the node of flow named name, in a walk from its start node
local function child_named(flow, name)
  local start = rawget(flow, "start_node")
  local queue, seen, head = { start }, { [start] = true }, 1
  while head <= #queue do
    local node = queue[head]
    head = head + 1
    if node.name == name then return node end
    local succ = rawget(node, "successors")
    if type(succ) == "table" then
      for _, nxt in pairs(succ) do
        if kind_of(nxt) and not seen[nxt] then
          seen[nxt] = true
          queue[#queue + 1] = nxt
        end
      end
    end
  end
end

-- the nodes on path, outermost first (the flow itself left out); as far
-- as they are found. A path that names the flow alone is its start: the
-- start node is next.
local function path_nodes(flow, path)
  local names, out, at = path_names(path), {}, flow
  local first = 1
  if names[1] == flow.name and child_named(flow, names[1]) == nil then first = 2 end
  for i = first, #names do
    if not is_flow(at) then break end
    local node = child_named(at, names[i])
    if node == nil then break end
    out[#out + 1] = node
    at = node
  end
  if first > #names and kind_of(rawget(flow, "start_node")) then
    out[1] = rawget(flow, "start_node")
  end
  return out
end

-- the questions an interrupted run waits on ({ { id, node, payload } }),
-- from the meta the run saved (read through the store's back end: the
-- store's API has no call for it)
local function questions(store, id)
  local ok, row = pcall(require("pocketflow.core").run, function() return store._b:load(id) end)
  if not ok or type(row) ~= "table" or type(row.meta) ~= "string" then return {} end
  local ok2, meta = pcall(pf.deserialize, row.meta)
  if not ok2 or type(meta) ~= "table" or type(meta.interrupts) ~= "table" then return {} end
  local out = {}
  for _, q in ipairs(meta.interrupts) do
    if type(q) == "table" and type(q.id) == "string" then out[#out + 1] = q end
  end
  return out
end

-- marks from a run's history: nodes the run went on from are done; the
-- node of the latest checkpoint, and those of its pending questions, are
-- current (with the flows around them), failed if the run failed; a
-- finished run's nodes are all done
local function run_marks(flow, store, id, step)
  local hist = store:history(id)
  local run
  for _, r in ipairs(store:runs()) do if r.id == id then run = r end end
  if not run then error(("no run '%s'"):format(id), 0) end
  local last
  local marks = {}
  for _, c in ipairs(hist) do
    if step and c.step > step then break end
    if last and last.path then
      for _, node in ipairs(path_nodes(flow, last.path)) do marks[node] = "done" end
    end
    last = c
  end
  if last and last.path then
    local nodes = path_nodes(flow, last.path)
    local mark = "current"
    if run.status == "done" and not step then mark = "done"
    elseif run.status == "failed" and not step then mark = "failed" end
    for i, node in ipairs(nodes) do
      marks[node] = i == #nodes and mark or (mark == "done" and "done" or "current")
    end
  end
  -- the nodes that asked the questions an interrupted run waits on
  for _, q in ipairs(not step and run.status == "interrupted" and questions(store, id) or {}) do
    for _, node in ipairs(path_nodes(flow, (q.id:gsub("#%d+$", "")))) do
      marks[node] = "current"
    end
  end
  return marks, run, last
end

local function diagram(store, id, opts)
  if not opts.script then error("diagram needs --script FILE: the program that makes the flow", 0) end
  local flow = load_flow(opts.script)
  local marks, run, last = run_marks(flow, store, id, opts.step)
  local draw = { marks = marks, direction = opts.direction, depth = opts.depth }
  if opts.format == "dot" then io.write(flow:to_dot(draw))
  else io.write(flow:to_mermaid(draw)) end
  io.stderr:write(("run %s: %s, step %d%s\n"):format(id, run.status, last and last.step or 0,
    last and last.path and (", next " .. last.path) or ""))
end

-- --name value options after the command's words
local function options(list, from, known)
  local words, opts = {}, {}
  local i = from
  while i <= #list do
    local a = list[i]
    local name = a:match("^%-%-(%w+)$")
    if name then
      if not known[name] then error(("unknown option --%s"):format(name), 0) end
      local v = list[i + 1]
      if v == nil then error(("--%s needs a value"):format(name), 0) end
      if known[name] == "int" then
        v = math.tointeger(tonumber(v))
        if not v or v < 1 then error(("--%s must be a number (got %s)"):format(name, list[i + 1]), 0) end
      elseif type(known[name]) == "table" and not known[name][v] then
        error(("--%s: unknown value %s"):format(name, v), 0)
      end
      opts[name] = v
      i = i + 2
    else
      words[#words + 1] = a
      i = i + 1
    end
  end
  return words, opts
end

local args = arg or {}
local db, cmd = args[1], args[2] or "list"
if not db or db == "-h" or db == "--help" then
  io.write(usage)
  os.exit(db and 0 or 2)
end
local f = io.open(db, "rb")
if not f then die(("no such file: %s"):format(db)) end
f:close()

local ok, err = pcall(function()
  local store = pf.sqlite(db)
  if cmd == "list" then
    local rows = {}
    for i, r in ipairs(store:runs{ status = args[3] }) do
      rows[i] = { r.id, r.status, tostring(r.step), when(r.updated) }
    end
    table_out({ "ID", "STATUS", "STEP", "UPDATED" }, rows)
  elseif cmd == "history" and args[3] then
    local rows = {}
    for i, c in ipairs(store:history(args[3])) do
      rows[i] = { tostring(c.step), c.path or "-", when(c.t) }
    end
    table_out({ "STEP", "PATH", "TIME" }, rows)
  elseif cmd == "show" and args[3] then
    local step = args[4] and math.tointeger(tonumber(args[4]))
    if args[4] and not step then error(("bad step: %s"):format(args[4]), 0) end
    local c = store:get(args[3], step)
    if not c then
      io.write(("run '%s' has no checkpoint yet\n"):format(args[3]))
    else
      io.write(("run %s, step %d, next %s, saved %s, %d bytes\n"):format(
        args[3], c.step, c.path or "-", when(c.t), #(c.blob or "")))
      if c.shared ~= nil then io.write("shared = ", show_value(c.shared), "\n") end
    end
  elseif cmd == "diagram" and args[3] then
    local words, opts = options(args, 3, { script = "file", step = "int", depth = "int",
      format = { mermaid = true, dot = true },
      direction = { TD = true, TB = true, BT = true, LR = true, RL = true } })
    if #words ~= 1 then
      store:close()
      io.stderr:write(usage)
      os.exit(2)
    end
    diagram(store, words[1], opts)
  else
    store:close()
    io.stderr:write(usage)
    os.exit(2)
  end
  store:close()
end)
if not ok and type(err) == "table" and err.msg then die(err.msg) end
if not ok then die((tostring(err):gsub("\nstack traceback:.*", ""):gsub("^[^\n]-:%d+: ", ""))) end

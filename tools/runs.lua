-- tools/runs.lua: look into a pocketflow run store from the shell.
--
--   pocketflow tools/runs.lua runs.db                 list every run, newest first
--   pocketflow tools/runs.lua runs.db list [STATUS]   the same, only STATUS
--   pocketflow tools/runs.lua runs.db history ID      the checkpoints of run ID
--   pocketflow tools/runs.lua runs.db show ID [STEP]  one checkpoint (default: latest)
--
-- Exits 1 with a message on a bad command, an unknown run or a file that
-- is not a store. The store is opened with pf.sqlite (nothing is changed
-- in it, but a new file would be created as an empty store: it refuses a
-- path that does not exist).
local pf = pf or require "pocketflow"

local usage = "usage: pocketflow tools/runs.lua DB [list [STATUS] | history ID | show ID [STEP]]\n"

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
  else
    store:close()
    io.stderr:write(usage)
    os.exit(2)
  end
  store:close()
end)
if not ok then die((tostring(err):gsub("\nstack traceback:.*", ""):gsub("^[^\n]-:%d+: ", ""))) end

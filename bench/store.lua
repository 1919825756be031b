-- bench/store.lua: the cost of one checkpoint through pf.sqlite's _save,
-- sync and async, against a floor measured in the same run: the same
-- blob inserted by plain libsqlite3 in the same settings (bench/store_floor.c).
--
--   build/pocketflow bench/store.lua [N] [BLOB_BYTES] [FLOOR_BINARY]
--
-- Then the walk's side: the loop workload (one node looping to itself N
-- times, shared being that blob's table) as a durable run, a checkpoint
-- after every step, with pf.memory, and pf.sqlite sync and async; the
-- cost per checkpoint is the loop's time per step less the plain loop's,
-- set against the same floor (it includes pf.serialize of shared).
--
-- Each figure is the median of 5 alternating runs, each on a fresh file.
local pf = pf or require "pocketflow"

local N = tonumber(arg[1]) or 2000
local SIZE = tonumber(arg[2]) or 10000
local FLOOR = arg[3] or "build/store_floor"
-- a representative shared: records with text, made to about SIZE bytes
local shared = { step = 1, items = {} }
local items = shared.items
while #pf.serialize(shared) < SIZE do
  items[#items + 1] = { id = #items + 1, title = "item " .. #items, score = #items * 0.5,
                        text = ("lorem ipsum "):rep(4) }
end
local BLOB = pf.serialize(shared)
SIZE = #BLOB

local function fresh()
  local path = os.tmpname()
  os.remove(path)
  return path
end
local function rm(path)
  os.remove(path); os.remove(path .. "-wal"); os.remove(path .. "-shm")
end

local function engine(sync)
  local path = fresh()
  local s = pf.sqlite(path)
  local id = s:_begin("bench")
  local opts = { sync = sync }
  local t0 = pf.now()
  pf.run(function()
    for i = 1, N - 1 do s:_save(id, i, "Flow.Node", BLOB, opts) end
    s:_save(id, N, "Flow.Node", BLOB)  -- committed after every one before it
  end)
  local us = (pf.now() - t0) * 1e6 / N
  s:close()
  assert(#s._path > 0)
  local check = pf.sqlite(path)
  assert(check:get(id).step == N, "saves missing")
  check:close()
  rm(path)
  return us
end

local function floor()
  local path = fresh()
  local p = assert(io.popen(("%s %s %d %d"):format(FLOOR, path, N, SIZE)))
  local out = p:read("a")
  p:close()
  rm(path)
  return assert(tonumber(out:match("floor_us_per_save=([%d.]+)")), "store_floor failed: " .. out)
end

local function median(t)
  table.sort(t)
  return t[(#t + 1) // 2]
end

-- the loop as a durable run: us per step ("none": no store)
local function loop(kind)
  local Step = pf.Node:extend("Step")
  function Step:post(s)
    s.step = s.step + 1
    return s.step <= N and "loop" or "done"
  end
  local step = Step()
  step:next(step, "loop")
  step:next(pf.Node{ name = "End" }, "done")
  local flow = pf.Flow{ start = step, name = "Loop" }
  local path, store, opts = fresh(), nil, nil
  if kind == "memory" then store = pf.memory{ keep = 10 }
  elseif kind ~= "none" then store = pf.sqlite(path) end
  if store then opts = { store = store, run_id = "loop", durability = kind == "async"
                         and "async" or "sync" } end
  local s = { step = 1, items = items }
  local t0 = pf.now()
  local _, run = flow:run(s, opts)
  if kind == "async" then store:close() end  -- waits for the saves
  local us = (pf.now() - t0) * 1e6 / N
  if store then store:close() end
  assert(s.step == N + 1 and (not store or run.status == "done"), "loop ended early")
  rm(path)
  return us
end

-- pf.serialize of the loop's shared alone, us per call: the part of a
-- checkpoint the floor does not pay
local function ser()
  local s = { step = 1, items = items }
  local opts = { root = "shared", skip = {}, checkpoint = true }
  local t0 = pf.now()
  for _ = 1, N do pf.serialize(s, opts) end
  return (pf.now() - t0) * 1e6 / N
end

local LOOPS = { "none", "memory", "sync", "async" }
local runs = { sync = {}, async = {}, floor = {}, ser = {} }
for _, k in ipairs(LOOPS) do runs["loop " .. k] = {} end
for _ = 1, 5 do
  runs.floor[#runs.floor + 1] = floor()
  runs.sync[#runs.sync + 1] = engine(true)
  runs.async[#runs.async + 1] = engine(false)
  for _, k in ipairs(LOOPS) do
    local t = runs["loop " .. k]
    t[#t + 1] = loop(k)
  end
  runs.ser[#runs.ser + 1] = ser()
end
local f = median(runs.floor)
print(("store: %d checkpoints of %d bytes, median of 5"):format(N, SIZE))
print(("  floor (libsqlite3, same settings)  %8.1f us/checkpoint"):format(f))
for _, k in ipairs { "sync", "async" } do
  local m = median(runs[k])
  print(("  _save %-5s                        %8.1f us/checkpoint  %.2fx floor"):format(k, m, m / f))
end
local plain = median(runs["loop none"])
print(("loop: %d steps, shared of %d bytes, one checkpoint a step, median of 5"):format(N, SIZE))
print(("  no store                            %8.1f us/step"):format(plain))
print(("  pf.serialize of shared alone        %8.1f us"):format(median(runs.ser)))
for _, k in ipairs { "memory", "sync", "async" } do
  local m = median(runs["loop " .. k])
  print(("  %-6s %-28s %8.1f us/step  %8.1f us/checkpoint  %.2fx floor"):format(
    k == "memory" and "memory" or "sqlite", k == "memory" and "" or k, m, m - plain,
    (m - plain) / f))
end

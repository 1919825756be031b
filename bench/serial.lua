-- pf.serialize / pf.deserialize throughput on a representative shared
-- table: N records of mixed types (integers, floats, short strings,
-- booleans, a nested list, a shared reference), plus the same through
-- pf.json for scale. Figures only: no target is asserted.
-- usage: build/pocketflow bench/serial.lua [N] [runs]    (default 10000 9)
local pf = require "pocketflow"

local N = tonumber(arg and arg[1]) or 10000
local RUNS = tonumber(arg and arg[2]) or 9

local function make_shared(n)
  local shared = { items = {}, by_id = {}, config = { model = "m", temperature = 0.2, retries = 3 } }
  for i = 1, n do
    local item = {
      id = i, name = "item-" .. i, score = i / 7, ok = i % 3 == 0,
      tags = { "alpha", "beta", i % 10 }, text = ("lorem ipsum "):rep(1 + i % 5),
    }
    shared.items[i] = item
    shared.by_id["k" .. i] = item      -- the same table reached twice
  end
  return shared
end

-- median seconds of RUNS calls of f
local function time(f)
  local t = {}
  for r = 1, RUNS do
    local t0 = pf.now()
    f()
    t[r] = pf.now() - t0
  end
  table.sort(t)
  return t[(RUNS + 1) // 2]
end

local shared = make_shared(N)
local blob = pf.serialize(shared)
local back = pf.deserialize(blob)
assert(back.items[N] == back.by_id["k" .. N] and back.items[N].name == "item-" .. N)

local mb = #blob / 1e6
local ts = time(function() pf.serialize(shared) end)
local td = time(function() pf.deserialize(blob) end)
print(("serial: %d records, blob %.2f MB, median of %d"):format(N, mb, RUNS))
print(("  serialize    %7.2f ms  %7.1f MB/s  %8.0f records/s"):format(ts * 1e3, mb / ts, N / ts))
print(("  deserialize  %7.2f ms  %7.1f MB/s  %8.0f records/s"):format(td * 1e3, mb / td, N / td))
local sorted = { sorted = true }
local tq = time(function() pf.serialize(shared, sorted) end)
print(("  sorted       %7.2f ms  %7.1f MB/s  (serialize with sorted = true)"):format(tq * 1e3, mb / tq))

-- pf.json on the same records (no shared references: by_id left out)
local plain = { items = shared.items, config = shared.config }
local text = pf.json.encode(plain)
local je = time(function() pf.json.encode(plain) end)
local jd = time(function() pf.json.decode(text) end)
print(("  json encode  %7.2f ms  (%.2f MB of JSON, items only)"):format(je * 1e3, #text / 1e6))
print(("  json decode  %7.2f ms"):format(jd * 1e3))

-- one small checkpoint, as after every node of a short flow
local small = { question = "q", answer = "a", step = 3, history = { "x", "y" } }
local k = 100000
local t0 = pf.now()
for _ = 1, k do pf.serialize(small) end
local per = (pf.now() - t0) / k
print(("  small table  %7.2f us per serialize (%d bytes)"):format(per * 1e6, #pf.serialize(small)))

-- bench/redis.lua: throughput of pf.redis against a floor in the same run.
--
--   build/pocketflow bench/redis.lua [--smoke] [--floor PATH] [N [TASKS [RUNS]]]
--
-- Engine: TASKS tasks share one pf.redis connection and do N commands in
-- all, each task SET k<task> v<j> then GET k<task> (checked), in turn.
-- Floor: the same commands from plain hiredis in C, pipelined with TASKS
-- in flight (bench/redis_floor.c, built as build/bench/redis_floor).
-- Both run against one redis-server started here on a free 127.0.0.1
-- port without persistence, stopped at the end. Runs alternate; the
-- medians are shown with the ratio floor time / engine time (1.0: as
-- fast as hiredis from C).
local pf = require "pocketflow"
local uv = require "luv"

local args, floor_bin, smoke = {}, nil, false
do
  local i = 1
  while arg[i] do
    if arg[i] == "--smoke" then smoke = true
    elseif arg[i] == "--floor" then i = i + 1; floor_bin = arg[i]
    else args[#args + 1] = tonumber(arg[i]) end
    i = i + 1
  end
end
local N = args[1] or (smoke and 2000 or 100000)
local TASKS = args[2] or 100
local RUNS = args[3] or (smoke and 1 or 5)
local here = (arg[0]:match("^(.*)/[^/]*$") or ".")
floor_bin = floor_bin or here .. "/../build/bench/redis_floor"

package.path = here .. "/../spec/?.lua;" .. package.path
local srv = require("support.redisd").start()   -- the specs' server: waits until up
local port, url = srv.port, srv.url
local function stop() srv:kill() end

local function engine()
  return pf.run(function()
    local r = pf.redis.connect(url)
    local per = N // TASKS
    local t0 = uv.hrtime()
    local tasks = {}
    for t = 1, TASKS do
      tasks[t] = pf.spawn(function()
        local key = "k" .. t
        for j = 1, per // 2 do
          r:call("SET", key, "v" .. j)
          local v = r:call("GET", key)
          if v ~= "v" .. j then error("GET " .. key .. " gave " .. tostring(v)) end
        end
      end)
    end
    for t = 1, TASKS do tasks[t]:wait() end
    local dt = (uv.hrtime() - t0) / 1e9
    r:close()
    return dt
  end)
end

local function floor()
  local h = assert(io.popen(("%s %d %d %d"):format(floor_bin, port, N, TASKS)))
  local out = h:read("a")
  local ok = h:close()
  local t = tonumber(out:match("RESULT time=([%d.e-]+)"))
  if not ok or not t then error("floor failed: " .. out) end
  return t
end

local ok, err = pcall(function()
  local et, ft = {}, {}
  for i = 1, RUNS do
    et[i] = engine()
    ft[i] = floor()
  end
  table.sort(et)
  table.sort(ft)
  local e, f = et[(RUNS + 1) // 2], ft[(RUNS + 1) // 2]
  print(("redis %d commands, %d tasks on one connection: pf.redis %.3f s (%.0f/s), "
    .. "hiredis floor %.3f s (%.0f/s), ratio %.2fx of the floor"):format(
    N, TASKS, e, N / e, f, N / f, f / e))
end)
stop()
if not ok then io.stderr:write("bench/redis.lua: ", tostring(err), "\n"); os.exit(1) end

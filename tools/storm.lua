-- A storm of tasks: N tasks per round (default 100,000) that end, fail
-- (string and table errors, timeouts) or wait, half of them cancelled at
-- random moments while the rest run; ROUNDS rounds (default 5). Prints
-- per round the outcomes, the time, the peak RSS of the round (VmHWM,
-- reset between rounds through /proc/self/clear_refs where allowed), the
-- RSS after it and Lua's heap: flat figures over rounds mean nothing is
-- kept from one round to the next.
-- usage: pocketflow tools/storm.lua [N [ROUNDS [SEED]]]
local pf = require "pocketflow"

local N = math.tointeger(tonumber(arg and arg[1] or "") or 100000)
local ROUNDS = math.tointeger(tonumber(arg and arg[2] or "") or 5)
math.randomseed(math.tointeger(tonumber(arg and arg[3] or "") or 1))

local function status_kb(field)
  local f = io.open("/proc/self/status")
  if not f then return -1 end
  local s = f:read("a")
  f:close()
  return tonumber(s:match(field .. ":%s*(%d+)")) or -1
end

local function reset_peak()
  local f = io.open("/proc/self/clear_refs", "w")
  if not f then return false end
  local ok = f:write("5")
  f:close()
  return ok ~= nil
end

local WAITS = 4   -- the kind of task that waits until it is cancelled

local function body(kind, i)
  if kind == 1 then
    pf.sleep(math.random() * 0.05)
    return i
  elseif kind == 2 then
    pf.sleep(math.random() * 0.02)
    error("storm: task " .. i .. " failed")
  elseif kind == 3 then
    error({ task = i })
  elseif kind == WAITS then
    pf.await(function() end)
  elseif kind == 5 then
    return pf.timeout(0.01, pf.sleep, 1)
  else
    local child = pf.spawn(pf.sleep, 1)
    pf.sleep(0.01)
    child:cancel()
    return child:status()
  end
end

local function round()
  local counts = { done = 0, failed = 0, cancelled = 0 }
  pf.run(function()
    local tasks, kinds = {}, {}
    for i = 1, N do
      kinds[i] = math.random(6)
      tasks[i] = pf.spawn(body, kinds[i], i)
    end
    -- half of them cancelled at random moments, while the others run
    for k = 1, N // 2 do
      tasks[math.random(N)]:cancel()
      if k % 500 == 0 then pf.sleep(math.random() * 0.002) end
    end
    for i = 1, N do
      if kinds[i] == WAITS then tasks[i]:cancel() end
    end
    for i = 1, N do
      pcall(tasks[i].wait, tasks[i])
      local st = tasks[i]:status()
      counts[st] = counts[st] + 1
    end
  end)
  return counts
end

local can_reset = reset_peak()
print(("storm: %d tasks x %d rounds; peak RSS per round%s"):format(
  N, ROUNDS, can_reset and "" or " (VmHWM cannot be reset here: since the start)"))
for r = 1, ROUNDS do
  reset_peak()
  local t0 = pf.now()
  local c = round()
  local secs = pf.now() - t0
  local peak = status_kb("VmHWM")
  collectgarbage()
  collectgarbage()
  print(("round %d: %d done, %d failed, %d cancelled in %.2f s; peak RSS %d kB, "
         .. "RSS after %d kB, Lua heap %d kB"):format(r, c.done, c.failed,
         c.cancelled, secs, peak, status_kb("VmRSS"), collectgarbage("count") // 1))
end

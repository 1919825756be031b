-- Issue 8 "cancellation at every wait" (the runtime's waits): seeded
-- rounds cancel tasks at random points of sleep, await, gather, timeout,
-- a nested flow, a parallel batch, timed attempts with backoff and a timed
-- flow, a question answered by on_interrupt and a durable run; every to-be-closed variable is
-- closed, no task is left, memory stays flat over rounds and the loop
-- keeps working.
local pf = require "pocketflow"
local uv = require "luv"
local warnings = require "support.warnings"

local mode = os.getenv("PF_MODE") or "plain"
local ROUNDS = mode == "valgrind" and 6 or 30
local TASKS = mode == "valgrind" and 16 or 48
local SEED = tonumber(os.getenv("PF_SEED") or "") or 8008

local rand

local function ms() return rand(0, 12) / 1000 end

local function closer(counts)
  counts.opened = counts.opened + 1
  return setmetatable({}, { __close = function() counts.closed = counts.closed + 1 end })
end

-- each wait kind: a body that waits, with a to-be-closed variable open
local kinds = {}

function kinds.sleep(c)
  local _ <close> = closer(c)
  pf.sleep(ms())
end

function kinds.await(c)
  local _ <close> = closer(c)
  local delay = rand(0, 12)
  pf.await(function(resume)
    local t = uv.new_timer()
    t:start(delay, 0, function()
      t:close()
      resume("late")  -- false once the task was cancelled
    end)
  end)
end

function kinds.gather(c)
  local _ <close> = closer(c)
  local fns = {}
  for i = 1, rand(1, 4) do
    local d = ms()
    fns[i] = function()
      local _ <close> = closer(c)
      pf.sleep(d)
      if rand(1, 6) == 1 then error("item fails") end
      return i
    end
  end
  pcall(pf.gather, fns)
end

function kinds.timeout(c)
  local _ <close> = closer(c)
  pcall(pf.timeout, ms(), function()
    local _ <close> = closer(c)
    pf.sleep(ms())
  end)
end

local function step(c, fails)
  return pf.Node{
    exec = function()
      local _ <close> = closer(c)
      pf.sleep(ms())
      if fails then error("step fails") end
    end,
    max_retries = 2,
  }
end

function kinds.flow(c)
  local _ <close> = closer(c)
  local a, b = step(c), step(c, rand(1, 5) == 1)
  a:next(pf.Flow{ start = b })
  local f = pf.Flow{ start = a }
  pcall(f.run, f, {})
end

function kinds.batch(c)
  local _ <close> = closer(c)
  local n = pf.ParallelBatchNode{
    max_retries = rand(1, 2),
    max_concurrency = rand(0, 1) == 1 and 2 or nil,
    prep = function() return { 1, 2, 3, 4 } end,
    exec = function(_, x)
      local _ <close> = closer(c)
      pf.sleep(ms())
      if x == 4 and rand(1, 4) == 1 then error("item fails") end
      return x
    end,
  }
  pcall(n.run, n, {})
end

-- issue 11's waits: timed attempts (a child task each), backoff waits
-- with jitter, a deadline, and a flow with a timeout
function kinds.attempts(c)
  local _ <close> = closer(c)
  local n = pf.Node{
    exec = function()
      local _ <close> = closer(c)
      pf.sleep(ms())
      if rand(1, 2) == 1 then error("attempt fails") end
    end,
    max_retries = 3, wait = 0.002, backoff = 2, jitter = 0.5,
    timeout = rand(1, 12) / 1000, deadline = 0.05,
  }
  local f = pf.Flow{ start = n, timeout = rand(5, 30) / 1000 }
  pcall(f.run, f, {})
end

-- issue 13's waits: a question answered by on_interrupt that waits, and
-- a durable run's saves
function kinds.durable(c)
  local _ <close> = closer(c)
  local ask = pf.Node{
    exec = function()
      local _ <close> = closer(c)
      return pf.interrupt("ok?")
    end,
    post = function(_, shared, _, answer) shared.answer = answer end,
  }
  local f = pf.Flow{ start = ask }
  if rand(1, 2) == 1 then
    pcall(f.run, f, {}, { on_interrupt = function() pf.sleep(ms()); return "yes" end })
  else
    local saved = pf.Flow{ start = pf.Node{ exec = function() pf.sleep(ms()) end } }
    pcall(saved.run, saved, {}, { store = pf.memory() })
  end
end

local names = { "sleep", "await", "gather", "timeout", "flow", "batch", "attempts", "durable" }

-- one round: TASKS tasks of random kinds, each cancelled at a random point
local function round(counts)
  local statuses = {}
  pf.run(function()
    local tasks = {}
    for i = 1, TASKS do
      local kind = names[rand(1, #names)]
      tasks[i] = pf.spawn(kinds[kind], counts)
      local delay = ms()
      pf.spawn(function()
        if delay > 0 then pf.sleep(delay) end
        tasks[i]:cancel()
      end)
    end
    for i = 1, TASKS do
      pcall(tasks[i].wait, tasks[i])
    end
    for i = 1, TASKS do statuses[tasks[i]:status()] = true end
  end)
  return statuses
end

describe("cancellation at every runtime wait", function()
  it("closes everything, leaves no task and keeps memory flat (seed " .. SEED .. ")", function()
    local r = math.random
    rand = function(a, b)
      return r(a, b)
    end
    math.randomseed(SEED)
    local counts = { opened = 0, closed = 0 }
    local mem = {}
    local seen, restore = warnings.capture()
    local all = {}
    for i = 1, ROUNDS do
      local statuses = round(counts)
      assert.is_nil(statuses.running, "a task was left running")
      for k in pairs(statuses) do all[k] = true end
      assert.equal(counts.opened, counts.closed, "round " .. i)
      collectgarbage(); collectgarbage()
      mem[i] = collectgarbage("count")
    end
    restore()
    if os.getenv("PF_DEBUG") then print(table.concat(mem, " "), counts.opened) end
    -- cancels landed both before and after tasks ended
    assert.is_true(all.cancelled and all.done)
    for _, w in ipairs(seen) do
      -- only the items' own failures may be reported
      assert.truthy(w:find("fails", 1, true), w)
    end
    -- flat: the last round holds no more than the third, with slack
    assert.truthy(mem[ROUNDS] <= mem[3] * 1.25 + 256,
      ("memory grew: %.0f KB after round 3, %.0f KB after round %d")
        :format(mem[3], mem[ROUNDS], ROUNDS))
    assert.equal(7, pf.run(function() pf.sleep(0.001); return 7 end))
    assert.is_false(uv.loop_alive())
  end)
end)

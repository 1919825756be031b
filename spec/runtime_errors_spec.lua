-- API.md §3 and §2 "Errors": bad input, waits where no task runs, error
-- values across tasks, deadlock, loading the module twice.
local pf = require "pocketflow"

local function has(s, sub)
  return type(s) == "string" and s:find(sub, 1, true) ~= nil
end

local function count(s, sub)
  local n, i = 0, 1
  while true do
    local j = s:find(sub, i, true)
    if not j then return n end
    n, i = n + 1, j + #sub
  end
end

local warnings_of = require("support.warnings").of

-- the error fn raises, inside a task and outside
local function error_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return err
end

describe("bad input", function()
  it("pf.sleep rejects negative, NaN and non-number durations, naming itself", function()
    for _, bad in ipairs({ -1, 0 / 0, "x", {}, false }) do
      local outside = error_of(pf.sleep, bad)
      local inside = pf.run(function() return error_of(pf.sleep, bad) end)
      for _, err in ipairs({ outside, inside }) do
        assert.truthy(has(err, "pf.sleep"), err)
        assert.truthy(has(err, "non-negative number"), err)
      end
    end
    assert.truthy(has(error_of(pf.sleep), "pf.sleep"))
  end)

  it("pf.timeout rejects a bad duration or a missing function", function()
    assert.truthy(has(error_of(pf.timeout, -1, function() end), "pf.timeout"))
    assert.truthy(has(error_of(pf.timeout, 1, "not a function"), "function"))
    assert.truthy(has(pf.run(function() return error_of(pf.timeout, "x", print) end), "pf.timeout"))
  end)

  it("pf.gather, pf.spawn, pf.run and pf.await reject what is not a function", function()
    assert.truthy(has(error_of(pf.gather, "x"), "table"))
    assert.truthy(has(error_of(pf.gather, { function() end, 42 }), "pf.gather"))
    assert.truthy(has(error_of(pf.spawn, nil), "function"))
    assert.truthy(has(error_of(pf.run, 42), "function"))
    assert.truthy(has(error_of(pf.await, "x"), "function"))
  end)

  it(":wait() and :cancel() need a task", function()
    local h = pf.spawn(function() end)
    assert.truthy(has(error_of(h.wait, {}), "pocketflow.task"))
    assert.truthy(has(error_of(h.cancel, 1), "pocketflow.task"))
    h:wait()
  end)

  it("a task cannot wait for itself", function()
    local err = pf.run(function()
      local h
      h = pf.spawn(function() return error_of(h.wait, h) end)
      return h:wait()
    end)
    assert.truthy(has(err, "itself"))
  end)

  it("passes many arguments and results through tasks", function()
    local args = {}
    for i = 1, 100 do args[i] = i end
    local r = table.pack(pf.run(function(...)
      local h = pf.spawn(function(...) return ... end, ...)
      return h:wait()
    end, table.unpack(args)))
    assert.are.equal(100, r.n)
    assert.are.equal(100, r[100])
    local t = table.pack(pf.timeout(1, function(...) return ... end, table.unpack(args)))
    assert.are.equal(100, t.n)
  end)
end)

describe("waiting outside a pocketflow task", function()
  local waits = {
    sleep = function() pf.sleep(0.01) end,
    await = function() pf.await(function(resume) resume() end) end,
    gather = function() pf.gather({ function() end }) end,
    timeout = function() pf.timeout(1, function() end) end,
    wait = function() pf.spawn(function() end):wait() end,
  }

  for name, wait in pairs(waits) do
    it("raises for " .. name .. " in a coroutine of the user's, outside any task", function()
      local err = error_of(coroutine.wrap(wait))
      assert.truthy(has(err, "not inside a pocketflow task"), err)
      pf.run(function() end)  -- what it may have spawned ends here
    end)

    it("raises for " .. name .. " in a coroutine of the user's inside a task", function()
      local err = pf.run(function() return error_of(coroutine.wrap(wait)) end)
      assert.truthy(has(err, "not inside a pocketflow task"), err)
    end)
  end

  it("says to use pf.spawn", function()
    local err = pf.run(function()
      return error_of(coroutine.wrap(function() pf.sleep(0.01) end))
    end)
    assert.truthy(has(err, "pf.spawn"))
  end)

  it("raises in a table.sort comparator inside a task", function()
    local err = pf.run(function()
      return error_of(table.sort, { 3, 1, 2 }, function(a, b) pf.sleep(0); return a < b end)
    end)
    assert.truthy(has(err, "pf.sleep"))
  end)
end)

describe("coroutine.yield directly in a task", function()
  it("is an error, not a hang", function()
    local err = error_of(pf.run, function() coroutine.yield("x") end)
    assert.truthy(has(err, "coroutine.yield"))
  end)

  it("fails a spawned task and a gathered function the same way", function()
    pf.run(function()
      local h = pf.spawn(function() coroutine.yield() end)
      assert.truthy(has(error_of(h.wait, h), "coroutine.yield"))
      local g = error_of(pf.gather, { function() coroutine.yield() end, function() pf.sleep(1) end })
      assert.truthy(has(g, "coroutine.yield"))
    end)
  end)

  it("still lets a task run coroutines of its own", function()
    local r = pf.run(function()
      local co = coroutine.wrap(function() coroutine.yield(1); return 2 end)
      return co() + co()
    end)
    assert.are.equal(3, r)
  end)
end)

describe("error values", function()
  it("a table error reaches pf.run's caller as the same object", function()
    local e = { code = 42 }
    local got = error_of(pf.run, function() error(e) end)
    assert.is_true(rawequal(e, got))
  end)

  it("a table error crosses tasks, gather and timeout as the same object", function()
    local e = setmetatable({}, { __tostring = function() return "custom" end })
    local got = error_of(pf.run, function()
      local h = pf.spawn(function()
        pf.gather({ function()
          pf.timeout(1, function()
            pf.spawn(function() pf.sleep(0.001); error(e) end):wait()
          end)
        end })
      end)
      h:wait()
    end)
    assert.is_true(rawequal(e, got))
  end)

  it("a string error gains the traceback once, across several tasks", function()
    local err = error_of(pf.run, function()
      local h = pf.spawn(function()
        return pf.gather({ function()
          return pf.timeout(1, function()
            return pf.spawn(function() pf.sleep(0.001); error("boom") end):wait()
          end)
        end })
      end)
      return h:wait()
    end)
    assert.truthy(err:find("boom"))
    assert.are.equal(1, count(err, "stack traceback:"))
  end)

  it("the traceback is the raising task's", function()
    local function deep_raiser() error("deep boom") end
    local err = error_of(pf.run, function()
      return pf.spawn(function() pf.sleep(0); deep_raiser() end):wait()
    end)
    assert.truthy(has(err, "deep_raiser"))
  end)

  it("the error reported for a task nobody waited on keeps its value", function()
    local got = warnings_of(function()
      pf.run(function() pf.spawn(function() error({}) end) end)
    end)
    assert.are.equal(1, #got)
    assert.truthy(has(got[1], "table"))
  end)

  it("an error in __close of a failed task is a warning; the task's error stays", function()
    local err
    local got = warnings_of(function()
      err = error_of(pf.run, function()
        return pf.spawn(function()
          local x <close> = setmetatable({}, { __close = function() error("close boom") end })
          pf.sleep(0)
          error("task boom")
        end):wait()
      end)
    end)
    assert.truthy(has(err, "task boom"))
    assert.are.equal(1, #got)
    assert.truthy(has(got[1], "close boom"))
  end)

  it("an error in __close of a cancelled task is a warning; the runtime goes on", function()
    local got = warnings_of(function()
      pf.run(function()
        local h = pf.spawn(function()
          local x <close> = setmetatable({}, { __close = function() error("close boom") end })
          pf.sleep(1)
        end)
        pf.sleep(0.001)
        h:cancel()
      end)
    end)
    assert.are.equal(1, #got)
    assert.truthy(has(got[1], "close boom"))
    for i = 1, 5 do  -- the threads are reused afterwards
      assert.are.equal(i, pf.run(function() return pf.spawn(function() pf.sleep(0); return i end):wait() end))
    end
  end)
end)

describe("deadlock", function()
  it("pf.run raises instead of hanging when nothing can wake the tasks", function()
    local log = {}
    local err = error_of(pf.run, function()
      local c <close> = setmetatable({}, { __close = function() log[#log + 1] = "closed" end })
      pf.await(function() end)
    end)
    assert.truthy(has(err, "deadlock"))
    assert.are.same({ "closed" }, log)
  end)

  it("is found for tasks waiting on each other", function()
    local err = error_of(pf.run, function()
      local a, b
      a = pf.spawn(function() pf.sleep(0); return b:wait() end)
      b = pf.spawn(function() pf.sleep(0); return a:wait() end)
      a:wait()
    end)
    assert.truthy(has(err, "deadlock"))
  end)

  it("is found for a spawned task after the main task ended", function()
    local err = error_of(pf.run, function()
      pf.spawn(function() pf.await(function() end) end)
      return "main done"
    end)
    assert.truthy(has(err, "deadlock"))
  end)

  it("leaves the runtime usable", function()
    assert.is_false(pcall(pf.run, function() pf.await(function() end) end))
    assert.are.equal("fine", pf.run(function() pf.sleep(0.001); return "fine" end))
  end)
end)

describe("loading the module again", function()
  it("works in the same Lua state", function()
    local first = pf
    local saved_pf, saved_core = package.loaded["pocketflow"], package.loaded["pocketflow.core"]
    local h = first.spawn(function() first.sleep(0.005); return "from the first load" end)
    package.loaded["pocketflow"] = nil
    package.loaded["pocketflow.core"] = nil
    local second = require "pocketflow"
    assert.are_not.equal(first, second)
    local got = {}
    second.on_warning = function(msg) got[#got + 1] = msg end
    local r = second.run(function()
      local a = h:wait()
      local b = second.gather({ function() second.sleep(0.001); return "b" end })[1]
      second.spawn(function() error("lost") end)
      return a, b
    end)
    assert.are.equal("from the first load", r)
    assert.are.equal(1, #got)
    assert.are.equal("ok", first.run(function() first.sleep(0); return "ok" end))
    package.loaded["pocketflow"], package.loaded["pocketflow.core"] = saved_pf, saved_core
    -- warnings go to the module loaded last; route them back
    second.on_warning = function(msg) return pf.on_warning(msg) end
  end)
end)

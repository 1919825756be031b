-- API.md §3, the task part: pf.run, pf.spawn and its handle, pf.gather,
-- pf.sleep, pf.timeout, pf.now; §4 for the warnings pf.run reports.
local pf = require "pocketflow"

local mode = os.getenv("PF_MODE") or "plain"
local slow = mode == "valgrind"

local warnings_of = require("support.warnings").of

local function has(s, sub)
  return type(s) == "string" and s:find(sub, 1, true) ~= nil
end

local function closer(log, name)
  return setmetatable({}, { __close = function() log[#log + 1] = name end })
end

describe("pf.run", function()
  it("returns fn's results, nils included, and passes its arguments", function()
    local n, a, b, c = (function(...) return select("#", ...), ... end)(
      pf.run(function(x, y) return x, nil, y end, 1, 3))
    assert.are.equal(3, n)
    assert.are.equal(1, a)
    assert.is_nil(b)
    assert.are.equal(3, c)
  end)

  it("raises fn's error", function()
    local ok, err = pcall(pf.run, function() error("boom") end)
    assert.is_false(ok)
    assert.truthy(has(err, "boom"))
  end)

  it("inside a task just calls fn, without waiting for what fn spawned", function()
    local finished = false
    pf.run(function()
      local me = coroutine.running()
      local co, x, y = pf.run(function(a)
        pf.spawn(function() pf.sleep(0.02); finished = true end)
        return coroutine.running(), a, "y"
      end, "x")
      assert.are.equal(me, co)
      assert.are.equal("x", x)
      assert.are.equal("y", y)
      assert.is_false(finished)
    end)
    assert.is_true(finished)
  end)

  it("returns only when every task spawned under it has ended", function()
    local log = {}
    pf.run(function()
      pf.spawn(function()
        pf.spawn(function() pf.sleep(0.03); log[#log + 1] = "grandchild" end)
        pf.sleep(0.01)
        log[#log + 1] = "child"
      end)
      log[#log + 1] = "main"
    end)
    assert.are.same({ "main", "child", "grandchild" }, log)
  end)

  it("reports through pf.on_warning the error of a task nobody waited on", function()
    local got = warnings_of(function()
      pf.run(function()
        pf.spawn(function() error("lost boom") end)
        local waited = pf.spawn(function() error("waited boom") end)
        assert.is_false(pcall(waited.wait, waited))
      end)
    end)
    assert.are.equal(1, #got)
    assert.truthy(has(got[1], "lost boom"))
  end)

  it("reports the error of a task spawned outside any task and never waited", function()
    local got = warnings_of(function()
      pf.spawn(function() error("root boom") end)
      pf.run(function() end)
    end)
    assert.are.equal(1, #got)
    assert.truthy(has(got[1], "root boom"))
  end)

  it("does not report its own main task's error as a warning", function()
    local got = warnings_of(function()
      assert.is_false(pcall(pf.run, function() error("main boom") end))
    end)
    assert.are.same({}, got)
  end)

  it("is run implicitly by every waiting call made outside any task", function()
    local t0 = pf.now()
    pf.sleep(0.01)
    assert.is_true(pf.now() - t0 >= 0.0095)
    assert.are.same({ 1, 2 }, { pf.await(function(resume) resume(1, 2) end) })
    assert.are.same({ "a", "b" }, pf.gather({
      function() pf.sleep(0.005); return "a" end,
      function() return "b" end,
    }))
    assert.are.same({ 5, 6 }, { pf.timeout(1, function(x) pf.sleep(0.001); return x, 6 end, 5) })
    local h = pf.spawn(function() pf.sleep(0.005); return "waited" end)
    assert.are.equal("waited", h:wait())
  end)
end)

describe("pf.spawn", function()
  it("outside a task runs when the loop next runs", function()
    local ran = false
    local h = pf.spawn(function(a, b) ran = true; return a + b end, 2, 5)
    assert.is_false(ran)
    assert.are.equal(7, h:wait())
    assert.is_true(ran)
  end)

  it(":wait() gives every result, nils included, and again after the end", function()
    pf.run(function()
      local h = pf.spawn(function() pf.sleep(0.001); return nil, "b", nil end)
      local r = table.pack(h:wait())
      assert.are.equal(3, r.n)
      assert.are.equal("b", r[2])
      assert.are.equal("b", select(2, h:wait()))
    end)
  end)

  it(":wait() raises the task's error, for each waiter", function()
    pf.run(function()
      local h = pf.spawn(function() pf.sleep(0.005); error("spawned boom") end)
      local other = pf.spawn(function() return pcall(h.wait, h) end)
      local ok, err = pcall(h.wait, h)
      assert.is_false(ok)
      assert.truthy(has(err, "spawned boom"))
      local ok2, err2 = other:wait()
      assert.is_false(ok2)
      assert.are.equal(err, err2)
    end)
  end)

  it(":wait() on a cancelled task raises an error containing 'cancelled'", function()
    pf.run(function()
      local h = pf.spawn(function() pf.sleep(10) end)
      local waiter = pf.spawn(function() return pcall(h.wait, h) end)
      pf.sleep(0.005)
      h:cancel()
      local ok, err = waiter:wait()
      assert.is_false(ok)
      assert.truthy(has(err, "cancelled"))
      ok, err = pcall(h.wait, h)  -- and after the fact
      assert.is_false(ok)
      assert.truthy(has(err, "cancelled"))
    end)
  end)

  it("a cancelled task is never resumed again", function()
    local steps = 0
    pf.run(function()
      local sleeper = pf.spawn(function() steps = steps + 1; pf.sleep(0.02); steps = steps + 1 end)
      local ready = pf.spawn(function() steps = steps + 10; pf.sleep(0); steps = steps + 10 end)
      pf.sleep(0)  -- both ran to their wait; 'ready' sits in the ready list
      ready:cancel()
      sleeper:cancel()
      pf.sleep(0.05)  -- well past the sleeper's wake time
    end)
    assert.are.equal(11, steps)
  end)

  it("closes the to-be-closed variables of a cancelled task", function()
    local log = {}
    pf.run(function()
      local h = pf.spawn(function()
        local a <close> = closer(log, "a")
        local b <close> = closer(log, "b")
        pf.sleep(10)
        log[#log + 1] = "resumed"
      end)
      pf.sleep(0.001)
      h:cancel()
      pf.sleep(0.001)
    end)
    assert.are.same({ "b", "a" }, log)
  end)

  it("closes the to-be-closed variables of a task that failed", function()
    local log = {}
    pf.run(function()
      local h = pf.spawn(function()
        local a <close> = closer(log, "a")
        pf.sleep(0.001)
        error("fail")
      end)
      assert.is_false(pcall(h.wait, h))
    end)
    assert.are.same({ "a" }, log)
  end)

  it(":cancel() also cancels the tasks it spawned that still run", function()
    local log, inner = {}, nil
    pf.run(function()
      local outer = pf.spawn(function()
        inner = pf.spawn(function()
          local c <close> = closer(log, "inner closed")
          pf.sleep(0.02)
          log[#log + 1] = "inner finished"
        end)
        pf.spawn(function() pf.sleep(0.02); log[#log + 1] = "sibling finished" end)
        inner:wait()
        log[#log + 1] = "outer finished"
      end)
      pf.sleep(0.005)
      outer:cancel()
      pf.sleep(0.05)
      assert.truthy(has(select(2, pcall(inner.wait, inner)), "cancelled"))
    end)
    assert.are.same({ "inner closed" }, log)
  end)

  it(":cancel() of a task that already ended still cancels its running children", function()
    local finished = false
    pf.run(function()
      local parent = pf.spawn(function()
        pf.spawn(function() pf.sleep(0.02); finished = true end)
        return "parent done"
      end)
      assert.are.equal("parent done", parent:wait())
      parent:cancel()
      assert.are.equal("parent done", parent:wait())  -- its outcome stays
      pf.sleep(0.04)
    end)
    assert.is_false(finished)
  end)

  it("a task that cancels itself stops at its next wait", function()
    local log = {}
    pf.run(function()
      local h
      h = pf.spawn(function()
        h:cancel()
        log[#log + 1] = "still running"
        pf.sleep(0.001)
        log[#log + 1] = "resumed"
      end)
      assert.truthy(has(select(2, pcall(h.wait, h)), "cancelled"))
    end)
    assert.are.same({ "still running" }, log)
  end)

  it("runs many tasks, each with its own arguments", function()
    local n = slow and 200 or 2000
    local sum = pf.run(function()
      local hs = {}
      for i = 1, n do hs[i] = pf.spawn(function(x) pf.sleep(0); return x * 2 end, i) end
      local s = 0
      for i = 1, n do s = s + hs[i]:wait() end
      return s
    end)
    assert.are.equal(n * (n + 1), sum)
  end)
end)

describe("pf.gather", function()
  it("returns the first results in the order of the functions", function()
    local r = pf.run(function()
      return pf.gather({
        function() pf.sleep(0.03); return "slow", "ignored" end,
        function() pf.sleep(0.01); return "fast" end,
        function() return "now" end,
      })
    end)
    assert.are.same({ "slow", "fast", "now" }, r)
  end)

  it("keeps nil results in their slot", function()
    local r = pf.run(function()
      return pf.gather({ function() end, function() return 2 end })
    end)
    assert.is_nil(r[1])
    assert.are.equal(2, r[2])
  end)

  it("of an empty array returns an empty array", function()
    assert.are.same({}, pf.run(function() return pf.gather({}) end))
  end)

  it("runs the functions concurrently", function()
    -- all three are waiting at once (a count, not a timing)
    local waiting, peak = 0, 0
    local function f()
      waiting = waiting + 1
      peak = math.max(peak, waiting)
      pf.sleep(0.05)
      waiting = waiting - 1
    end
    pf.run(function() pf.gather({ f, f, f }) end)
    assert.equal(3, peak)
    assert.equal(0, waiting)
  end)

  it("on the first error cancels the rest and raises it", function()
    local log = {}
    local ok, err = pcall(pf.run, function()
      pf.gather({
        function()
          local c <close> = closer(log, "closed 1")
          pf.sleep(0.03)
          log[#log + 1] = "completed 1"
        end,
        function() pf.sleep(0.005); error("gather boom") end,
        function() pf.sleep(0.03); log[#log + 1] = "completed 3" end,
        function() pf.sleep(0.01); error("second boom") end,
      })
    end)
    assert.is_false(ok)
    assert.truthy(has(err, "gather boom"))
    pf.sleep(0.05)  -- past the time the others would have completed
    assert.are.same({ "closed 1" }, log)
  end)

  it("rejects items that are not functions", function()
    local ok, err = pcall(pf.run, function() return pf.gather({ function() end, 42 }) end)
    assert.is_false(ok)
    assert.truthy(has(err, "pf.gather"))
  end)

  it("gathers inside gathered functions", function()
    local r = pf.run(function()
      return pf.gather({
        function() return pf.gather({ function() return 1 end, function() return 2 end }) end,
        function() return 3 end,
      })
    end)
    assert.are.same({ { 1, 2 }, 3 }, r)
  end)
end)

describe("pf.sleep", function()
  it("pf.sleep(0) lets every other ready task run first", function()
    local log = {}
    pf.run(function()
      pf.spawn(function() log[#log + 1] = "a1"; pf.sleep(0); log[#log + 1] = "a2" end)
      pf.spawn(function() log[#log + 1] = "b1"; pf.sleep(0); log[#log + 1] = "b2" end)
      pf.spawn(function() log[#log + 1] = "c1" end)
    end)
    assert.are.same({ "a1", "b1", "c1", "a2", "b2" }, log)
  end)

  it("pf.sleep(0) ends even when a task it ran behind was cancelled", function()
    local done = false
    pf.run(function()
      local last
      pf.spawn(function()
        last:cancel()  -- the last task of this turn leaves the ready list
        while not done do pf.sleep(0) end
      end)
      pf.spawn(function() pf.sleep(0.01); done = true end)
      last = pf.spawn(function() end)
    end)
    assert.is_true(done)
  end)

  it("never ends early", function()
    pf.run(function()
      for _, s in ipairs({ 0.001, 0.0015, 0.002, 0.0037, 0.01, 0.025 }) do
        for _ = 1, 3 do
          local t0 = pf.now()
          pf.sleep(s)
          local elapsed = pf.now() - t0
          assert.is_true(elapsed >= s - 0.0005,
            ("slept %.6f s for pf.sleep(%g)"):format(elapsed, s))
        end
      end
    end)
  end)

  it("accepts huge durations; such a sleeper is cancelled like any", function()
    local ok, err = pcall(pf.run, function() return pf.timeout(0.005, pf.sleep, math.huge) end)
    assert.is_false(ok)
    assert.truthy(has(err, "timeout"))
    ok, err = pcall(pf.run, function() return pf.timeout(0.005, pf.sleep, 1e300) end)
    assert.truthy(has(err, "timeout"))
  end)

  it("wakes sleepers in the order of their deadlines", function()
    local log = {}
    pf.run(function()
      for _, d in ipairs({ 30, 10, 20, 10, 5 }) do
        pf.spawn(function() pf.sleep(d / 1000); log[#log + 1] = d end)
      end
    end)
    assert.are.same({ 5, 10, 10, 20, 30 }, log)
  end)

  it("100 tasks sleeping 0.05 s overlap", function()
    local t0, n = pf.now(), 0
    pf.run(function()
      for _ = 1, 100 do pf.spawn(function() pf.sleep(0.05); n = n + 1 end) end
    end)
    assert.are.equal(100, n)
    assert.is_true(pf.now() - t0 < 1)
  end)

  it("thousands of concurrent sleepers all finish and overlap", function()
    local count = slow and 1000 or 10000
    local t0, n = pf.now(), 0
    pf.run(function()
      for i = 1, count do
        pf.spawn(function() pf.sleep(0.02 + (i % 10) / 1000); n = n + 1 end)
      end
    end)
    assert.are.equal(count, n)
    -- the sum of the sleeps is 200+ s; overlapped they take a fraction
    assert.is_true(pf.now() - t0 < (slow and 30 or 5))
  end)
end)

describe("pf.timeout", function()
  it("returns fn's results when fn finishes in time", function()
    local r = table.pack(pf.run(function()
      return pf.timeout(1, function(a) pf.sleep(0.005); return a, nil, "c" end, "a")
    end))
    assert.are.equal(3, r.n)
    assert.are.equal("a", r[1])
    assert.are.equal("c", r[3])
  end)

  it("past the deadline raises 'timeout' and cancels fn's task for good", function()
    local log = {}
    local t0
    pf.run(function()
      t0 = pf.now()
      local ok, err = pcall(pf.timeout, 0.01, function()
        local c <close> = closer(log, "closed")
        pf.spawn(function() pf.sleep(0.03); log[#log + 1] = "grandchild" end)
        pf.sleep(0.03)
        log[#log + 1] = "continued"
      end)
      assert.is_false(ok)
      assert.truthy(has(err, "timeout"))
      assert.is_true(pf.now() - t0 >= 0.0095)
      -- the deadline (0.01) comes before fn's sleep (0.03) however slow the
      -- run, so the log below (no "continued") shows the timeout did not
      -- wait for fn; a wall-clock bound here failed under valgrind at load
      assert.is_true(pf.now() - t0 < 2)
      pf.sleep(0.05)
    end)
    assert.are.same({ "closed" }, log)
  end)

  it("raises fn's own error", function()
    local ok, err = pcall(pf.run, function()
      return pf.timeout(1, function() error("inner boom") end)
    end)
    assert.is_false(ok)
    assert.truthy(has(err, "inner boom"))
  end)

  it("lets the caller go on after a timeout", function()
    local r = pf.run(function()
      assert.is_false(pcall(pf.timeout, 0.001, pf.sleep, 1))
      pf.sleep(0.002)
      return pf.timeout(0.5, function() return "next" end)
    end)
    assert.are.equal("next", r)
  end)

  it("nests: the inner deadline fires first", function()
    local ok, err = pcall(pf.run, function()
      return pf.timeout(1, function()
        return pf.timeout(0.005, pf.sleep, 0.5)
      end)
    end)
    assert.is_false(ok)
    assert.truthy(has(err, "timeout"))
  end)

  it("is cancelled with the task that called it", function()
    local log = {}
    pf.run(function()
      local h = pf.spawn(function()
        pf.timeout(1, function() pf.sleep(0.02); log[#log + 1] = "fn finished" end)
        log[#log + 1] = "caller continued"
      end)
      pf.sleep(0.005)
      h:cancel()
      pf.sleep(0.04)
    end)
    assert.are.same({}, log)
  end)
end)

describe("pf.now", function()
  it("is a fractional number of seconds", function()
    local t = pf.now()
    assert.are.equal("float", math.type(t))
    local a = pf.now()
    pf.sleep(0.0015)
    local d = pf.now() - a
    assert.is_true(d >= 0.001 and d < 1)
    assert.are_not.equal(math.floor(d), d)
  end)

  it("is monotonic", function()
    local last = pf.now()
    for _ = 1, 10000 do
      local t = pf.now()
      assert(t >= last)
      last = t
    end
  end)
end)

describe("task:status()", function()
  it("is running, done, failed or cancelled", function()
    local seen = {}
    pf.run(function()
      local ok = pf.spawn(function() pf.sleep(0.001); return 1 end)
      local bad = pf.spawn(function() pf.sleep(0.001); error("no") end)
      local cut = pf.spawn(function() pf.sleep(10) end)
      local me
      me = pf.spawn(function() seen.self = me:status() end)
      seen.before = { ok:status(), bad:status(), cut:status() }
      cut:cancel()
      ok:wait()
      pcall(bad.wait, bad)
      me:wait()
      seen.after = { ok:status(), bad:status(), cut:status() }
    end)
    assert.same({ "running", "running", "running" }, seen.before)
    assert.equal("running", seen.self)
    assert.same({ "done", "failed", "cancelled" }, seen.after)
  end)
end)

describe("cancelling a task that waits on a group", function()
  local function closer(fn) return setmetatable({}, { __close = fn }) end

  local groups = {
    ["pf.gather"] = function(body)
      local fns = {}
      for i = 1, 4 do fns[i] = function() return body(i) end end
      return pf.gather(fns)
    end,
    ["a parallel batch"] = function(body)
      return pf.ParallelBatchNode{ prep = function() return { 1, 2, 3, 4 } end,
        exec = function(_, x) return body(x) end }:run({})
    end,
    ["a parallel batch with retries and max_concurrency"] = function(body)
      return pf.ParallelBatchNode{ max_retries = 2, max_concurrency = 2,
        prep = function() return { 1, 2, 3, 4 } end,
        exec = function(_, x) return body(x) end }:run({})
    end,
  }
  for name, group in pairs(groups) do
    it("cancels its items and never resumes it (" .. name .. ")", function()
      local started, closed, finished, after = 0, 0, 0, false
      pf.run(function()
        local t = pf.spawn(function()
          group(function(i)
            started = started + 1
            local _ <close> = closer(function() closed = closed + 1 end)
            pf.sleep(i == 1 and 0.001 or 10)
            finished = finished + 1
          end)
          after = true
        end)
        while started < 2 do pf.sleep(0.001) end
        t:cancel()
        assert.equal("cancelled", t:status())
        pf.sleep(0.01)
      end)
      assert.equal(started, closed)
      assert.is_true(finished <= 1)
      assert.is_false(after)
    end)
  end
end)

describe("pf.await resumed before it parks", function()
  it("returns every value, many of them, and nils in between", function()
    local n = 5000
    local got = pf.run(function()
      return table.pack(pf.await(function(resume)
        local vals = {}
        for i = 1, n do vals[i] = (i % 7 ~= 0) and i or nil end
        assert.is_true(resume(table.unpack(vals, 1, n)))
        assert.is_false(resume("again"))
      end))
    end)
    assert.equal(n, got.n)
    assert.equal(1, got[1])
    assert.is_nil(got[7])
    assert.equal(n, got[n])
  end)

  it("returns many values passed after it parked too", function()
    local uv = require "luv"
    local n = 5000
    local got = pf.run(function()
      return table.pack(pf.await(function(resume)
        local t = uv.new_timer()
        t:start(1, 0, function()
          t:close()
          local vals = {}
          for i = 1, n do vals[i] = i end
          resume(table.unpack(vals, 1, n))
        end)
      end))
    end)
    assert.equal(n, got.n)
    assert.equal(n, got[n])
  end)
end)

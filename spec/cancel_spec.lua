-- Issue 8: cancellation and misuse inside the scheduler. Each case here
-- crashed, corrupted the scheduler or lost an error before the fix.
local pf = require "pocketflow"
local warnings = require "support.warnings"

local mode = os.getenv("PF_MODE") or "plain"

local function has(s, sub)
  return type(s) == "string" and s:find(sub, 1, true) ~= nil
end

local function error_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return err
end

local function closer(fn)
  return setmetatable({}, { __close = fn })
end

-- pf.run still works: the loop is not left half-run
local function loop_works()
  assert.equal(42, pf.run(function() pf.sleep(0.001); return 42 end))
end

describe("the cancel cascade", function()
  it("survives a __close that cancels a sibling which is then collected", function()
    -- the parent's first child is 'a': cancelling it runs its __close,
    -- which cancels 'b' (the next sibling) and lets it be collected
    local weak = setmetatable({}, { __mode = "v" })
    local closed, started = 0, 0
    pf.run(function()
      local parent = pf.spawn(function()
        weak.b = pf.spawn(function()
          local _ <close> = closer(function() closed = closed + 1 end)
          started = started + 1
          pf.sleep(100)
        end)
        pf.spawn(function()
          started = started + 1
          local _ <close> = closer(function()
            weak.b:cancel()
            weak.b = nil
            collectgarbage(); collectgarbage()
            closed = closed + 1
          end)
          pf.sleep(100)
        end)
        pf.sleep(100)
      end)
      while started < 2 do pf.sleep(0) end
      parent:cancel()
      assert.equal("cancelled", parent:status())
    end)
    assert.equal(2, closed)
    loop_works()
  end)

  it("cancels a chain of nested live tasks without deep C recursion", function()
    local n = mode == "valgrind" and 20000 or 300000
    local started, closed = 0, 0
    local function chain(k)
      started = started + 1
      local _ <close> = closer(function() closed = closed + 1 end)
      if k > 1 then pf.spawn(chain, k - 1) end
      pf.sleep(1000)
    end
    pf.run(function()
      local root = pf.spawn(chain, n)
      while started < n do pf.sleep(0.01) end
      root:cancel()
      assert.equal("cancelled", root:status())
    end)
    assert.equal(n, closed)
    loop_works()
  end)
end)

describe("a group whose owner is cancelled from inside its first-failure cancel", function()
  it("does not wake the ended owner of pf.gather (__close)", function()
    local owner
    pf.run(function()
      owner = pf.spawn(function()
        pf.gather({
          function() pf.sleep(0.01); error("first failure") end,
          function()
            local _ <close> = closer(function() owner:cancel() end)
            pf.sleep(100)
          end,
          function() pf.sleep(100) end,
        })
      end)
      pf.sleep(0.05)
    end)
    assert.equal("cancelled", owner:status())
    loop_works()
  end)

  it("does not wake the ended owner of a parallel batch (warning handler)", function()
    local owner
    local seen = {}
    local got = warnings.of(function()
      local restore_seen
      seen, restore_seen = warnings.capture()
      local inner = pf.on_warning
      pf.on_warning = function(msg)
        inner(msg)
        if owner and owner:status() == "running" then owner:cancel() end
        pf.spawn(function() end)   -- spawning from a handler is allowed
        error("handler fails too")  -- and its error is reported, not raised
      end
      pf.run(function()
        owner = pf.spawn(function()
          pf.ParallelBatchNode{
            prep = function() return { 1, 2, 3 } end,
            exec = function(_, x)
              if x == 1 then pf.sleep(0.01); error("item 1 fails") end
              local _ <close> = closer(function() error("close fails") end)
              pf.sleep(100)
            end,
          }:run({})
        end)
        pf.sleep(0.05)
      end)
      pf.on_warning = inner
      restore_seen()
    end)
    assert.equal("cancelled", owner:status())
    assert.truthy(#seen >= 1)
    assert.truthy(has(seen[1], "close fails"), seen[1])
    assert.is_table(got)
    loop_works()
  end)

  it("refuses a uv.run from a __close run between resumes", function()
    -- a failing task's __close runs from the drain, outside any resume,
    -- while other tasks are ready: a nested drain took the outer one's end
    local uv = require "luv"
    local seen, restore = warnings.capture()
    local rounds = 0
    pf.run(function()
      local t = pf.spawn(function()
        local _ <close> = closer(function() uv.run("nowait") end)
        pf.sleep(0.001)
        error("fails")
      end)
      local others = {}
      for i = 1, 3 do
        others[i] = pf.spawn(function()
          for _ = 1, 20 do pf.sleep(0); rounds = rounds + 1 end
        end)
      end
      assert.truthy(has(error_of(t.wait, t), "fails"))
      for i = 1, 3 do others[i]:wait() end
    end)
    restore()
    assert.equal(60, rounds)
    assert.truthy(#seen >= 1)
    assert.truthy(has(seen[1], "uv.run"), seen[1])
    loop_works()
  end)
end)

describe("coroutine.resume on a task's own thread", function()
  local waits = {
    sleep = function() pf.sleep(100) end,
    ["sleep(0)"] = function() pf.sleep(0) end,
    await = function() pf.await(function() end) end,
    timeout = function() pf.timeout(100, pf.sleep, 100) end,
    gather = function() pf.gather({ function() pf.sleep(100) end }) end,
    wait = function() pf.spawn(function() pf.sleep(100) end):wait() end,
    exec = function() pf.exec({ "sleep", "100.0808" }) end,
    ["node retry wait"] = function()
      pf.Node{ max_retries = 2, wait = 100, exec = function(self)
        if self.cur_retry == 0 then error("first attempt fails") end
      end }:run({})
    end,
    ["parallel batch"] = function()
      pf.ParallelBatchNode{ prep = function() return { 1, 2 } end,
        exec = function() pf.sleep(100) end }:run({})
    end,
  }
  for name, wait in pairs(waits) do
    it("raises a clear error and fails the task (" .. name .. ")", function()
      pf.run(function()
        local co
        local t = pf.spawn(function()
          co = coroutine.running()
          wait()
          return "resumed by the scheduler"
        end)
        while co == nil do pf.sleep(0) end
        local ok, err = coroutine.resume(co, 1, 2, 3)
        assert.is_false(ok)
        assert.truthy(has(err, "cannot resume a pocketflow task's thread"), err)
        err = error_of(t.wait, t)
        assert.truthy(has(err, "cannot resume a pocketflow task's thread"), err)
        assert.equal("failed", t:status())
        for _, c in ipairs(({ pf.spawn(function() return 1 end) })) do
          assert.equal(1, c:wait())
        end
      end)
      loop_works()
      -- the exec's child was killed with the wait
      local p = io.popen("grep -l '100[.]0808' /proc/[0-9]*/cmdline 2>/dev/null")
      local left = p:read("a")
      p:close()
      assert.equal("", left)
    end)
  end

  it("refuses it from a luv callback, and leaves a pooled thread dead", function()
    local uv = require "luv"
    local co, res
    local t
    pf.run(function()
      t = pf.spawn(function() co = coroutine.running(); pf.sleep(100) end)
      while co == nil do pf.sleep(0) end
      local timer = uv.new_timer()
      timer:start(5, 0, function()
        timer:close()
        res = { coroutine.resume(co) }
      end)
      pf.sleep(0.05)
    end)
    assert.is_false(res[1])
    assert.truthy(has(res[2], "cannot resume a pocketflow task's thread"), res[2])
    assert.equal("failed", t:status())
    assert.truthy(has(error_of(t.wait, t), "cannot resume"))
    pf.run(function() co = pf.spawn(function() return coroutine.running() end):wait() end)
    assert.is_false((coroutine.resume(co, function() end)) and coroutine.status(co) ~= "dead")
    loop_works()
  end)

  it("fails a task whose thread user code closed", function()
    pf.run(function()
      local co
      local t = pf.spawn(function() co = coroutine.running(); pf.sleep(0.02) end)
      pf.sleep(0.001)
      assert.is_true((coroutine.close(co)))
      local err = error_of(t.wait, t)
      assert.truthy(has(err, "cannot resume a pocketflow task's thread"), err)
    end)
    loop_works()
  end)
end)

describe("error values whose __tostring raises", function()
  local bad = setmetatable({}, { __tostring = function() error("tostring boom") end })

  it("are warned about from a __close of a cancelled task, and the loop goes on", function()
    local seen, restore = warnings.capture()
    local ok, err = pcall(pf.run, function()
      local t = pf.spawn(function()
        local _ <close> = closer(function() error(bad) end)
        pf.sleep(100)
      end)
      pf.sleep(0.01)
      t:cancel()
      return "main ends"
    end)
    restore()
    assert.is_true(ok, tostring(err))
    assert.equal("main ends", err)
    assert.equal(1, #seen)
    assert.truthy(has(seen[1], "error closing a variable of a cancelled task"), seen[1])
    assert.truthy(has(seen[1], "__tostring failed"), seen[1])
    loop_works()
  end)

  it("are warned about when a task nobody waited on fails", function()
    local seen, restore = warnings.capture()
    local ok = pcall(pf.run, function() pf.spawn(function() error(bad) end) end)
    restore()
    assert.is_true(ok)
    assert.equal(1, #seen)
    assert.truthy(has(seen[1], "error in a task nobody waited on"), seen[1])
    loop_works()
  end)

  it("do not change the binary's exit code", function()
    local bin = os.getenv("PF_BIN")
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write([[
      local pf = require "pocketflow"
      local bad = setmetatable({}, { __tostring = function() error("x") end })
      pf.run(function() pf.spawn(function() error(bad) end) end)
      print("after")
    ]])
    f:close()
    local p = io.popen(bin .. " " .. path .. " 2>&1; echo \"rc=$?\"")
    local out = p:read("a")
    p:close()
    os.remove(path)
    assert.truthy(has(out, "after"), out)
    assert.truthy(has(out, "rc=0"), out)
    assert.truthy(has(out, "__tostring failed"), out)
  end)
end)

describe("a task cancelled inside a pcall with a message handler", function()
  -- lua_resetthread keeps the thread's error handler: a pooled thread
  -- handed it to the next task
  -- 20 tasks at once, so that they take every thread the pool holds
  local function check_later_errors()
    local tasks, value = {}, {}
    for i = 1, 20 do
      tasks[i] = pf.spawn(function()
        if i % 2 == 0 then error(value) end
        return pf.timeout(0.02, pf.sleep, 1)
      end)
    end
    for i = 1, 20 do
      local err = error_of(tasks[i].wait, tasks[i])
      if i % 2 == 0 then assert.equal(value, err)
      else assert.truthy(has(err, "pf.timeout: timeout after"), err) end
    end
  end

  it("leaves later timeouts and errors intact (exact repro)", function()
    local seen, restore = warnings.capture()
    pf.run(function()
      local n = pf.Node{ exec = function() pf.sleep(1) end }
      assert.is_false((pcall(pf.timeout, 0.05, n.run, n, {})))
      check_later_errors()
    end)
    restore()
    assert.same({}, seen)
  end)

  for _, opts in ipairs({ { exec_fallback = function(_, _, e) error(e, 0) end },
                          { max_retries = 3 } }) do
    it("leaves later errors intact after a parallel batch item fails mid-exec", function()
      local seen, restore = warnings.capture()
      pf.run(function()
        for _ = 1, 3 do
          local n = pf.ParallelBatchNode{
            max_retries = opts.max_retries, exec_fallback = opts.exec_fallback,
            prep = function() return { 1, 2, 3, 4 } end,
            exec = function(_, x)
              if x == 1 then pf.sleep(0.01); error("item 1 fails") end
              pf.sleep(1)
            end }
          assert.truthy(has(error_of(n.run, n, {}), "item 1 fails"))
        end
        check_later_errors()
      end)
      restore()
      assert.same({}, seen)
    end)
  end
end)

describe("a __close of a failed or cancelled task", function()
  it("cannot wait, and says why", function()
    local err_in_close
    pf.run(function()
      local t = pf.spawn(function()
        local _ <close> = closer(function()
          err_in_close = select(2, pcall(pf.sleep, 0.001))
        end)
        pf.sleep(100)
      end)
      pf.sleep(0.001)
      t:cancel()
    end)
    assert.truthy(has(err_in_close, "pf.sleep: cannot wait in a __close of a task "
                                    .. "that failed or was cancelled"), err_in_close)
  end)

  it("can wait when the block ends normally or an error is caught in the task", function()
    local log = {}
    pf.run(function()
      do
        local _ <close> = closer(function() pf.sleep(0.001); log[#log + 1] = "normal" end)
      end
      pcall(function()
        local _ <close> = closer(function() pf.sleep(0.001); log[#log + 1] = "caught" end)
        error("x")
      end)
    end)
    assert.same({ "normal", "caught" }, log)
  end)
end)

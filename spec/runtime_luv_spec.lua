-- API.md §3: pf.await, and the loop shared with luv.
local pf = require "pocketflow"
local uv = require "luv"

local function has(s, sub)
  return type(s) == "string" and s:find(sub, 1, true) ~= nil
end

-- a one-shot luv timer that calls fn and closes itself
local function after(ms, fn)
  local t = uv.new_timer()
  t:start(ms, 0, function()
    t:close()
    fn()
  end)
  return t
end

describe("the loop shared with luv", function()
  it("runs luv callbacks while pf.run runs", function()
    local fired = false
    pf.run(function()
      after(5, function() fired = true end)
      pf.sleep(0.03)
    end)
    assert.is_true(fired)
  end)

  it("lets pf.run wait for tasks a luv callback spawned", function()
    local log = {}
    pf.run(function()
      after(5, function()
        pf.spawn(function() pf.sleep(0.01); log[#log + 1] = "spawned from luv" end)
      end)
      pf.sleep(0.01)
      log[#log + 1] = "main"
    end)
    assert.are.same({ "main", "spawned from luv" }, log)
  end)

  it("does not resume tasks from a uv.run made inside a task", function()
    local log, warned = {}, {}
    local saved = pf.on_warning
    pf.on_warning = function(msg) warned[#warned + 1] = msg end
    pf.run(function()
      pf.spawn(function() log[#log + 1] = "other" end)
      uv.run("nowait")
      log[#log + 1] = "after nowait"
      uv.run()
      log[#log + 1] = "after default"
    end)
    pf.on_warning = saved
    assert.are.same({ "after nowait", "after default", "other" }, log)
    assert.are.equal(2, #warned)
    assert.truthy(has(warned[1], "uv.run"))
  end)

  it("leaves no active handle behind", function()
    pf.run(function() pf.sleep(0.001) end)
    assert.are.equal(false, uv.loop_alive())
  end)
end)

describe("pf.await", function()
  it("returns resume's arguments from a luv timer", function()
    local r = table.pack(pf.run(function()
      return pf.await(function(resume) after(5, function() resume("a", nil, 3) end) end)
    end))
    assert.are.equal(3, r.n)
    assert.are.equal("a", r[1])
    assert.is_nil(r[2])
    assert.are.equal(3, r[3])
  end)

  it("turns uv.fs_stat into a wait", function()
    local path = os.getenv("PF_SRC") and (os.getenv("PF_SRC") .. "/spec/runtime_luv_spec.lua")
                 or "spec/runtime_luv_spec.lua"
    local err, st = pf.run(function()
      return pf.await(function(cb) uv.fs_stat(path, cb) end)
    end)
    assert.is_nil(err)
    assert.are.equal("file", st.type)
    assert.is_true(st.size > 0)
  end)

  it("gives uv.fs_stat's error for a missing file", function()
    local err, st = pf.await(function(cb) uv.fs_stat("/nonexistent/pocketflow/x", cb) end)
    assert.truthy(has(err, "ENOENT"))
    assert.is_nil(st)
  end)

  it("works when resume is called inside the setup function", function()
    local r = table.pack(pf.run(function()
      local a, b = pf.await(function(resume) assert.is_true(resume(1, 2)) end)
      return a, b, pf.await(function(resume) resume() end)
    end))
    assert.are.same({ 1, 2, n = 2 }, r)
  end)

  it("ignores a second call of resume", function()
    local second
    local r = table.pack(pf.run(function()
      local v = table.pack(pf.await(function(resume)
        after(2, function()
          assert.is_true(resume("first"))
          second = resume("second")
        end)
      end))
      pf.sleep(0.005)
      return table.unpack(v, 1, v.n)
    end))
    assert.are.same({ "first", n = 1 }, r)
    assert.is_false(second)
  end)

  it("ignores a resume kept from an earlier wait", function()
    pf.run(function()
      local kept
      assert.are.equal("one", pf.await(function(resume) kept = resume; resume("one") end))
      local v = pf.await(function(resume)
        assert.is_false(kept("stale"))
        after(2, function() resume("two") end)
      end)
      assert.are.equal("two", v)
    end)
  end)

  it("ignores resume after the task was cancelled", function()
    local resume_fn, steps, late = nil, 0, nil
    pf.run(function()
      local h = pf.spawn(function()
        steps = steps + 1
        pf.await(function(resume) resume_fn = resume end)
        steps = steps + 1
      end)
      pf.sleep(0.002)
      h:cancel()
      late = resume_fn("late")
      pf.sleep(0.005)
      assert.truthy(has(select(2, pcall(h.wait, h)), "cancelled"))
    end)
    assert.is_false(late)
    assert.are.equal(1, steps)
  end)

  it("raises the setup function's error, and its resume no longer counts", function()
    pf.run(function()
      local kept
      local ok, err = pcall(pf.await, function(resume) kept = resume; error("setup boom") end)
      assert.is_false(ok)
      assert.truthy(has(err, "setup boom"))
      assert.is_false(kept("stale"))
      pf.sleep(0)
      local v = pf.await(function(resume) after(1, function() resume("fresh") end) end)
      assert.are.equal("fresh", v)
    end)
  end)

  it("many awaits on luv timers overlap", function()
    local t0, n = pf.now(), 0
    pf.run(function()
      for _ = 1, 200 do
        pf.spawn(function()
          pf.await(function(resume) after(30, resume) end)
          n = n + 1
        end)
      end
    end)
    assert.are.equal(200, n)
    assert.is_true(pf.now() - t0 < 1)
  end)
end)

describe("waiting inside a luv callback", function()
  it("raises 'not inside a pocketflow task'", function()
    local results = {}
    pf.run(function()
      pf.await(function(resume)
        after(1, function()
          for _, f in ipairs({
            function() pf.sleep(0.01) end,
            function() pf.await(function() end) end,
            function() pf.gather({ function() end }) end,
            function() pf.timeout(1, function() end) end,
            function() pf.run(function() end) end,
            function() local h = pf.spawn(function() pf.sleep(0.01) end); h:wait() end,
          }) do
            results[#results + 1] = table.pack(pcall(f))
          end
          resume()
        end)
      end)
    end)
    assert.are.equal(6, #results)
    for _, r in ipairs(results) do
      assert.is_false(r[1])
      assert.truthy(has(r[2], "not inside a pocketflow task"), r[2])
    end
  end)
end)

-- a fresh Lua state: runs 'code' with lua5.4, returns its exit status and
-- output (stderr included)
local function lua_process(code)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(code)
  f:close()
  -- Under busted the child inherits ignored signals 32 and 33, and
  -- LeakSanitizer's tracer then crashes at exit ("Tracer caught signal
  -- 11"); the same child run from a shell is leak-clean. Leaks stay
  -- checked in the spec process itself.
  local env = os.getenv("PF_MODE") == "asan" and "ASAN_OPTIONS=detect_leaks=0 " or ""
  local p = assert(io.popen(env .. "lua5.4 " .. path .. " 2>&1"))
  local out = p:read("a")
  local ok, _, status = p:close()
  os.remove(path)
  return ok and 0 or status, out
end

describe("a process using pocketflow", function()
  it("shares luv's own loop when luv was required first", function()
    local status, out = lua_process([[
      local uv = require "luv"
      local pf = require "pocketflow"
      local fired = false
      local t = uv.new_timer()
      t:start(2, 0, function() t:close(); fired = true end)
      local v = pf.await(function(resume) uv.fs_stat(".", resume) end)
      pf.sleep(0.01)
      assert(v == nil and fired)
      print("ok")
    ]])
    assert.are.equal(0, status, out)
    assert.are.equal("ok\n", out)
  end)

  it("exits cleanly with tasks never run, and closes their variables", function()
    local status, out = lua_process([[
      local pf = require "pocketflow"
      package.loaded["pocketflow"], package.loaded["pocketflow.core"] = nil, nil
      local pf2 = require "pocketflow"
      pf2.run(function()
        pf2.spawn(function()
          local c <close> = setmetatable({}, { __close = function() print("closed") end })
          pf2.await(function() end)
        end)
        pf.spawn(function() end)
      end)
    ]])
    -- the stranded task is cancelled by the deadlock check: pf.run raised
    assert.are_not.equal(0, status)
    assert.truthy(has(out, "closed"))
    assert.truthy(has(out, "deadlock"))
    status, out = lua_process([[
      local pf = require "pocketflow"
      pf.spawn(function()
        local c <close> = setmetatable({}, { __close = function() print("closed at exit") end })
        pf.sleep(10)
      end)
      pf.spawn(function() print("never started") end):cancel()
      require("luv").run("nowait")  -- the first task starts and sleeps
      print("exiting")
    ]])
    assert.are.equal(0, status, out)
    assert.are.equal("exiting\nclosed at exit\n", out)
  end)
end)

-- uv.walk takes every handle it meets for one of luv's: pocketflow's
-- handles (idle, timer, exec's process and pipes) are hidden from it.
describe("uv.walk beside pocketflow", function()
  local body = [[
    local handles = {}
    local function walk()
      local n = 0
      uv.walk(function(h) n = n + 1; handles[#handles + 1] = tostring(h) end)
      return n
    end
    local mine = uv.new_timer()
    mine:start(100000, 0, function() end)
    local during
    pf.run(function()
      local sleeper = pf.spawn(function() pf.sleep(0.2) end)
      local exec = pf.spawn(function() return pf.exec({ "sleep", "0.1" }) end)
      pf.sleep(0.02)
      during = walk()
      sleeper:cancel()
      exec:wait()
    end)
    print("during " .. during)
    print("after " .. walk())
    uv.walk(function(h) if not h:is_closing() then h:close() end end)
    uv.run()
    print("alive " .. tostring(uv.loop_alive()))
  ]]
  for _, order in ipairs({ "pocketflow first", "luv first" }) do
    it("sees only luv's handles, " .. order, function()
      local head = order == "pocketflow first"
        and 'local pf = require "pocketflow"; local uv = require "luv"\n'
        or 'local uv = require "luv"; local pf = require "pocketflow"\n'
      local status, out = lua_process(head .. body)
      assert.are.equal(0, status, out)
      assert.are.equal("during 1\nafter 1\nalive false\n", out)
    end)
  end
end)

-- The after_each of support/hygiene.lua, which every spec file runs under
-- (busted_env.lua installs it), fails a spec that leaves a task or a
-- handle behind. Each case is a spec file of its own, run by a busted of
-- its own, the way spec/run runs the real ones.
local core = require "pocketflow.core"
local hygiene = require "support.hygiene"
local src = os.getenv("PF_SRC") or "."

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function slurp(p)
  local f = assert(io.open(p, "rb")); local s = f:read("a"); f:close(); os.remove(p); return s
end

-- runs one spec (the body of an `it`) under busted and the helper;
-- returns busted's output (stdout and stderr) and its exit code
local function run_spec(body)
  local base = os.tmpname()
  local file, out = base .. ".lua", base .. ".out"
  local f = assert(io.open(file, "w"))
  f:write('local pf = require "pocketflow"\nlocal uv = require "luv"\n',
    'describe("a fixture", function()\n  it("runs", function()\n',
    body, '\n  end)\nend)\n')
  f:close()
  local _, _, code = os.execute(("cd %s && lua5.4 /usr/bin/busted --output=plainTerminal "
    .. "--helper=spec/support/busted_env.lua %s >%s 2>&1 </dev/null")
    :format(q(src), q(file), q(out)))
  os.remove(file)
  os.remove(base)
  return slurp(out), code
end

describe("the check after every spec", function()
  it("fails a spec that leaves a task that never ran", function()
    local out, code = run_spec("pf.spawn(function() end)")
    assert.are_not.equal(0, code)
    assert.matches("left after the spec: 1 task%(s%) not ended, 0 handle%(s%) active", out)
    -- the spec passed; the check after it is busted's error
    assert.matches("1 success / 0 failures / 1 error", out, 1, true)
    assert.matches("the spec: [^\n]*:%d+: runs", out)
  end)

  it("fails a spec that leaves a luv timer started", function()
    local out, code = run_spec("uv.new_timer():start(60000, 0, function() end)")
    assert.are_not.equal(0, code)
    assert.matches("left after the spec: 0 task%(s%) not ended, 1 handle%(s%) active", out)
  end)

  it("fails a spec that leaves handles open, stopped but not closed", function()
    local out, code = run_spec("uv.new_timer(); uv.new_idle()")
    assert.are_not.equal(0, code)
    assert.matches("0 handle%(s%) active, 2 handle%(s%) open", out)
  end)

  it("passes a spec whose handles close in its last loop turn", function()
    local out, code = run_spec([[
      pf.run(function()
        assert(not pcall(pf.exec, { "/nonexistent/pocketflow-hygiene" }))
      end)
      local t = uv.new_timer(); t:start(10, 0, function() end); t:close()]])
    assert.equal(0, code, out)
    assert.matches("1 success / 0 failures / 0 errors", out, 1, true)
  end)

  it("counts this process's tasks and handles, and nothing is left here", function()
    local tasks, active, open = hygiene.counts()
    assert.equal(0, tasks)
    assert.equal(0, active)
    local pf = require "pocketflow"
    pf.run(function()
      local t = pf.spawn(function() pf.exec{ "sleep", "30" } end)
      pf.sleep(0.2)
      local n, a, o = core.debug_counts()
      assert.equal(2, n)                -- this task and the one in pf.exec
      assert.is_true(a >= 3, "active: " .. a)   -- the process and its pipes
      assert.is_true(o >= a, "open: " .. o)
      t:cancel()
    end)
    assert.equal(0, (core.debug_counts()))
    assert.is_true(open <= 1)
  end)
end)

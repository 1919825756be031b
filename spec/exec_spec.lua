-- pf.exec: subprocesses through pipes, waiting in the task.
local pf = require "pocketflow"

-- valgrind is slow: the 100 MB output shrinks to 10 MB there
local BIG = os.getenv("PF_MODE") == "valgrind" and 10000000 or 100000000

describe("pf.exec", function()
  it("returns code, signal, stdout and stderr", function()
    local r = pf.exec({ "sh", "-c", "echo out; echo err >&2; exit 3" })
    assert.same({ code = 3, signal = 0, stdout = "out\n", stderr = "err\n" }, r)
  end)

  it("looks argv[1] up on PATH and passes arguments as they are", function()
    local r = pf.exec({ "printf", "%s|", "a b", "$HOME", "'q'" })
    assert.equal("a b|$HOME|'q'|", r.stdout)
    assert.equal(0, r.code)
  end)

  it("feeds opts.stdin", function()
    local r = pf.exec({ "tr", "a-z", "A-Z" }, { stdin = "hello\nworld" })
    assert.equal("HELLO\nWORLD", r.stdout)
  end)

  it("survives a child that does not read its input", function()
    local r = pf.exec({ "true" }, { stdin = ("x"):rep(1000000) })
    assert.equal(0, r.code)
  end)

  it("gives the child no input without opts.stdin", function()
    assert.equal("", pf.exec({ "cat" }).stdout)
  end)

  it("runs in opts.cwd", function()
    assert.equal("/tmp\n", pf.exec({ "pwd" }, { cwd = "/tmp" }).stdout)
  end)

  it("replaces the environment with opts.env", function()
    local r = pf.exec({ "/usr/bin/env" }, { env = { FOO = "bar", N = "1" } })
    local lines = {}
    for l in r.stdout:gmatch("[^\n]+") do lines[#lines + 1] = l end
    table.sort(lines)
    assert.same({ "FOO=bar", "N=1" }, lines)
  end)

  it("reads " .. BIG .. " bytes of stdout without deadlock", function()
    local r = pf.exec({ "head", "-c", tostring(BIG), "/dev/zero" })
    assert.equal(0, r.code)
    assert.equal(BIG, #r.stdout)
  end)

  it("reads big stdout and stderr at once", function()
    local r = pf.exec({ "sh", "-c", "head -c 3000000 /dev/zero >&2; head -c 2000000 /dev/zero" })
    assert.equal(3000000, #r.stderr)
    assert.equal(2000000, #r.stdout)
  end)

  it("reports the signal that killed the child", function()
    local r = pf.exec({ "sh", "-c", "kill -9 $$" })
    assert.equal(9, r.signal)
  end)

  it("kills the child at opts.timeout and raises a timeout error", function()
    local t0 = pf.now()
    local ok, err = pcall(pf.exec, { "sleep", "10" }, { timeout = 0.2 })
    assert.is_false(ok)
    assert.truthy(err:find("timeout"))
    assert.truthy(err:find("sleep"))
    assert.is_true(pf.now() - t0 < 2)
  end)

  it("does not wait on a grandchild that keeps the pipes after a timeout", function()
    local t0 = pf.now()
    local ok, err = pcall(pf.exec, { "sh", "-c", "sleep 3 & sleep 3" }, { timeout = 0.2 })
    assert.is_false(ok)
    assert.truthy(err:find("timeout"))
    assert.is_true(pf.now() - t0 < 2)
  end)

  it("raises an error naming a program that cannot start", function()
    local ok, err = pcall(pf.exec, { "no-such-program-pf" })
    assert.is_false(ok)
    assert.truthy(err:find("no-such-program-pf", 1, true))
    ok, err = pcall(pf.exec, { "pwd" }, { cwd = "/no/such/dir" })
    assert.is_false(ok)
    assert.truthy(err:find("pwd", 1, true))
  end)

  it("checks its arguments", function()
    assert.has_error(function() pf.exec("ls") end)
    assert.has_error(function() pf.exec({}) end)
    assert.has_error(function() pf.exec({ "ls" }, { stdin = 1 }) end)
    assert.has_error(function() pf.exec({ "ls" }, { timeout = -1 }) end)
    assert.has_error(function() pf.exec({ "ls", {} }) end)
  end)

  it("runs children concurrently from many tasks", function()
    local t0 = pf.now()
    local outs = pf.gather((function()
      local fns = {}
      for i = 1, 10 do
        fns[i] = function() return pf.exec({ "sh", "-c", "sleep 0.5; echo " .. i }).stdout end
      end
      return fns
    end)())
    for i = 1, 10 do assert.equal(i .. "\n", outs[i]) end
    assert.is_true(pf.now() - t0 < 4.5)  -- one after the other: >= 5 s
  end)

  it("kills the child when its task is cancelled", function()
    local tmp = os.tmpname()
    pf.run(function()
      local t = pf.spawn(function()
        pf.exec({ "sh", "-c", "sleep 0.3; echo late > " .. tmp })
      end)
      pf.sleep(0.05)
      t:cancel()
      pf.sleep(0.5)
    end)
    local f = io.open(tmp)
    local s = f:read("a")
    f:close()
    os.remove(tmp)
    assert.equal("", s)
  end)
end)

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
    -- a barrier, not a time bound: each child waits until all 10 have
    -- started, which never happens if they run one after another
    local f = os.tmpname()
    local fns = {}
    for i = 1, 10 do
      fns[i] = function()
        return pf.exec({ "sh", "-c", 'echo x >> "$1"; n=0; '
          .. 'while [ "$(wc -l < "$1")" -lt 10 ]; do sleep 0.05; n=$((n+1)); '
          .. '[ $n -gt 1200 ] && exit 1; done; echo ' .. i, "sh", f }).stdout
      end
    end
    local outs = pf.gather(fns)
    os.remove(f)
    for i = 1, 10 do assert.equal(i .. "\n", outs[i]) end
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

local left = require "support.leftovers"

describe("pf.exec leaves nothing running", function()
  -- a child that starts a grandchild and waits on another: every one of
  -- them has the marker in its argv
  local function family(m)
    return { "sh", "-c", "sleep " .. m .. " & sleep " .. m .. "; :" }
  end

  it("bounds by opts.timeout a grandchild that keeps stdout open", function()
    local m = left.marker()
    local t0 = pf.now()
    local ok, err = pcall(pf.exec, { "sh", "-c", "sleep " .. m .. " & echo hi" },
                          { timeout = 0.3 })
    assert.is_true(pf.now() - t0 < 15)   -- it waited 30 s before
    assert.is_false(ok)
    assert.truthy(err:find("pf.exec: sh: timeout after 0.3 s", 1, true))
    assert.equal(0, left.wait_gone(m))
  end)

  it("kills children and grandchildren at a timeout", function()
    local m = left.marker()
    local ok = pcall(pf.exec, family(m), { timeout = 0.3 })
    assert.is_false(ok)
    assert.equal(0, left.wait_gone(m))
  end)

  it("kills children and grandchildren when the task is cancelled", function()
    local m = left.marker()
    pf.run(function()
      local t = pf.spawn(pf.exec, family(m))
      left.wait_for(m, 2, pf.sleep)
      t:cancel()
    end)
    assert.equal(0, left.wait_gone(m))
  end)

  for _, case in ipairs({ { "TERM", 143 }, { "INT", 130 } }) do
    it("the binary ends its children on SIG" .. case[1] .. " and exits "
       .. case[2], function()
      local m = left.marker()
      local pidfile = os.tmpname()
      local script = ('require("pocketflow").exec({ "sh", "-c", "sleep %s & sleep %s; :" })'):format(m, m)
      pf.run(function()
        local t = pf.spawn(pf.exec, { "sh", "-c", 'echo $$ > "$1"; exec "$2" -e "$3"',
                                      "sh", pidfile, os.getenv("PF_BIN"), script })
        left.wait_for(m, 2, pf.sleep)
        local f = assert(io.open(pidfile))
        local pid = f:read("n")
        f:close()
        assert(require("luv").kill(pid, "sig" .. case[1]:lower()))
        local r = t:wait()
        assert.equal(case[2], r.code)
      end)
      os.remove(pidfile)
      assert.equal(0, left.wait_gone(m))
    end)
  end

  it("raises at opts.max_output and kills the child", function()
    local m = left.marker()
    local ok, err = pcall(pf.exec, { "yes", m }, { max_output = 100000 })
    assert.is_false(ok)
    assert.truthy(err:find("pf.exec: yes: output over opts.max_output; the "
                           .. "child was killed", 1, true))
    assert.equal(0, left.wait_gone(m))
    -- stderr has the limit too; exactly the limit is fine
    ok = pcall(pf.exec, { "sh", "-c", "head -c 5000 /dev/zero >&2" },
               { max_output = 4999 })
    assert.is_false(ok)
    local r = pf.exec({ "head", "-c", "5000", "/dev/zero" }, { max_output = 5000 })
    assert.equal(5000, #r.stdout)
  end)

  it("raises on a NUL byte in argv, env or cwd", function()
    local cases = {
      { { "echo", "a\0b" }, nil, "pf.exec: argv[2] contains a NUL byte" },
      { { "ec\0ho" }, nil, "pf.exec: argv[1] contains a NUL byte" },
      { { "true" }, { env = { A = "x\0y" } }, "pf.exec: opts.env.A contains a NUL byte" },
      { { "true" }, { env = { ["A\0B"] = "x" } }, "pf.exec: an opts.env name contains a NUL byte" },
      { { "true" }, { cwd = "/tmp\0/x" }, "pf.exec: opts.cwd contains a NUL byte" },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(pf.exec, c[1], c[2])
      assert.is_false(ok)
      assert.truthy(err:find(c[3], 1, true), err)
    end
    -- stdin is data: NUL bytes go through
    assert.equal("a\0b", pf.exec({ "cat" }, { stdin = "a\0b" }).stdout)
  end)

  it("names each bad option in its error", function()
    local cases = {
      { "x", {}, "bad argument #1" },
      { { "ls" }, 5, "bad argument #2" },
      { {}, {}, "pf.exec: argv must not be empty" },
      { { "ls", {} }, {}, "pf.exec: argv[2] must be a string (got table)" },
      { { "ls" }, { stdin = 1 }, "pf.exec: opts.stdin must be a string (got number)" },
      { { "ls" }, { cwd = true }, "pf.exec: opts.cwd must be a string (got boolean)" },
      { { "ls" }, { env = "A=1" }, "pf.exec: opts.env must be a table (got string)" },
      { { "ls" }, { env = { "A=1" } }, "pf.exec: opts.env has a number key" },
      { { "ls" }, { env = { A = {} } }, "pf.exec: opts.env.A must be a string (got table)" },
      { { "ls" }, { env = { ["A=B"] = "1" } }, "pf.exec: opts.env name 'A=B' is empty or contains '='" },
      { { "ls" }, { env = { [""] = "1" } }, "is empty or contains '='" },
      { { "ls" }, { timeout = -1 }, "pf.exec: opts.timeout must be a positive number (got -1)" },
      { { "ls" }, { timeout = 0 }, "pf.exec: opts.timeout must be a positive number (got 0)" },
      { { "ls" }, { timeout = "1" }, "pf.exec: opts.timeout must be a positive number (got string)" },
      { { "ls" }, { max_output = 1.5 }, "pf.exec: opts.max_output must be a positive integer (got 1.5)" },
      { { "ls" }, { max_output = 0 }, "pf.exec: opts.max_output must be a positive integer (got 0)" },
      { { "ls" }, { timout = 1 }, "pf.exec: unknown option 'timout'" },
      { { "ls" }, { [1] = "x" }, "pf.exec: opts has a number key" },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(pf.exec, c[1], c[2])
      assert.is_false(ok)
      assert.truthy(err:find(c[3], 1, true), ("%s\n  wanted: %s"):format(err, c[3]))
    end
  end)

  it("feeds stdin in chunks and counts it right", function()
    local data = ("0123456789abcdef"):rep(65536 * 3)   -- 3 MiB
    local r = pf.exec({ "wc", "-c" }, { stdin = data })
    assert.equal(#data, tonumber(r.stdout))
    assert.equal("0\n", pf.exec({ "wc", "-c" }, { stdin = "" }).stdout:match("%d+\n"))
  end)

  it("survives cancellation at random points", function()
    math.randomseed(8013)
    local rounds = os.getenv("PF_MODE") == "valgrind" and 15 or 60
    local m = left.marker()
    local fds0 = left.fds()
    local mem
    for round = 1, rounds do
      pf.run(function()
        local ts = {}
        for i = 1, 4 do
          local kind = math.random(3)
          ts[i] = pf.spawn(function()
            if kind == 1 then
              return pf.exec(family(m))
            elseif kind == 2 then
              return pf.exec({ "sh", "-c", "cat; sleep " .. m }, { stdin = ("x"):rep(200000) })
            else
              return pf.exec({ "sh", "-c", "head -c 300000 /dev/zero; sleep " .. m },
                             { timeout = 5 })
            end
          end)
        end
        pf.sleep(math.random() * 0.05)
        for i = 1, 4 do
          if math.random(2) == 1 then pf.sleep(math.random() * 0.01) end
          ts[i]:cancel()
        end
      end)
      assert.equal(0, left.wait_gone(m))
      assert.equal(fds0, left.settle_fds(fds0, pf.sleep))
      collectgarbage("collect")
      if round == 5 then mem = collectgarbage("count") end
    end
    -- later calls work, and the Lua heap did not grow with the rounds
    assert.equal("ok\n", pf.exec({ "echo", "ok" }).stdout)
    collectgarbage("collect")
    assert.is_true(collectgarbage("count") < mem + 256)
  end)
end)

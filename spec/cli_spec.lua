-- The pocketflow binary (API.md §1); examples_spec runs the examples with it.
local bin = assert(os.getenv("PF_BIN"), "PF_BIN: the built pocketflow binary")
local src = os.getenv("PF_SRC") or "."

-- runs a shell command; returns stdout, stderr and the exit code
local function sh(cmd, input)
  local out, err = os.tmpname(), os.tmpname()
  local full = cmd .. " >" .. out .. " 2>" .. err
  if input then
    local inp = os.tmpname()
    local f = assert(io.open(inp, "w")); f:write(input); f:close()
    full = full .. " <" .. inp
  else
    full = full .. " </dev/null"
  end
  local _, _, code = os.execute(full)
  local function slurp(p)
    local f = assert(io.open(p)); local s = f:read("a"); f:close(); os.remove(p); return s
  end
  return slurp(out), slurp(err), code
end

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

describe("the pocketflow binary", function()
  it("prints its version with -v", function()
    local out, _, code = sh(bin .. " -v")
    assert.equal(0, code)
    assert.matches("^pocketflow %d+%.%d+%.%d+ %(Lua 5%.4", out)
  end)

  it("prints usage on stdout with -h and --help, status 0", function()
    for _, opt in ipairs{ "-h", "--help" } do
      local out, err, code = sh(bin .. " " .. opt)
      assert.equal(0, code)
      assert.matches("^usage: %S+ %[options%] %[script %[args%.%.%.%]%]\n", out)
      assert.matches("\n  %-i ", out)
      assert.equal("", err)
    end
  end)

  it("takes --version as -v", function()
    local v = sh(bin .. " -v")
    local out, _, code = sh(bin .. " --version")
    assert.equal(0, code)
    assert.equal(v, out)
  end)

  it("names an unknown option as lua does, with usage on stderr and status 1", function()
    for _, opt in ipairs{ "--x", "-Z", "-vx", "--helpme" } do
      local out, err, code = sh(bin .. " " .. opt .. " -e 'print(1)'")
      assert.equal(1, code)
      assert.equal("", out)
      assert.matches("^%S+: unrecognized option '" .. opt:gsub("%p", "%%%0") .. "'\nusage:", err)
    end
    local _, err, code = sh(bin .. " -e")
    assert.equal(1, code)
    assert.matches("^%S+: '%-e' needs argument\nusage:", err)
  end)

  it("predefines pf in -e chunks", function()
    local out, err, code = sh(bin .. " -e " .. q("pf.sleep(0.01) print(pf == require 'pocketflow')"))
    assert.equal(0, code, err)
    assert.equal("true\n", out)
  end)

  it("enters the REPL after a script with -i, reading plain lines with no terminal", function()
    local out, err, code = sh(bin .. " -i -e 'x = 41'", "x = x + 1\npf.sleep(0.01)\nx, 'two'\nerror('b' .. 'ad')\nfor i = 1, 2 do\nio.write(i)\nend\n")
    assert.equal(0, code, err)
    assert.matches("^pocketflow %S+ %(Lua 5%.4[^\n]*\n", out)
    assert.matches("> 42\ttwo\n", out)
    assert.matches("> >> >> 12> \n$", out)   -- the loop took three lines
    local _, n = err:gsub("stdin:1: bad", "")
    assert.equal(1, n)
  end)

  it("has the module preloaded and runs -e chunks as tasks, in order", function()
    local out, _, code = sh(bin .. " -e " .. q("local pf = require 'pocketflow'; pf.sleep(0.01); io.write('a')")
                            .. " -e " .. q("io.write('b')"))
    assert.equal(0, code)
    assert.equal("ab", out)
  end)

  it("sets arg and ... as lua does", function()
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write("print(arg[0], select('#', ...), arg[1], arg[2], arg[-1] ~= nil, ...)")
    f:close()
    local out, _, code = sh(bin .. " " .. script .. " x y")
    os.remove(script)
    assert.equal(0, code)
    assert.matches("^" .. script:gsub("%p", "%%%0") .. "\t2\tx\ty\ttrue\tx\ty\n$", out)
  end)

  it("loads libraries with -l name and -l g=mod", function()
    local out, _, code = sh(bin .. " -l string -l J=pocketflow -e " .. q("print(type(string.format), type(J.Node))"))
    assert.equal(0, code)
    assert.equal("function\ttable\n", out)
  end)

  it("reads the script from stdin with -", function()
    local out, _, code = sh(bin .. " -", "local pf = require 'pocketflow' pf.sleep(0.01) print('from stdin')")
    assert.equal(0, code)
    assert.equal("from stdin\n", out)
  end)

  it("reads the script from stdin when it is not a terminal", function()
    local out, _, code = sh(bin, "print(1 + 1)")
    assert.equal(0, code)
    assert.equal("2\n", out)
  end)

  it("exits 1 with the message and a traceback when the script fails", function()
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write("local function inner() error('kaboom') end\ninner()\n")
    f:close()
    local _, err, code = sh(bin .. " " .. script)
    os.remove(script)
    assert.equal(1, code)
    assert.matches(":1: kaboom", err)
    assert.matches("stack traceback:", err)
    assert.matches(":2: in", err)
    assert.is_nil(err:find("userdata:", 1, true))   -- reported once
    _, err, code = sh(bin .. " -e " .. q("error('bang')"))
    assert.equal(1, code)
    assert.matches("^[^\n]*: %(command line%):1: bang\nstack traceback:", err)
    assert.is_nil(err:find("userdata:", 1, true))
  end)

  it("exits when no task is left, after spawned tasks end", function()
    local out, _, code = sh(bin .. " -e " .. q([[
      local pf = require 'pocketflow'
      pf.spawn(function() pf.sleep(0.05) print('late') end)
      print('main done')]]))
    assert.equal(0, code)
    assert.equal("main done\nlate\n", out)
  end)

  it("runs flows at the top level of a script", function()
    local out, _, code = sh(bin .. " -e " .. q([[
      local pf = require 'pocketflow'
      local n = pf.Node{ exec = function() pf.sleep(0.01) return 'ok' end,
                         post = function(_, _, _, e) return e end }
      print(pf.Flow(n):run({}))]]))
    assert.equal(0, code)
    assert.equal("ok\n", out)
  end)
end)

-- runs the binary on a pseudo-terminal (util-linux script), input typed ahead
local function pty(input)
  -- (script itself is not instrumented: no ASan preload for it)
  local out, err, code = sh("env -u LD_PRELOAD script -qec " .. q(bin) .. " /dev/null", input)
  return out:gsub("\r", ""), err, code
end

describe("the REPL on a terminal", function()
  it("runs statements, reports an error once, recalls a line with arrow-up", function()
    local out, err, code = pty("x = 40 + 2\nprint(x)\nerror('bo' .. 'om')\n"
                               .. "print(('4'):rep(3))\n\27[A\n")
    assert.equal(0, code, err)
    assert.matches("\n42\n", out)
    local _, n = out:gsub("stdin:1: boom", "")
    assert.equal(1, n, out)
    -- the task's own traceback, no wrapper frame, no second report
    assert.matches("stdin:1: boom\nstack traceback:\n\t%[C%]: in function 'error'\n"
                   .. "\tstdin:1: in main chunk\n> ", out)
    assert.is_nil(out:find("function: 0x", 1, true), out)
    _, n = out:gsub("\n444\n", "")
    assert.equal(2, n, out)   -- typed, then recalled from the history
  end)

  it("has pf predefined and values of expressions printed", function()
    local out, err, code = pty("pf.sleep(0.01)\npf == require('pocketflow'), 1 + 1\n")
    assert.equal(0, code, err)
    assert.matches("\ntrue\t2\n", out)
  end)
end)

describe("coroutine.yield on a task's own thread", function()
  it("raises Lua's error where it is called, so pcall catches it", function()
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write([[
print(pcall(coroutine.yield, 1, 2))
local co = coroutine.wrap(function(a) local b = coroutine.yield(a + 1) return b * 2 end)
print(co(1), co(10))
local t = pf.spawn(function() pf.sleep(0.01) coroutine.yield() end)
local ok, err = pcall(t.wait, t)
print(ok, (err:gsub("\n.*", "")))
-- the thread of a task whose yield error nothing caught is not reused
-- with hooks disabled
local h = pf.spawn(function()
  local n = 0
  debug.sethook(function() n = n + 1 end, "c")
  math.abs(1)
  debug.sethook()
  return n
end)
print(h:wait() > 0)
-- a hook of the task's own survives the yield's error
local calls = 0
debug.sethook(function() calls = calls + 1 end, "c")
print(pcall(coroutine.yield))
math.abs(1)
debug.sethook()
print(calls >= 2)
]])
    f:close()
    local out, err, code = sh(bin .. " " .. script)
    os.remove(script)
    assert.equal(0, code, err)
    assert.equal(table.concat({
      "false\tattempt to yield from outside a coroutine",
      "2\t20",
      "false\tattempt to yield from outside a coroutine",
      "true",
      "false\tattempt to yield from outside a coroutine",
      "true", "" }, "\n"), out)
  end)

  it("ends the main chunk with that error and its place when uncaught", function()
    local _, err, code = sh(bin .. " -e " .. q("local x = 1\ncoroutine.yield(x)"))
    assert.equal(1, code)
    assert.matches("^%S+: attempt to yield from outside a coroutine\nstack traceback:\n"
                   .. "\t%[C%]: in function 'coroutine.yield'\n\t%(command line%):2: in main chunk", err)
  end)

  it("does the same under pf.run from lua5.4", function()
    local pf = require "pocketflow"
    local ok, err = pf.run(function() return pcall(coroutine.yield) end)
    assert.is_false(ok)
    assert.equal("attempt to yield from outside a coroutine", err)
  end)
end)

describe("out of memory", function()
  -- ulimit -v cannot hold an ASan binary (its shadow memory): there one
  -- allocation over 300 MB fails instead, as the growing array makes
  local function limited(cmd)
    if os.getenv("PF_MODE") == "asan" then
      return "ASAN_OPTIONS=$ASAN_OPTIONS:allocator_may_return_null=1:max_allocation_size_mb=300 " .. cmd
    end
    return "ulimit -v 400000; " .. cmd
  end

  it("is reported once, by the script that caught it, and the exit is 0", function()
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write([[
local pf = require "pocketflow"
local function eat() local t = {} for i = 1, math.maxinteger do t[i] = i end end
print(pcall(eat))
local t = pf.spawn(eat)
local ok, err = pcall(t.wait, t)
print(ok, (err:gsub("\n.*", "")))
collectgarbage()
print("ok")
]])
    f:close()
    local out, err, code = sh(limited(bin .. " " .. script))
    os.remove(script)
    assert.equal("false\tnot enough memory\nfalse\tnot enough memory\nok\n", out)
    assert.is_nil(err:find("not enough memory", 1, true), err)
    assert.equal(0, code, err)
  end)
end)

-- The pocketflow binary (API.md §1) and the examples it runs.
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

  it("prints usage with -h", function()
    local _, err, code = sh(bin .. " -h")
    assert.equal(0, code)
    assert.matches("usage:", err)
  end)

  it("rejects an unknown option with usage and status 1", function()
    local _, err, code = sh(bin .. " -Z")
    assert.equal(1, code)
    assert.matches("usage:", err)
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

describe("the examples", function()
  it("hello.lua runs the seed's weather flow", function()
    local out, err, code = sh(bin .. " " .. src .. "/examples/hello.lua")
    assert.equal(0, code, err)
    assert.equal(table.concat({
      "Starting weather flow...",
      "WeatherFetcherNode: Preparing to fetch weather for London.",
      "WeatherFetcherNode: Calling weather API for London...",
      "WeatherFetcherNode: Got weather: Sunny in London",
      "WeatherFetcherNode: Weather report stored in shared.",
      "Weather flow finished.",
      'Final shared data: {city_name = "London", weather_report = "Sunny in London"}',
    }, "\n") .. "\n", out)
  end)

  it("parallel.lua overlaps its calls", function()
    local out, err, code = sh(bin .. " " .. src .. "/examples/parallel.lua")
    assert.equal(0, code, err)
    assert.matches("fetched 20 items: item%-01 %.%.%. item%-20", out)
    local elapsed = tonumber(out:match("elapsed ([%d.]+) s"))
    assert.is_true(elapsed >= 0.39 and elapsed < 1.5, "elapsed " .. tostring(elapsed))
  end)

  it("agent.lua loops decide/act until it answers", function()
    local out, err, code = sh(bin .. " " .. src .. "/examples/agent.lua")
    assert.equal(0, code, err)
    assert.matches("answer: Lua 5%.4 is 6 years old%.", out)
    assert.matches("steps: search, calculate, answer\n$", out)
  end)

  it("hello.lua also runs from plain lua5.4 with the module", function()
    local out, err, code = sh("lua5.4 " .. src .. "/examples/hello.lua")
    assert.equal(0, code, err)
    assert.matches("Weather flow finished%.", out)
  end)
end)

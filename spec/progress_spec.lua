-- Progress (API.md §7): the formatting, the terminal's redrawn lines at
-- most 10 times a second and the summary, plain lines elsewhere, JSON
-- lines, a function, PF_PROGRESS and NO_COLOR, warnings that do not tear
-- a bar, and the real thing under a pseudo-terminal (script(1)).
local pf = require "pocketflow"
local core = require "pocketflow.core"
local events = require "pocketflow.events"
local progress = require "pocketflow.progress"

describe("progress formatting", function()
  it("formats times, rates and percentages", function()
    assert.equal("0:00", progress.format_time(0))
    assert.equal("0:24", progress.format_time(24.4))
    assert.equal("1:00", progress.format_time(59.6))
    assert.equal("1:02:05", progress.format_time(3725))
    assert.equal("?:??", progress.format_time(nil))
    assert.equal("?:??", progress.format_time(math.huge))
    assert.equal("?:??", progress.format_time(0 / 0))
    assert.equal("41.2/s", progress.format_rate(41.24))
    assert.equal("0.0/s", progress.format_rate(0))
    assert.equal("0.0/s", progress.format_rate(0 / 0))
    assert.equal("1234/s", progress.format_rate(1234.4))
    assert.equal("99%", progress.format_percent(999, 1000))
    assert.equal("100%", progress.format_percent(1000, 1000))
    assert.equal("0%", progress.format_percent(0, 7))
    assert.equal("100%", progress.format_percent(0, 0))
  end)

  it("makes the summary line of the contract and the running line", function()
    local p = { node = "Translate", done = 1000, failed = 3, total = 1000, rate = 41.2, elapsed = 24.3 }
    assert.equal("Translate 1000/1000 100% 41.2/s 0:24 failed 3", progress.line(p, true))
    p = { node = "Translate", done = 412, failed = 0, total = 1000, rate = 41.2, eta = 14.2 }
    assert.equal("Translate 412/1000 41% 41.2/s eta 0:14", progress.line(p, false))
    assert.equal("Translate [########------------] 412/1000 41% 41.2/s eta 0:14",
                 progress.bar_line(p, false, 20, false))
    assert.equal("Translate [\27[32m########------------\27[0m] 412/1000 41% 41.2/s eta 0:14",
                 progress.bar_line(p, false, 20, true))
    assert.equal("batch 5 2.5/s", progress.line({ done = 5, rate = 2.5 }, false))
  end)

  it("lets PF_PROGRESS override the mode", function()
    local f = function() end
    assert.is_false(progress.resolve(true, "0"))
    assert.is_false(progress.resolve(f, "0"))
    assert.is_true(progress.resolve(nil, "1"))
    assert.equal(f, progress.resolve(f, "1"))
    assert.equal("json", progress.resolve(true, "json"))
    assert.equal("json", progress.resolve(nil, "json"))
    assert.is_false(progress.resolve(nil, ""))
    assert.is_true(progress.resolve(true, ""))
  end)

  it("refuses a bad mode", function()
    assert.has_error(function() progress.new("yes", { env = "" }) end,
      'progress must be true, "json" or a function (got "yes")')
    assert.has_error(function() progress.new(5, { env = "" }) end,
      'progress must be true, "json" or a function (got number)')
    assert.equal(0, events.count())
  end)
end)

-- a sink writing into a table, on a clock the test moves
local function rig(mode, tty)
  local out, clock = {}, { t = 0 }
  local bars = progress.new(mode, {
    env = "", tty = tty, color = false,
    write = function(s) out[#out + 1] = s end,
    clock = function() return clock.t end,
  })
  return bars, out, clock
end

-- the walk's first update of a batch has done = 0, at the batch's start
local function feed(clock, n, step, extra)
  core.event{ type = "progress", node = "Translate", done = 0, failed = 0, total = n,
              in_flight = 2, t = clock.t }
  for i = 1, n do
    clock.t = clock.t + step
    local ev = { type = "progress", node = "Translate", done = i, failed = i > n - 3 and 3 - (n - i) or 0,
                 total = n, in_flight = 2, t = clock.t }
    if extra then extra(i, ev) end
    core.event(ev)
  end
end

describe("progress sinks", function()
  after_each(function() assert.equal(0, events.count()) end)

  it("redraws a terminal line at most 10 times a second, then prints the summary", function()
    local bars, out, clock = rig(true, true)
    feed(clock, 128, 1 / 128)    -- one second of 128 updates
    bars:close()
    local s = table.concat(out)
    local draws = select(2, s:gsub("Translate %[", ""))
    assert.is_true(draws >= 5 and draws <= 11, "draws: " .. draws)
    assert.matches("\r\27%[K", s)
    assert.matches("\r\27%[KTranslate 128/128 100%% 128/s 0:01 failed 3\n$", s)
  end)

  it("keeps one line per running batch", function()
    local bars, out, clock = rig(true, true)
    clock.t = 1
    core.event{ type = "progress", node = "A", span_id = "a", done = 1, total = 10, t = 1 }
    core.event{ type = "progress", node = "B", span_id = "b", done = 1, total = 10, t = 1 }
    local s = table.concat(out)
    assert.matches("A %[%#%#%-*%] 1/10 10%%.*\nB %[", s)
    out[#out + 1] = "|"
    core.event{ type = "progress", node = "A", span_id = "a", done = 10, total = 10, t = 2 }
    bars:close()
    s = table.concat(out)
    -- the two lines were cleared (one line up), A's summary printed, B redrawn
    assert.matches("|\r\27%[K\27%[1A\27%[KA 10/10 100%%[^\n]*\nB %[", s)
  end)

  it("prints plain lines every 10 s and at the end, without control codes", function()
    local bars, out, clock = rig(true, false)
    feed(clock, 200, 0.125)    -- 25 s
    bars:close()
    assert.equal(3, #out)
    for i = 1, 3 do assert.is_nil(out[i]:find("\27", 1, true)) end
    assert.equal("Translate 80/200 40% 8.0/s eta 0:15\n", out[1])
    assert.equal("Translate 160/200 80% 8.0/s eta 0:05\n", out[2])
    assert.equal("Translate 200/200 100% 8.0/s 0:25 failed 3\n", out[3])
  end)

  it("writes a JSON object per update with \"json\"", function()
    local bars, out, clock = rig("json", true)
    feed(clock, 5, 0.5)
    bars:close()
    assert.equal(6, #out)
    local last = pf.json.decode(out[6])
    assert.equal(5, last.done); assert.equal(5, last.total); assert.equal(3, last.failed)
    assert.equal(2, last.in_flight); assert.equal("Translate", last.node)
    assert.is_true(last.final)
    assert.is_false(pf.json.decode(out[1]).final)
    assert.equal(0, pf.json.decode(out[1]).done)
    assert.equal(2, pf.json.decode(out[3]).rate)
  end)

  it("calls a function with p", function()
    local got = {}
    local bars, _, clock = rig(function(p) got[#got + 1] = p end, true)
    feed(clock, 4, 1, function(i, ev) if i == 2 then ev.eta = 99 end end)
    bars:close()
    assert.equal(5, #got)
    assert.same({ node = "Translate", done = 2, failed = 1, total = 4, in_flight = 2,
                  elapsed = 2, rate = 1, eta = 99 }, got[3])
  end)

  it("clears the bars around a warning and draws them again", function()
    local bars, out, clock = rig(true, true)
    local saved = pf.on_warning
    pf.on_warning = function(msg) out[#out + 1] = "WARN " .. msg .. "\n" end
    feed(clock, 10, 0.2, function(i) if i == 5 then core.warn("careful") end end)
    pf.on_warning = saved
    bars:close()
    local s = table.concat(out)
    -- the line is cleared before the warning, which starts a clean line,
    -- and the bar comes back after it
    assert.matches("\r\27%[KWARN careful\nTranslate %[", s)
  end)
end)

-- runs a shell command: what it wrote (stdout and stderr), and its status
local function run(cmd)
  local out = os.tmpname()
  local ok = os.execute(cmd .. " >" .. out .. " 2>&1")
  local f = assert(io.open(out, "rb")); local s = f:read("a"); f:close()
  os.remove(out)
  return s, ok
end

describe("progress on a real terminal", function()
  local bin = assert(os.getenv("PF_BIN"))
  local src = os.getenv("PF_SRC") or "."
  local feeder = src .. "/spec/support/progress_feed.lua"

  local function under_pty(env)
    -- script runs the command on a new pseudo-terminal and copies what it
    -- writes there to our stdout
    -- (script and env are not instrumented: no sanitizer runtime preloaded;
    -- the binary of an ASan build has its own)
    return run(("env -u LD_PRELOAD %s script -qec '%s %s' /dev/null </dev/null"):format(env, bin, feeder))
  end

  it("draws a bar, a clean warning and the summary", function()
    local s, ok = under_pty("PF_PROGRESS= NO_COLOR=")
    assert.is_true(ok, s)
    print("\n---- the terminal's bytes ----\n" .. s:gsub("\27", "\\e"):gsub("\r", "\\r"):sub(-700))
    assert.matches("Translate %[\27%[32m#*%-*\27%[0m%] %d+/1000", s)
    assert.matches("\r\27%[Kpocketflow: warning: halfway there\r?\n", s)
    assert.matches("\r\27%[KTranslate 1000/1000 100%% [%d.]+/s %d+:%d%d failed 3\r?\n", s)
    assert.matches("end\r?\n$", s)
    local draws = select(2, s:gsub("Translate %[", ""))
    assert.is_true(draws >= 2, "draws: " .. draws)
  end)

  it("honours NO_COLOR and PF_PROGRESS", function()
    local s = under_pty("NO_COLOR=1 PF_PROGRESS=")
    assert.is_nil(s:find("\27[32m", 1, true))
    assert.matches("Translate %[#*%-*%]", s)
    s = under_pty("PF_PROGRESS=0")
    assert.is_nil(s:find("Translate", 1, true))
    assert.matches("halfway there", s)
    s = under_pty("PF_PROGRESS=json")
    assert.is_nil(s:find("\27", 1, true))
    local n = select(2, s:gsub('"type":"progress"', ""))
    assert.equal(0, n)   -- p has no type: the fields of the contract
    assert.equal(1001, select(2, s:gsub('"total":1000', "")))
  end)

  it("prints the plain summary when stderr is not a terminal", function()
    local s, ok = run(("env -u LD_PRELOAD PF_PROGRESS= %s %s"):format(bin, feeder))
    assert.is_true(ok, s)
    assert.is_nil(s:find("\27", 1, true))
    assert.equal("pocketflow: warning: halfway there\n"
      .. s:match("Translate 1000/1000 100%% [%d.]+/s %d+:%d%d failed 3\n") .. "end\n", s)
  end)
end)

-- Progress of real batches: the walk's progress events, through the
-- class option and the run option.
describe("progress of a real run", function()
  after_each(function() assert.equal(0, events.count()) end)

  local function pbatch(n, fail_at)
    local P = pf.ParallelBatchNode:extend("Translate")
    function P:prep() local t = {} for i = 1, n do t[i] = i end return t end
    function P:exec(x)
      pf.sleep(0.001 * (x % 3))
      if x == fail_at then error("item " .. x .. " failed", 0) end
      return x
    end
    return P
  end

  it("calls a batch class's progress function from the start to the end", function()
    local got = {}
    local P = pbatch(20)
    local p = P{ max_concurrency = 4, progress = function(pr) got[#got + 1] = pr end }
    pf.Flow{ name = "Main", start = p }:run({})
    assert.equal(21, #got)
    assert.equal(0, got[1].done)
    for i, pr in ipairs(got) do
      assert.equal(i - 1, pr.done)
      assert.equal(20, pr.total)
      assert.equal(0, pr.failed)
      assert.equal("Translate", pr.node)
      -- nothing listened when Main started: the path starts at the batch
      assert.same({ "Translate" }, pr.path)
      assert.is_true(pr.in_flight >= 0 and pr.in_flight <= 4)
      assert.is_number(pr.rate); assert.is_number(pr.elapsed)
    end
    assert.equal(0, got[21].in_flight)
  end)

  it("counts the items that fell back as failed, in a batch and a parallel batch", function()
    for _, base in ipairs({ pf.BatchNode, pf.ParallelBatchNode }) do
      local got = {}
      local B = base:extend("Translate")
      function B:prep() return { 1, 2, 3, 4, 5 } end
      function B:exec(x)
        if x % 2 == 0 then pf.sleep(0.001); error("item " .. x .. " failed", 0) end
        return x
      end
      function B:exec_fallback() return "n/a" end
      local b = B{ progress = function(pr) got[#got + 1] = pr end }
      local shared = {}
      function B:post(sh, _, res) sh.res = res end
      pf.Flow{ name = "Main", start = b }:run(shared)
      assert.same({ 1, "n/a", 3, "n/a", 5 }, shared.res)
      assert.equal(5, got[#got].done)
      assert.equal(2, got[#got].failed)
      for i = 2, #got do assert.is_true(got[i].failed >= got[i - 1].failed) end
    end
  end)

  it("shows a batch class's own batches only, and closes its bars when the batch fails", function()
    local got = {}
    local P = pbatch(10, 7)
    P.progress = function(pr) got[#got + 1] = pr.node end
    local Q = pbatch(3)
    local q = Q{ name = "Other" }
    local p = P()
    local _ = q >> p
    local ok, err = pcall(function() pf.Flow{ start = q }:run({}) end)
    assert.is_false(ok)
    assert.matches("^item 7 failed", err)
    assert.is_true(#got >= 1 and #got <= 10)
    for _, n in ipairs(got) do assert.equal("Translate", n) end
  end)

  it("closes a batch class's bars when the run is cancelled", function()
    local P = pf.ParallelBatchNode:extend("Slow")
    function P:prep() return { 1, 2 } end
    function P:exec() pf.sleep(10) end
    local seen = 0
    local p = P{ progress = function() seen = seen + 1 end }
    pf.run(function()
      local t = pf.spawn(function() p:run({}) end)
      for _ = 1, 1000 do if seen > 0 then break end pf.sleep(0.001) end
      t:cancel()
    end)
    assert.equal(1, seen)
  end)

  it("reports every batch of a run with the run option", function()
    local got = {}
    local B = pf.BatchNode:extend("Seq")
    function B:prep() return { 1, 2, 3 } end
    local b = B()
    local _ = b >> pbatch(5)()
    local other = {}
    pf.run(function()
      local o = pf.spawn(function()
        pbatch(4)():run({}, { progress = function(pr) other[#other + 1] = pr.node end })
      end)
      pf.Flow{ name = "Main", start = b }:run({}, { progress = function(pr)
        got[#got + 1] = ("%s %d/%d"):format(pr.node, pr.done, pr.total) end })
      o:wait()
    end)
    assert.same({ "Seq 0/3", "Seq 1/3", "Seq 2/3", "Seq 3/3", "Translate 0/5", "Translate 1/5",
                  "Translate 2/5", "Translate 3/5", "Translate 4/5", "Translate 5/5" }, got)
    assert.equal(5, #other)   -- the other run's batch, to its own option only
  end)

  it("refuses a bad progress option at construction", function()
    local P = pf.ParallelBatchNode:extend("P")
    assert.has_error(function() P{ progress = "yes" } end,
      'P: progress must be true, "json" or a function (got "yes")')
    assert.has_error(function() pf.BatchFlow{ name = "BF", progress = 3 } end,
      'BF: progress must be true, "json" or a function (got 3)')
    local ok, err = pcall(function() P{ progress = {} } end)
    assert.is_false(ok)
    assert.matches("^spec/progress_spec%.lua:%d+: P: progress must be", err)
    -- a plain node's progress field is its own business
    assert.is_not_nil(pf.Node{ progress = "anything" })
  end)
end)

describe("progress of a real run, from the binary", function()
  local bin = assert(os.getenv("PF_BIN"))

  local function script(body)
    local path = os.tmpname()
    local f = assert(io.open(path, "w")); f:write(body); f:close()
    return path
  end

  local src = [[
local pf = require "pocketflow"
local P = pf.ParallelBatchNode:extend("Translate")
function P:prep() local t = {} for i = 1, 60 do t[i] = i end return t end
function P:exec(x) pf.sleep(0.005) return x end
P{ max_concurrency = 8, progress = arg[1] == "class" or nil }:run({})
io.stderr:write("end\n")
]]

  it("draws a class's bar on a terminal and its summary", function()
    local path = script(src)
    local s, ok = run(("env -u LD_PRELOAD PF_PROGRESS= NO_COLOR=1 script -qec '%s %s class' /dev/null </dev/null")
                      :format(bin, path))
    os.remove(path)
    assert.is_true(ok, s)
    print("\n---- the terminal's bytes ----\n" .. s:gsub("\27", "\\e"):gsub("\r", "\\r"):sub(-300))
    assert.matches("Translate %[#*%-*%] %d+/60", s)
    assert.matches("\r\27%[KTranslate 60/60 100%% [%d.]+/s %d+:%d%d\r?\n", s)
    assert.matches("end\r?\n$", s)
  end)

  it("follows PF_PROGRESS for any run, and PF_PROGRESS=0 turns a class's off", function()
    local path = script(src)
    local s, ok = run(("PF_PROGRESS=json %s %s"):format(bin, path))
    assert.is_true(ok, s)
    local n = 0
    for line in s:gmatch("[^\n]+") do
      if line:sub(1, 1) == "{" then
        local p = pf.json.decode(line)
        assert.equal(n, p.done)
        assert.equal(60, p.total)
        n = n + 1
      end
    end
    assert.equal(61, n)
    s, ok = run(("PF_PROGRESS=0 %s %s class"):format(bin, path))
    os.remove(path)
    assert.is_true(ok, s)
    assert.equal("end\n", s)
  end)
end)

-- tools/runs.lua diagram: a run's state drawn on its flow, the flow taken
-- from the user's script (which is loaded, not run).
local pf = require "pocketflow"

local BIN, SRC = os.getenv("PF_BIN"), os.getenv("PF_SRC")
local TOOL = SRC .. "/tools/runs.lua"

local util = require "support.util"
local rm_db, write = util.rm_db, util.write

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

-- a script that builds Main: Draft >> Review (a flow: Approve) >> Send,
-- with Drop on "drop"; 'tail' is what it does after
local function script(path, tail)
  write(path, [[
local pf = require "pocketflow"
local draft = pf.Node{ name = "Draft" }
local approve = pf.Node{ name = "Approve" }
local review = pf.Flow{ name = "Review", start = approve }
local send, drop = pf.Node{ name = "Send" }, pf.Node{ name = "Drop" }
local _ = draft >> review >> send
_ = review - "drop" >> drop
local flow = pf.Flow{ name = "Main", start = draft }
]] .. tail)
end

-- the mermaid ids of the marked nodes: { current = "n2,n3", ... }
local function classes(text)
  local out = {}
  for ids, mark in text:gmatch("\n  class ([%w,]+) (%w+)") do out[mark] = ids end
  return out
end

describe("tools/runs.lua diagram", function()
  local db, app, marker

  before_each(function()
    db, app = os.tmpname(), os.tmpname() .. ".lua"
    marker = app .. ".ran"
    rm_db(db)
    local s = pf.sqlite(db)
    local function run(id, status, paths)
      s:_begin(id)
      for i, path in ipairs(paths) do s:_save(id, i, path, pf.serialize({})) end
      s:_finish(id, status)
    end
    -- checkpoints as a run saves them: the path of the node to run next,
    -- the flow alone at the start and at the end
    run("cut", "interrupted", { "Main", "Main > Review", "Main > Review > Approve" })
    run("bad", "failed", { "Main", "Main > Review" })
    run("ok", "done", { "Main", "Main > Review", "Main > Review > Approve", "Main > Send", "Main" })
    s:close()
  end)

  after_each(function()
    rm_db(db)
    os.remove(app)
    os.remove(marker)
  end)

  local function tool(...)
    return pf.exec({ BIN, TOOL, db, ... }, { timeout = 60 })
  end

  it("draws the run's state on the flow the script runs, without running it", function()
    -- the script prints, opens a store and runs a flow that writes a
    -- file: none of it happens
    script(app, ([[
print("the script talks")
function draft.exec() pf.write_file(%q, "ran") end
flow:run({}, { store = pf.sqlite(%q) })
]]):format(marker, marker .. ".db"))
    local r = tool("diagram", "cut", "--script", app)
    assert.equal(0, r.code, r.stderr)
    assert.matches("^flowchart TD\n", r.stdout)
    assert.not_matches("talks", r.stdout)
    assert.is_false(exists(marker))
    assert.is_false(exists(marker .. ".db"))
    assert.matches('n3%["Approve"%]', r.stdout)
    -- Draft done; Review and Approve in it current
    assert.same({ done = "n1", current = "n2,n3" }, classes(r.stdout))
    assert.equal("run cut: interrupted, step 3, next Main > Review > Approve\n", r.stderr)
  end)

  it("takes the flow the script returns", function()
    script(app, "return flow\n")
    local r = tool("diagram", "cut", "--script", app, "--step", "2", "--format", "dot",
                   "--direction", "LR")
    assert.equal(0, r.code, r.stderr)
    assert.matches('^digraph "Main" {\n  rankdir=LR;', r.stdout)
    assert.matches('subgraph cluster_n2 {\n    style="filled,rounded"; fillcolor="#fff3c4"', r.stdout)
  end)

  it("marks done and failed runs", function()
    script(app, "return flow\n")
    local r = tool("diagram", "ok", "--script", app)
    assert.equal(0, r.code, r.stderr)
    assert.same({ done = "n1,n2,n3,n4" }, classes(r.stdout))   -- all but Drop
    r = tool("diagram", "bad", "--script", app)
    assert.equal(0, r.code, r.stderr)
    assert.same({ done = "n1", failed = "n2" }, classes(r.stdout))
  end)

  it("marks the nodes whose questions a real interrupted run waits on", function()
    -- Pre, then a parallel batch flow PerDoc (Q >> R) whose walk 2 asks in Q
    local real = os.tmpname()
    rm_db(real)
    write(app, ([[
local pf = require "pocketflow"
local F = pf.ParallelBatchFlow:extend("PerDoc")
function F:prep() return { { doc = "x" }, { doc = "y" } } end
local Q = pf.Node:extend("Q")
function Q:exec() if self.params.doc == "y" then return pf.interrupt("?") end end
local q = Q()
q:next(pf.Node{ name = "R" })
local pre = pf.Node{ name = "Pre" }
pre:next(F{ start = q })
local flow = pf.Flow{ name = "Main", start = pre }
local _, run = flow:run({}, { store = pf.sqlite(%q), run_id = "real" })
print(run.status, run.interrupts[1].id)
]]):format(real))
    local r = pf.exec({ BIN, app }, { timeout = 60 })
    assert.same({ 0, "interrupted\tMain/PerDoc[2]/Q#1\n" }, { r.code, r.stdout })
    r = pf.exec({ BIN, TOOL, real, "diagram", "real", "--script", app }, { timeout = 60 })
    assert.equal(0, r.code, r.stderr)
    assert.matches('subgraph n2%["PerDoc %(parallel batch%)"%]\n    n3%["Q"%]\n    n4%["R"%]', r.stdout)
    -- Pre and walk 1's R done; PerDoc and Q (asking in walk 2) current
    assert.same({ done = "n1,n4", current = "n2,n3" }, classes(r.stdout))
    rm_db(real)
  end)

  it("says what is wrong", function()
    script(app, "local x = 1\n")
    local r = tool("diagram", "cut", "--script", app)
    assert.same({ 1, ("runs: %s made no flow: return it from the script, or run it\n"):format(app) },
                { r.code, r.stderr })
    script(app, "error('broken script')\n")
    r = tool("diagram", "cut", "--script", app)
    assert.equal(1, r.code)
    assert.matches("^runs: " .. app:gsub("%p", "%%%0") .. " failed: .*broken script\n$", r.stderr)
    r = tool("diagram", "cut")
    assert.same({ 1, "runs: diagram needs --script FILE: the program that makes the flow\n" },
                { r.code, r.stderr })
    script(app, "return flow\n")
    r = tool("diagram", "nope", "--script", app)
    assert.same({ 1, "runs: no run 'nope'\n" }, { r.code, r.stderr })
    r = tool("diagram", "cut", "--script", app, "--format", "png")
    assert.same({ 1, "runs: --format: unknown value png\n" }, { r.code, r.stderr })
    r = tool("diagram", "cut", "--script", app, "--step", "x")
    assert.same({ 1, "runs: --step must be a number (got x)\n" }, { r.code, r.stderr })
    r = tool("diagram", "cut", "--script", app, "--colour", "red")
    assert.same({ 1, "runs: unknown option --colour\n" }, { r.code, r.stderr })
    r = tool("diagram", "--script", app)
    assert.equal(2, r.code)
    assert.matches("^usage: ", r.stderr)
    r = tool("diagram", "cut", "--script", app .. ".missing")
    assert.equal(1, r.code)
    assert.matches("^runs: cannot open .*%.missing", r.stderr)
  end)
end)

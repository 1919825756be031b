-- Misuse that used to crash the process (issue 8, items 1 and 8): each
-- case here segfaulted before its fix, so a regression kills the spec run.
local pf = require "pocketflow"
local core = require "pocketflow.core"

-- ---------------------------------------------------------------------
-- Batch flows and batch nodes run over a copy of the array prep returned.

-- A batch flow class whose walks record the params they saw and then
-- call mutate(items) once; with hook_maxc, reading max_concurrency
-- (after the items were checked, before any walk starts) mutates too.
local function batch_flow(class, maxc, mutate, hook_maxc)
  local seen, items, mutated = {}, nil, false
  local function once()
    if not mutated then mutated = true; mutate(items) end
  end
  local Step = pf.Node:extend()
  function Step:exec() once() end
  function Step:post() seen[#seen + 1] = self.params.a end
  local F = class:extend()
  function F:prep()
    items = { { a = 1 }, { a = 2 }, { a = 3 } }
    return items
  end
  F.max_concurrency = maxc
  if hook_maxc then
    rawset(F, "__index", function(_, k)
      if k == "max_concurrency" then once() end
      return F[k]
    end)
  end
  return F{ start = Step() }, seen, function() return items end
end

local mutations = {
  replace = function(items) items[2] = 5 end,
  append = function(items) items[#items + 1] = 7 end,
  replace_all = function(items) for i = 1, #items do items[i] = "x" end end,
}

for _, cname in ipairs({ "BatchFlow", "ParallelBatchFlow" }) do
  for _, maxc in ipairs({ false, 1, 2 }) do
    for mname, mutate in pairs(mutations) do
      for _, hook in ipairs({ false, true }) do
        local title = ("%s%s: a walk that does %s on prep's array%s"):format(
          cname, maxc and (" (max_concurrency " .. maxc .. ")") or "",
          mname, hook and " (while max_concurrency is read)" or "")
        it(title .. " runs the params prep returned", function()
          local f, seen, items = batch_flow(pf[cname], maxc or nil, mutate, hook)
          assert.is_nil(f:run({}))
          table.sort(seen)
          assert.same({ 1, 2, 3 }, seen)
          assert.is_true(#items() >= 3 and items()[2] ~= nil) -- it did change
        end)
      end
    end
  end
end

for _, cname in ipairs({ "BatchNode", "ParallelBatchNode" }) do
  it(cname .. ": an exec that appends to prep's array runs the items prep returned", function()
    local items
    local n = pf[cname]{ max_concurrency = cname == "ParallelBatchNode" and 1 or nil,
      prep = function() items = { 1, 2, 3 }; return items end,
      exec = function(_, x) items[#items + 1] = x; items[1] = "gone"; return x * 10 end,
      post = function(_, shared, prep_res, res) shared.res, shared.prep = res, prep_res end }
    local shared = {}
    n:run(shared)
    assert.same({ 10, 20, 30 }, shared.res)
    assert.equal(items, shared.prep)   -- post still gets prep's own table
    assert.equal(6, #items)
  end)
end

-- ---------------------------------------------------------------------
-- pocketflow.core is reachable: its functions take any arguments.

describe("pocketflow.core with wrong arguments", function()
  local function noop() end
  local values = {
    { "nil", nil }, { "0", 0 }, { "-1", -1 }, { "9", 9 }, { "99", 99 },
    { "maxinteger", math.maxinteger }, { "mininteger", math.mininteger },
    { "nan", 0 / 0 }, { "0.5", 0.5 }, { "''", "" },
    { "missing path", "/nonexistent-pocketflow-dir/x" },
    { "{}", {} }, { "{1, 2}", { 1, 2 } }, { "{{}}", { {} } }, { "{''}", { "" } },
    { "{url = 1}", { url = 1 } }, { "true", true }, { "function", noop },
    { "thread", coroutine.create(noop) }, { "io.stdout", io.stdout },
    { "raising __index", setmetatable({}, { __index = function() error("idx") end }) },
    { "fake node", setmetatable({}, { __pfkind = 8 }) },
  }
  local nv = #values
  -- sleep and timeout take seconds: a positive garbage number would
  -- only make them wait
  local waits = { sleep = true, timeout = true }
  local function garbage_calls(name, each)
    local step3, step4 = 2, 3
    if os.getenv("PF_MODE") == "valgrind" then step3, step4 = 7, 8 end
    local function call(...)
      local n = select("#", ...)
      local first = ...
      if n > 0 and waits[name] and type(first) == "number" and first > 0 then return end
      each(...)
    end
    call()
    for i = 1, nv do call(values[i][2]) end
    for i = 1, nv do for j = 1, nv do call(values[i][2], values[j][2]) end end
    for i = 1, nv do for j = 1, nv do for k = 1, nv, step3 do
      call(values[i][2], values[j][2], values[k][2])
    end end end
    for i = 1, nv, step4 do for j = 1, nv, step4 do for k = 1, nv, step4 do
      for l = 1, nv, step4 do
        call(values[i][2], values[j][2], values[k][2], values[l][2])
      end
    end end end
  end

  -- write_file takes a number as a path: the calls run in a directory
  -- of their own, removed afterwards
  local function in_temp_dir(fn)
    local uv = require "luv"
    local cwd = assert(uv.cwd())
    local dir = assert(uv.fs_mkdtemp("/tmp/pf-robust-XXXXXX"))
    assert(uv.chdir(dir))
    local ok, err = pcall(fn)
    assert(uv.chdir(cwd))
    local scan = uv.fs_scandir(dir)
    while true do
      local name = uv.fs_scandir_next(scan)
      if not name then break end
      assert(uv.fs_unlink(dir .. "/" .. name))
    end
    assert(uv.fs_rmdir(dir))
    if not ok then error(err, 0) end
  end

  it("returns or raises for every function, never crashes", function()
    local names = {}
    for k, v in pairs(core) do
      if type(v) == "function" then names[#names + 1] = k end
    end
    table.sort(names)
    assert.is_true(#names >= 15)
    local calls, raised = 0, 0
    in_temp_dir(function()
      for _, name in ipairs(names) do
        garbage_calls(name, function(...)
          calls = calls + 1
          if not pcall(core[name], ...) then raised = raised + 1 end
        end)
      end
    end)
    core.set_warn(function(msg) return pf.on_warning(msg) end)
    assert.is_true(calls > 5000)
    assert.is_true(raised > calls / 2)
    -- and the engine still works
    local n = pf.Node{ exec = function(_, x) pf.sleep(0); return x end,
                       prep = function() return 4 end,
                       post = function(_, s, _, r) s.r = r end }
    local s = {}
    n:run(s)
    assert.equal(4, s.r)
  end)

  it("core.machine runs every kind on any arguments, or raises", function()
    local calls = 0
    local step = os.getenv("PF_MODE") == "valgrind" and 5 or 1
    for kind = -1, 9 do
      for i = 1, nv, step do for j = 1, nv do for k = 1, nv, 2 do
        calls = calls + 1
        pcall(core.machine, kind, values[i][2], values[j][2], values[k][2])
      end end end
    end
    core.set_warn(function(msg) return pf.on_warning(msg) end)
    assert.is_true(calls > 1000)
  end)

  it("core.machine checks its kind, self and params", function()
    local ok, err = pcall(core.machine, 8, 1, 2, 3)
    assert.is_false(ok)
    assert.matches("bad argument #2 .*table expected", err)
    ok, err = pcall(core.machine, 99, {})
    assert.is_false(ok)
    assert.matches("bad node kind 99", err)
    ok, err = pcall(core.machine, math.mininteger, {})
    assert.is_false(ok)
    assert.matches("bad node kind", err)
    -- 7 is the walk: its params must be a table
    ok, err = pcall(core.machine, 7, { start_node = pf.Node() }, {}, 5)
    assert.is_false(ok)
    assert.matches("bad argument #4 .*table expected", err)
  end)

  it("only the six node kinds run as nodes", function()
    for _, kind in ipairs({ 0, -1, 7, 8, 99, math.maxinteger, 2 ^ 32 }) do
      local Fake = pf.Node:extend()
      rawset(Fake, "__pfkind", kind)
      local ok, err = pcall(core.run_node, Fake(), {})
      assert.is_false(ok)
      assert.matches("run: expected a pocketflow node", err)
      -- nor as a flow's successor
      local f = pf.Flow{ start = pf.Node() }
      f.start_node.successors.default = Fake()
      ok, err = pcall(f.run, f, {})
      assert.is_false(ok)
      assert.matches("not a pocketflow node", err)
    end
  end)
end)

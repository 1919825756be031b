-- A random-graph fuzzer for the engine (spec/fuzz_spec.lua runs a short
-- fixed-seed batch, tools/fuzz.lua a long one).
--
--   local fuzz = require "support.fuzz"
--   local stats = fuzz.run(n, seed)   -- n graphs, seeds seed .. seed+n-1
--   stats.graphs, stats.failures (a list of strings; empty when clean)
--
-- Graph i is made from seed+i alone, so `tools/fuzz.lua 1 S` replays the
-- graph that failed with seed S. A graph mixes every node kind, nested up
-- to depth 4, with random retries, waits, fallbacks, and in every phase
-- (prep, exec, post, exec_fallback) errors (strings and tables), sleeps,
-- spawned tasks that are waited for, cancelled or fail, pf.await,
-- timeouts that expire and subgraphs run under a timeout. The graph runs
-- plainly, under an outer pf.timeout, cancelled from outside, or twice at
-- once. Each run must return or raise a value the graph raised (the same
-- object for a table), within a guard timeout; a sequential graph (no
-- parallel class, no timing-based cancel) must leave the same trace twice.
local pf = require "pocketflow"

local fuzz = {}

local MAX_DEPTH = 4
local GUARD = 60          -- seconds: a graph that runs longer has hung

-- xorshift64: the same numbers on every platform, apart from math.random
local function new_rng(seed)
  local s = (seed * 0x9E3779B97F4A7C15) ~ 0x2545F4914F6CDD1D
  if s == 0 then s = 1 end
  return function(n)
    s = s ~ (s << 13)
    s = s ~ (s >> 7)
    s = s ~ (s << 17)
    return (s >> 1) % n + 1
  end
end

local function pick(rand, list) return list[rand(#list)] end

-- what a phase does before its own work
local PHASE_ACTS = {
  "none", "none", "none", "none", "none", "none", "sleep0", "sleep",
  "err_str", "err_tab", "spawn_wait", "spawn_cancel", "spawn_fail",
  "timeout_expire", "timeout_ok", "await", "timeout_sub",
}
-- how exec behaves over its attempts
local EXEC_MODES = { "ok", "ok", "fail_then_ok", "fail_always" }
local FALLBACKS = { "default", "default", "value", "raise", "sleep_value" }

-- every failure is kept: a run with many is cut short by the caller
local function record(ctx, msg)
  local f = ctx.failures
  f[#f + 1] = ("seed %d: %s"):format(ctx.seed, msg)
end

local function check(ctx, ok, what)
  if not ok then record(ctx, "check failed: " .. what) end
end

local function raise(ctx, spec, where)
  local e
  if spec == "str" then
    e = "E:" .. where
  else
    e = { fuzz_error = where }
  end
  ctx.raised[e] = true
  error(e, 0)
end

local function is_timeout(e)
  return type(e) == "string" and e:find("pf%.timeout: timeout after") ~= nil
end

-- The value the graph raised that e is: a table as itself, a string as
-- itself or with lines added after it as it left nodes and tasks (where,
-- traceback; API.md: Errors). Else nil. The raised strings are one line.
local function known(ctx, e)
  if type(e) == "string" then e = e:match("^[^\n]*") end
  if ctx.raised[e] then return e end
  return nil
end

-- Runs one phase's act; 'node' is the generated description.
local function act(ctx, node, phase, what)
  local tr = node.trace
  tr[#tr + 1] = node.id .. "." .. phase .. ":" .. what
  if what == "none" then return end
  if what == "sleep0" then
    pf.sleep(0)
  elseif what == "sleep" then
    pf.sleep(node.sleep)
  elseif what == "err_str" or what == "err_tab" then
    raise(ctx, what == "err_str" and "str" or "tab", node.id .. "." .. phase)
  elseif what == "spawn_wait" then
    local t = pf.spawn(function(x) pf.sleep(node.sleep) return x, 2 end, 41)
    local a, b = t:wait()
    check(ctx, a == 41 and b == 2 and t:status() == "done", "spawned task's results")
  elseif what == "spawn_cancel" then
    local t = pf.spawn(function()
      pf.sleep(0.5)
      record(ctx, "a cancelled task went on")
    end)
    if node.sleep > 0.002 then pf.sleep(0) end
    t:cancel()
    check(ctx, t:status() == "cancelled", "cancelled task's status")
    local ok, e = pcall(t.wait, t)
    check(ctx, not ok and tostring(e):find("task was cancelled", 1, true) ~= nil,
          "waiting for a cancelled task: " .. tostring(e))
  elseif what == "spawn_fail" then
    local e = {}
    local t = pf.spawn(function() pf.sleep(0) error(e) end)
    local ok, got = pcall(t.wait, t)
    check(ctx, not ok and got == e, "a spawned task's table error: " .. tostring(got))
  elseif what == "timeout_expire" then
    local ok, e = pcall(pf.timeout, 0.001, pf.sleep, 5)
    check(ctx, not ok and is_timeout(e), "expired timeout: " .. tostring(e))
  elseif what == "timeout_ok" then
    local ok, v = pcall(pf.timeout, 30, function() pf.sleep(0) return 7 end)
    check(ctx, ok and v == 7, "timeout in time: " .. tostring(v))
  elseif what == "await" then
    local a, b = pf.await(function(resume)
      pf.spawn(function() pf.sleep(0) resume(5, 6) end)
    end)
    check(ctx, a == 5 and b == 6, "pf.await's values")
  elseif what == "timeout_sub" then
    local sub = node.sub
    local ok, e = pcall(pf.timeout, node.sub_limit, sub.run, sub, {})
    check(ctx, ok or is_timeout(e) or known(ctx, e),
          "a subgraph under a timeout raised " .. tostring(e))
  end
end

-- ------------------------------------------------------------ generation

local gen

local function gen_common(ctx, rand, depth, trace, class, allow_sub)
  ctx.nodes = ctx.nodes + 1
  local node = { id = "n" .. ctx.nodes, trace = trace, class = class,
                 sleep = pick(rand, { 0, 0.001, 0.002, 0.005 }), acts = {} }
  for _, phase in ipairs({ "prep", "exec", "post", "fallback" }) do
    local a = pick(rand, PHASE_ACTS)
    if a == "timeout_sub" and not allow_sub then a = "sleep0" end
    -- errors stay rare: a graph with one in every phase would end at once
    if (a == "err_str" or a == "err_tab") and rand(3) > 1 then a = "none" end
    node.acts[phase] = a
  end
  if node.acts.prep == "timeout_sub" or node.acts.exec == "timeout_sub"
     or node.acts.post == "timeout_sub" or node.acts.fallback == "timeout_sub" then
    -- its own trace: how far it gets before the timeout is timing
    node.sub = gen(ctx, rand, depth + 1, {}, true)
    node.sub_limit = pick(rand, { 0.001, 0.003, 0.01, 5 })
    ctx.timed = true
  end
  node.retries = rand(3)
  node.wait = pick(rand, { 0, 0, 0.001 })
  node.exec_mode = pick(rand, EXEC_MODES)
  node.fail_until = rand(3) - 1      -- fail_then_ok fails while cur_retry < it
  node.err = pick(rand, { "str", "tab" })
  node.fallback = pick(rand, FALLBACKS)
  node.action = pick(rand, { "default", "default", "alt", "nowhere", false })
  node.maxc = pick(rand, { false, false, 1, 2 })
  if ctx.verbose then
    print(("  %s%s %s d%d: prep=%s exec=%s(%s, %s until %d) post=%s fallback=%s(%s) "
           .. "retries=%d wait=%s maxc=%s sleep=%s action=%s%s"):format(
      ("  "):rep(depth - 1), node.id, class, depth, node.acts.prep, node.acts.exec,
      node.exec_mode, node.err, node.fail_until, node.acts.post, node.fallback,
      node.acts.fallback, node.retries, node.wait, tostring(node.maxc), node.sleep,
      tostring(node.action), node.sub and (" sub=" .. node.sub_limit) or ""))
  end
  return node
end

-- exec(item) for a node or a batch item: the attempt's act, then a result
-- "r<item>", or an error on the attempts its mode fails
local function make_exec(ctx, node)
  return function(self, item)
    check(ctx, math.type(self.cur_retry) == "integer" and self.cur_retry >= 0
          and self.cur_retry < node.retries, "cur_retry in range")
    act(ctx, node, "exec", node.acts.exec)
    local m = node.exec_mode
    if m == "fail_always" or (m == "fail_then_ok" and self.cur_retry < node.fail_until) then
      raise(ctx, node.err, node.id .. ".exec" .. self.cur_retry)
    end
    return "r" .. tostring(item)
  end
end

local function make_fallback(ctx, node)
  if node.fallback == "default" then return nil end
  return function(_, item, err)
    check(ctx, known(ctx, err) ~= nil, "fallback got a raised error: " .. tostring(err))
    act(ctx, node, "fallback", node.acts.fallback)
    if node.fallback == "raise" then raise(ctx, node.err, node.id .. ".fallback") end
    if node.fallback == "sleep_value" then pf.sleep(0) end
    return "f" .. tostring(item)
  end
end

local function result_ok(res, item)
  return res == "r" .. tostring(item) or res == "f" .. tostring(item)
end

local function action_of(node)
  return node.action or nil
end

local function gen_node(ctx, rand, depth, trace, class, allow_sub)
  local node = gen_common(ctx, rand, depth, trace, class, allow_sub)
  local batch = class ~= "Node"
  local nitems = rand(5) - 1
  local obj = pf[class]{ max_retries = node.retries, wait = node.wait,
                         max_concurrency = batch and node.maxc or nil }
  obj.exec = make_exec(ctx, node)
  obj.exec_fallback = make_fallback(ctx, node)
  function obj.prep(self)
    check(ctx, type(self.params) == "table", "params is a table")
    act(ctx, node, "prep", node.acts.prep)
    if not batch then return "p" .. node.id end
    local items = {}
    for i = 1, nitems do items[i] = node.id .. "i" .. i end
    return items
  end
  function obj.post(_, shared, prep_res, exec_res)
    act(ctx, node, "post", node.acts.post)
    if batch then
      check(ctx, type(exec_res) == "table" and #exec_res == #prep_res,
            node.id .. " batch results")
      for i, item in ipairs(prep_res) do
        check(ctx, result_ok(exec_res[i], item), node.id .. " result " .. i)
      end
    else
      check(ctx, result_ok(exec_res, prep_res), node.id .. " result")
    end
    shared[node.id] = (shared[node.id] or 0) + 1
    return action_of(node)
  end
  return obj, node
end

local function gen_flow(ctx, rand, depth, trace, class, allow_sub)
  local node = gen_common(ctx, rand, depth, trace, class, allow_sub)
  local n = rand(3)
  local children = {}
  for i = 1, n do children[i] = gen(ctx, rand, depth + 1, trace, allow_sub) end
  for i = 1, n - 1 do
    children[i]:next(children[i + 1])
    if i + 2 <= n and rand(2) == 1 then children[i]:next(children[i + 2], "alt") end
  end
  local nparams = rand(4) - 1
  local obj = pf[class]{ start = children[1],
                         max_concurrency = class == "ParallelBatchFlow" and node.maxc or nil }
  obj.params = { [node.id] = true }
  function obj.prep(self)
    check(ctx, type(self.params) == "table", "flow params is a table")
    act(ctx, node, "prep", node.acts.prep)
    if class == "Flow" then return nil end
    local sets = {}
    for i = 1, nparams do sets[i] = { [node.id .. "p"] = i } end
    return sets
  end
  if node.fallback ~= "default" then   -- a custom post, else Flow.post
    function obj.post(_, shared, _, exec_res)
      act(ctx, node, "post", node.acts.post)
      shared[node.id] = tostring(exec_res)
      return action_of(node)
    end
  end
  return obj, node
end

function gen(ctx, rand, depth, trace, allow_sub)
  local kinds = { "Node", "Node", "BatchNode", "Flow", "BatchFlow",
                  "ParallelBatchNode", "ParallelBatchFlow" }
  local nk = #kinds
  if ctx.sequential then nk = 5 end
  if depth >= MAX_DEPTH or ctx.nodes >= ctx.budget then nk = 3 end
  local class = kinds[rand(nk)]
  if class:find("^Parallel") then ctx.parallel = true end
  if class == "Node" or class:find("BatchNode$") then
    return (gen_node(ctx, rand, depth, trace, class, allow_sub))
  end
  return (gen_flow(ctx, rand, depth, trace, class, allow_sub))
end

-- ------------------------------------------------------------------ runs

local MODES = { "plain", "plain", "timeout", "cancel", "twice" }

-- Runs the graph once in 'mode'; returns a line describing the outcome.
local function run_once(ctx, graph, mode, limit)
  local shared = {}
  local function body()
    if mode == "timeout" then
      return pf.timeout(limit, graph.run, graph, shared)
    elseif mode == "cancel" then
      local t = pf.spawn(graph.run, graph, shared)
      if limit > 0.002 then pf.sleep(limit) end
      t:cancel()
      return t:wait()
    elseif mode == "twice" then
      local r = pf.gather({ function() return graph:run({}) end,
                            function() return graph:run(shared) end })
      return r[2]
    end
    return graph:run(shared)
  end
  local ok, res = pcall(pf.run, function()
    return pf.timeout(GUARD, body)
  end)
  if ok then return "ok " .. tostring(res) end
  local e = known(ctx, res)
  if e then return "raised " .. (type(e) == "table" and e.fuzz_error or e) end
  if is_timeout(res) and mode == "timeout" and not tostring(res):find("after 60") then
    return "timeout"
  end
  if mode == "cancel" and tostring(res):find("task was cancelled", 1, true) then
    return "cancelled"
  end
  if is_timeout(res) and tostring(res):find("after 60") then
    record(ctx, ("graph hung (%s mode)"):format(mode))
  else
    record(ctx, ("%s mode: unexpected error %s (%s)"):format(mode, tostring(res), type(res)))
  end
  return "failed"
end

-- Makes and runs graph 'seed'; adds to stats.
local function run_graph(seed, stats)
  local rand = new_rng(seed)
  local ctx = { seed = seed, raised = setmetatable({}, { __mode = "k" }),
                failures = stats.failures, nodes = 0, budget = 4 + rand(12),
                sequential = rand(3) == 1, verbose = stats.verbose }
  if ctx.verbose then print("graph " .. seed) end
  local trace = {}
  local graph = gen(ctx, rand, 1, trace, not ctx.sequential)
  local warnings = {}
  local saved = pf.on_warning
  pf.on_warning = function(msg) warnings[#warnings + 1] = tostring(msg) end
  local det = not ctx.parallel and not ctx.timed
  local mode = det and "plain" or pick(rand, MODES)
  local limit = pick(rand, { 0, 0.001, 0.003, 0.01 })
  if ctx.verbose then print(("  mode %s %s"):format(mode, limit)) end
  local outcome = run_once(ctx, graph, mode, limit)
  if ctx.verbose then print("  => " .. outcome) end
  stats.graphs = stats.graphs + 1
  stats.nodes = stats.nodes + ctx.nodes
  stats[outcome:match("^%a+")] = (stats[outcome:match("^%a+")] or 0) + 1
  if det then
    local first = table.concat(trace, " ") .. " => " .. outcome
    for i = #trace, 1, -1 do trace[i] = nil end
    local again = run_once(ctx, graph, "plain", 0)
    local second = table.concat(trace, " ") .. " => " .. again
    stats.sequential = stats.sequential + 1
    if first ~= second then
      record(ctx, "a sequential graph left two traces:\n  " .. first .. "\n  " .. second)
    end
  end
  pf.on_warning = saved
  for _, w in ipairs(warnings) do
    if w:find("error in error handling", 1, true) then
      record(ctx, "warning: " .. w)
      break
    end
  end
end

function fuzz.run(n, seed, verbose)
  local stats = { graphs = 0, nodes = 0, sequential = 0, failures = {},
                  verbose = verbose }
  for i = 0, n - 1 do run_graph(seed + i, stats) end
  return stats
end

function fuzz.summary(stats)
  return ("%d graphs (%d nodes, %d sequential run twice): %d ok, %d raised, "
          .. "%d timed out, %d cancelled, %d failed"):format(
    stats.graphs, stats.nodes, stats.sequential, stats.ok or 0,
    stats.raised or 0, stats.timeout or 0, stats.cancelled or 0, stats.failed or 0)
end

return fuzz

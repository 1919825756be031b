-- The event bus (API.md §7, Events): pf.on with a filter and sub:off(),
-- pf.emit, the fields the bus fills, spans that follow the task tree,
-- handlers that may not wait, handler errors as warnings, and the flag
-- the walk tests (core.event is the walk's C path, pf_emit).
local pf = require "pocketflow"
local core = require "pocketflow.core"
local events = require "pocketflow.events"
local warnings = require "support.warnings"

local function collect(filter)
  local got = {}
  local sub = pf.on(function(ev) got[#got + 1] = ev end, filter)
  return got, sub
end

describe("pf.on and pf.emit", function()
  after_each(function() assert.equal(0, events.count()) end)

  it("delivers custom events with type, t and data; off() stops them", function()
    local got, sub = collect()
    local t0 = pf.now()
    pf.emit("token", { text = "hi" })
    assert.equal(1, #got)
    assert.equal("token", got[1].type)
    assert.same({ text = "hi" }, got[1].data)
    assert.is_true(got[1].t >= t0 and got[1].t <= pf.now())
    sub:off()
    pf.emit("token", 2)
    assert.equal(1, #got)
    sub:off()   -- twice is harmless
  end)

  it("filters by type", function()
    local got, sub = collect({ "b", "node_end" })
    pf.emit("a"); pf.emit("b"); pf.emit("c")
    core.event{ type = "node_start", node = "N" }
    core.event{ type = "node_end", status = "ok" }
    sub:off()
    assert.equal(2, #got)
    assert.equal("b", got[1].type)
    assert.equal("node_end", got[2].type)
    assert.equal("N", got[2].node)
  end)

  it("raises clear errors for bad arguments", function()
    assert.has_error(function() pf.on(42) end, "pf.on: handler must be a function (got number)")
    assert.has_error(function() pf.on(print, "node_end") end,
      "pf.on: filter must be an array of event types (got string)")
    assert.has_error(function() pf.on(print, { 1 }) end, "pf.on: filter[1] must be a string (got number)")
    assert.has_error(function() pf.emit(nil) end, "pf.emit: type must be a non-empty string (got nil)")
    assert.has_error(function() pf.emit("") end, 'pf.emit: type must be a non-empty string (got "")')
    assert.has_error(function() pf.emit("node_end") end,
      "pf.emit: 'node_end' is an engine event type; give custom events a name of their own")
  end)

  it("turns the walk's flag on only while someone listens", function()
    assert.is_false(core.listening())
    local a = pf.on(function() end)
    local b = pf.on(function() end, { "x" })
    assert.is_true(core.listening())
    a:off()
    assert.is_true(core.listening())
    b:off()
    assert.is_false(core.listening())
    -- with the flag off the C path delivers nothing and does not fail
    core.event{ type = "node_start" }
  end)

  it("passes the walk's events through C pf_emit with the fields filled", function()
    local got, sub = collect()
    core.event{ type = "retry", delay = 0.5, attempt = 2 }
    sub:off()
    assert.equal("retry", got[1].type)
    assert.equal(0.5, got[1].delay)
    assert.equal(2, got[1].attempt)
    assert.is_number(got[1].t)
  end)

  it("nests spans per task and follows the task tree for parents", function()
    local got, sub = collect()
    pf.run(function()
      core.event{ type = "run_start", node = "Flow", path = "Flow" }
      core.event{ type = "node_start", node = "Batch", path = "Flow/Batch", attempt = 1 }
      local tasks, started, ended = {}, 0, 0
      for i = 1, 3 do
        tasks[i] = pf.spawn(function()
          core.event{ type = "item_start", item = i }
          started = started + 1
          -- all three are open at once, and they end in reverse order
          while started < 3 or ended < 3 - i do pf.sleep(0) end
          pf.emit("tick", i)
          core.event{ type = "item_end", status = "ok" }
          ended = ended + 1
        end)
      end
      pf.emit("in_batch")
      for i = 1, 3 do tasks[i]:wait() end
      core.event{ type = "node_end", status = "error", error = "boom" }
      core.event{ type = "run_end", status = "error" }
    end)
    sub:off()
    local by = {}
    for _, ev in ipairs(got) do by[ev.type] = by[ev.type] or {}; table.insert(by[ev.type], ev) end
    local run, node = by.run_start[1], by.node_start[1]
    assert.matches("^%x+$", run.run_id)
    assert.equal(32, #run.run_id)
    assert.equal(16, #run.span_id)
    assert.is_nil(run.parent_id)
    assert.equal(run.span_id, node.parent_id)
    assert.equal(run.run_id, node.run_id)
    assert.equal(node.span_id, by.in_batch[1].span_id)
    assert.equal("Batch", by.in_batch[1].node)
    local items = {}
    for _, ev in ipairs(by.item_start) do
      assert.equal(node.span_id, ev.parent_id)
      assert.equal(run.run_id, ev.run_id)
      assert.is_nil(items[ev.span_id])
      items[ev.span_id] = ev.item
    end
    -- each tick and each end lands in its own item's span
    for _, ev in ipairs(by.tick) do assert.equal(ev.data, items[ev.span_id]) end
    for _, ev in ipairs(by.item_end) do
      assert.is_not_nil(items[ev.span_id])
      assert.is_true(ev.dur > 0)
      assert.equal(node.span_id, ev.parent_id)
    end
    assert.same({ 3, 2, 1 }, { by.tick[1].data, by.tick[2].data, by.tick[3].data })
    local nend = by.node_end[1]
    assert.equal(node.span_id, nend.span_id)
    assert.equal("Flow/Batch", nend.path)
    assert.equal("boom", nend.error)
    assert.is_true(nend.dur >= by.item_end[3].dur)
    assert.equal(run.span_id, by.run_end[1].span_id)
  end)

  it("refuses a wait inside a handler and warns; the run goes on", function()
    local after = {}
    local seen = warnings.of(function()
      local sub = pf.on(function(ev) pf.sleep(0.01); after[#after + 1] = ev end)
      local s2 = pf.on(function(ev) pf.http.get("http://127.0.0.1:1/") end)
      local res = pf.run(function() pf.emit("x"); return "done" end)
      sub:off(); s2:off()
      assert.equal("done", res)
    end)
    assert.equal(0, #after)
    assert.equal(2, #seen)
    assert.matches("^event handler failed: .*pf.sleep: event handlers may not wait; use pf.spawn$", seen[1])
    assert.matches("pf.http: event handlers may not wait; use pf.spawn$", seen[2])
  end)

  it("refuses a wait inside a handler outside any run too", function()
    local slept = false
    local seen = warnings.of(function()
      local sub = pf.on(function() pf.sleep(0.01); slept = true end)
      pf.emit("x")
      sub:off()
    end)
    assert.is_false(slept)
    assert.equal(1, #seen)
    assert.matches("pf.sleep: event handlers may not wait; use pf.spawn$", seen[1])
  end)

  it("keeps waits outside handlers working, in a handler's own task too", function()
    local got
    local sub = pf.on(function(ev)
      -- a coroutine of the handler's own is not the task: it cannot wait either
      local ok, err = pcall(pf.sleep, 0)
      got = { ok, err }
    end)
    pf.run(function() pf.emit("x"); pf.sleep(0.001) end)
    sub:off()
    assert.is_false(got[1])
    assert.matches("event handlers may not wait", got[2])
  end)

  it("lets a handler spawn a task that waits", function()
    local order = {}
    local sub = pf.on(function(ev)
      pf.spawn(function() pf.sleep(0.01); order[#order + 1] = "spawned " .. ev.type end)
    end)
    pf.run(function() pf.emit("x"); order[#order + 1] = "emitter" end)
    sub:off()
    assert.same({ "emitter", "spawned x" }, order)
  end)

  it("turns a handler's error into a warning and calls the others", function()
    local got = {}
    local seen = warnings.of(function()
      local a = pf.on(function() error("boom") end)
      local b = pf.on(function() error(setmetatable({}, { __tostring = function() error("worse") end })) end)
      local c = pf.on(function(ev) got[#got + 1] = ev.type end)
      pf.run(function() pf.emit("x") end)
      pf.emit("y")   -- outside a run too
      a:off(); b:off(); c:off()
    end)
    assert.same({ "x", "y" }, got)
    assert.equal(4, #seen)
    assert.matches("^event handler failed: .*: boom$", seen[1])
    assert.matches("^event handler failed: ", seen[2])
  end)

  it("lets a handler unsubscribe itself and others while being called", function()
    local calls = 0
    local b
    local a
    a = pf.on(function() calls = calls + 1; a:off(); b:off() end)
    b = pf.on(function() calls = calls + 1 end)
    pf.emit("x")    -- the list is a snapshot: b still gets this one
    pf.emit("x")
    assert.equal(2, calls)
  end)

  it("keeps a run's subscribers to its own run", function()
    local got, other = {}, {}
    local close = events.run_sinks({ on_event = function(ev) got[#got + 1] = ev end }, "0123456789abcdef0123456789abcdef")
    local sub = pf.on(function(ev) other[#other + 1] = ev end)
    pf.run(function()
      core.event{ type = "run_start", run_id = "0123456789abcdef0123456789abcdef" }
      pf.emit("mine")
      core.event{ type = "run_end" }
      core.event{ type = "run_start" }   -- another run
      pf.emit("theirs")
      core.event{ type = "run_end" }
    end)
    close(); sub:off()
    assert.equal(3, #got)
    assert.equal("mine", got[2].type)
    assert.equal(6, #other)
    assert.is_nil(events.run_sinks({}, "x"))
  end)
end)

-- The walk's own events (API.md §7), from real flows of every kind.
describe("events of a real run", function()
  after_each(function()
    assert.equal(0, events.count())
    assert.is_false(core.listening())
  end)

  -- every event of fn's run, as "type node [item] [status]" lines and tables
  local function record(fn, filter)
    local got, lines = {}, {}
    local sub = pf.on(function(ev)
      got[#got + 1] = ev
      local l = ev.type .. " " .. tostring(ev.node)
      if ev.item then l = l .. " #" .. ev.item end
      if ev.status then l = l .. " " .. ev.status end
      if ev.type == "progress" then l = l .. (" %d/%d"):format(ev.done, ev.total) end
      lines[#lines + 1] = l
    end, filter)
    local ok, err = pcall(fn)
    sub:off()
    return got, lines, ok, err
  end

  local function by_span(got)
    local m = {}
    for _, ev in ipairs(got) do
      if ev.type:find("_start$") then m[ev.span_id] = ev end
    end
    return m
  end

  local function step(name, fn)
    local N = pf.Node:extend(name)
    N.exec = fn or function(_, p) return p end
    return N
  end

  it("gives a plain node run a run span and a node span, in order, with fields", function()
    local n = step("Hello", function() return 42 end)()
    local got, lines = record(function() n:run({}) end)
    assert.same({ "run_start Hello", "node_start Hello", "node_end Hello ok", "run_end Hello ok" }, lines)
    local run, ns, ne, re = got[1], got[2], got[3], got[4]
    assert.equal(32, #run.run_id)
    assert.is_nil(run.parent_id)
    assert.same({}, run.path)
    assert.equal(run.span_id, ns.parent_id)
    assert.same({ "Hello" }, ns.path)
    assert.equal(1, ns.attempt)
    for _, ev in ipairs(got) do assert.equal(run.run_id, ev.run_id) end
    assert.equal(ns.span_id, ne.span_id)
    assert.equal(42, ne.exec_res)
    assert.is_true(ne.dur >= 0 and re.dur >= ne.dur)
    assert.equal(run.span_id, re.span_id)
  end)

  it("follows a flow with a batch node, a batch flow and a parallel batch flow", function()
    local A = step("A")
    local B = pf.BatchNode:extend("B")
    function B:prep() return { 10, 20 } end
    function B:exec(x) return x + 1 end
    local inner = pf.Flow{ name = "Inner", start = step("Leaf")() }
    local BF = pf.BatchFlow:extend("BF")
    function BF:prep() return { { k = 1 }, { k = 2 } } end
    local bf = BF{ start = step("BLeaf")() }
    local PF = pf.ParallelBatchFlow:extend("PF")
    function PF:prep() return { { k = 1 } } end
    local pbf = PF{ start = step("PLeaf")() }
    local a = A()
    local _ = a >> B() >> inner >> bf >> pbf
    local main = pf.Flow{ name = "Main", start = a }
    local got, lines = record(function() main:run({}) end, { "run_start", "run_end", "node_start",
      "node_end", "item_start", "item_end" })
    assert.same({
      "run_start Main", "node_start Main",
      "node_start A", "node_end A ok",
      "node_start B", "item_start B #1", "item_end B #1 ok", "item_start B #2", "item_end B #2 ok",
      "node_end B ok",
      "node_start Inner", "node_start Leaf", "node_end Leaf ok", "node_end Inner ok",
      "node_start BF", "item_start BF #1", "node_start BLeaf", "node_end BLeaf ok", "item_end BF #1 ok",
      "item_start BF #2", "node_start BLeaf", "node_end BLeaf ok", "item_end BF #2 ok", "node_end BF ok",
      "node_start PF", "item_start PF #1", "node_start PLeaf", "node_end PLeaf ok", "item_end PF #1 ok",
      "node_end PF ok",
      "node_end Main ok", "run_end Main ok" }, lines)
    local spans = by_span(got)
    -- each start's parent is the span it ran in; paths follow the nesting
    local function parent_of(ev) return spans[ev.parent_id] end
    for _, ev in ipairs(got) do
      if ev.type == "node_start" and ev.node == "BLeaf" then
        assert.equal("item_start", parent_of(ev).type)
        assert.equal("BF", parent_of(ev).node)
        assert.same({ "Main", "BF", "BLeaf" }, ev.path)
      elseif ev.type == "node_start" and ev.node == "Leaf" then
        assert.equal("Inner", parent_of(ev).node)
        assert.same({ "Main", "Inner", "Leaf" }, ev.path)
      elseif ev.type == "node_start" and ev.node == "PLeaf" then
        assert.equal("item_start", parent_of(ev).type)
        assert.same({ "Main", "PF", "PLeaf" }, ev.path)
      elseif ev.type == "item_start" then
        assert.equal(ev.node, parent_of(ev).node)
        assert.equal("node_start", parent_of(ev).type)
      end
    end
    -- the batch node's results go along on its end, for capture
    for _, ev in ipairs(got) do
      if ev.type == "node_end" and ev.node == "B" then
        assert.same({ 11, 21 }, ev.exec_res)
        assert.same({ 10, 20 }, ev.prep_res)
      end
    end
  end)

  it("tells a batch's progress: once at the start and after each item", function()
    local B = pf.BatchNode:extend("B")
    function B:prep() return { 1, 2, 3 } end
    local P = pf.ParallelBatchNode:extend("P")
    function P:prep() return { 1, 2, 3, 4 } end
    function P:exec(x) pf.sleep(0.001 * x) return x end
    local b = B()
    local _ = b >> P{ max_concurrency = 2 }
    local got, lines = record(function() pf.Flow{ start = b }:run({}) end, { "progress" })
    assert.same({ "progress B 0/3", "progress B 1/3", "progress B 2/3", "progress B 3/3",
                  "progress P 0/4", "progress P 1/4", "progress P 2/4", "progress P 3/4",
                  "progress P 4/4" }, lines)
    for _, ev in ipairs(got) do
      assert.equal(0, ev.failed)
      assert.equal("number", math.type(ev.in_flight) and "number")
      assert.is_true(ev.in_flight >= 0 and ev.in_flight <= 2)
    end
    assert.equal(0, got[#got].in_flight)
    -- a parallel batch's progress is in its node's span, not an item's
    local p_span
    for _, ev in ipairs(got) do
      if ev.node == "P" then
        p_span = p_span or ev.span_id
        assert.equal(p_span, ev.span_id)
        assert.same({ "Flow", "P" }, ev.path)
      end
    end
  end)

  it("gives concurrent items spans of their own, under their batch's", function()
    local P = pf.ParallelBatchNode:extend("P")
    function P:prep() return { 1, 2, 3, 4, 5 } end
    function P:exec(x)
      pf.emit("inside", x)
      pf.sleep(0.001 * (6 - x))   -- they end in reverse order
      pf.emit("inside", x)
      return x
    end
    local got = record(function() P():run({}) end)
    local spans, items, node = by_span(got), {}, nil
    for _, ev in ipairs(got) do
      if ev.type == "node_start" then node = ev end
      if ev.type == "item_start" then
        assert.equal(node.span_id, ev.parent_id)
        assert.is_nil(items[ev.span_id])
        items[ev.span_id] = ev.item
      end
    end
    local seen = 0
    for _, ev in ipairs(got) do
      if ev.type == "inside" then
        assert.equal(ev.data, items[ev.span_id])   -- its own item's span
        assert.equal(node.span_id, ev.parent_id)
        seen = seen + 1
      elseif ev.type == "item_end" then
        assert.equal(spans[ev.span_id].item, ev.item)
        assert.equal(node.span_id, ev.parent_id)
      end
    end
    assert.equal(10, seen)
  end)

  it("tells retries and the fallback, with attempts, delays and errors", function()
    local N = pf.Node:extend("Flaky")
    N.max_retries, N.wait = 3, 0.001
    function N:exec() error("nope " .. self.cur_retry, 0) end
    function N:exec_fallback(_, err) return "saved" end
    local got, lines = record(function() N():run({}) end, { "retry", "fallback", "node_end" })
    assert.same({ "retry Flaky", "retry Flaky", "fallback Flaky", "node_end Flaky ok" }, lines)
    assert.equal(2, got[1].attempt); assert.equal(0.001, got[1].delay); assert.equal("nope 0", got[1].error)
    assert.equal(3, got[2].attempt); assert.equal("nope 1", got[2].error)
    assert.equal(3, got[3].attempt); assert.equal("nope 2", got[3].error)
    assert.equal(got[4].span_id, got[1].span_id)
    assert.equal("saved", got[4].exec_res)
  end)

  it("ends every open span with the error when a node fails", function()
    local Bad = step("Bad", function() error({ code = 7 }) end)
    local Pr = pf.Node:extend("Prep")
    function Pr:prep() error("prep broke", 0) end
    local flow = pf.Flow{ name = "Main", start = pf.Flow{ name = "Sub", start = Bad() } }
    local got, lines, ok = record(function() flow:run({}) end)
    assert.is_false(ok)
    assert.same({ "run_start Main", "node_start Main", "node_start Sub", "node_start Bad",
                  "node_end Bad error", "node_end Sub error", "node_end Main error",
                  "run_end Main error" }, lines)
    assert.matches("^table: ", got[5].error)
    got, lines, ok = record(function() Pr():run({}) end)
    assert.is_false(ok)
    assert.same({ "run_start Prep", "node_start Prep", "node_end Prep error", "run_end Prep error" }, lines)
    assert.matches("^prep broke", got[3].error)
  end)

  it("ends the spans of cancelled items as cancelled, the failing one's as error", function()
    local P = pf.ParallelBatchNode:extend("P")
    function P:prep() return { 1, 2, 3 } end
    function P:exec(x)
      if x == 2 then pf.sleep(0.01); error("two", 0) end
      pf.sleep(5)
    end
    local got, _, ok, err = record(function() P():run({}) end, { "item_start", "item_end", "node_end" })
    assert.is_false(ok)
    assert.matches("^two", err)
    local status, open = {}, {}
    for _, ev in ipairs(got) do
      if ev.type == "item_start" then open[ev.span_id] = true end
      if ev.type == "item_end" then
        assert.is_true(open[ev.span_id]); open[ev.span_id] = nil
        status[ev.item] = ev.status
      end
    end
    assert.is_nil(next(open))
    assert.same({ "cancelled", "error", "cancelled" }, status)
    assert.equal("node_end", got[#got].type)
    assert.equal("error", got[#got].status)
  end)

  it("ends a cancelled run's spans as cancelled and closes its sinks", function()
    local started = false
    local Slow = step("Slow", function() started = true; pf.sleep(10) end)
    local got = {}
    pf.run(function()
      local t = pf.spawn(function()
        Slow():run({}, { on_event = function(ev) got[#got + 1] = ev.type .. " " .. (ev.status or "") end })
      end)
      for _ = 1, 1000 do if started then break end pf.sleep(0.001) end
      assert.is_true(started)
      t:cancel()
    end)
    assert.same({ "run_start ", "node_start ", "node_end cancelled", "run_end cancelled" }, got)
  end)

  it("turns a handler's error into a warning; the run goes on", function()
    local n = step("N", function() return "fine" end)()
    local res
    local seen = warnings.of(function()
      local sub = pf.on(function(ev) if ev.type == "node_start" then error("handler broke") end end)
      res = n:run({})
      sub:off()
    end)
    assert.equal(nil, res)
    assert.equal(1, #seen)
    assert.matches("^event handler failed: .*handler broke$", seen[1])
  end)

  it("refuses a wait in a handler of a real run and goes on", function()
    local ends = 0
    local seen = warnings.of(function()
      local sub = pf.on(function(ev)
        if ev.type == "node_end" then ends = ends + 1; pf.sleep(0.001) end
      end)
      local _ = step("N", function() pf.sleep(0.001) return 1 end)():run({})
      sub:off()
    end)
    assert.equal(1, ends)
    assert.equal(1, #seen)
    assert.matches("pf.sleep: event handlers may not wait; use pf.spawn$", seen[1])
  end)

  it("gives on_event only its own run's events, with concurrent runs", function()
    local S = step("S", function(_, p) pf.sleep(0.002) return p end)
    local mine, all = {}, {}
    local sub = pf.on(function(ev) if ev.type == "run_start" then all[#all + 1] = ev.node end end)
    pf.run(function()
      local other = pf.spawn(function() pf.Flow{ name = "Other", start = S() }:run({}) end)
      local me = pf.spawn(function()
        pf.Flow{ name = "Mine", start = S() }:run({}, {
          on_event = function(ev) mine[#mine + 1] = ev end })
      end)
      other:wait(); me:wait()
    end)
    sub:off()
    table.sort(all)
    assert.same({ "Mine", "Other" }, all)
    assert.equal(6, #mine)
    for _, ev in ipairs(mine) do
      assert.equal(mine[1].run_id, ev.run_id)
      assert.equal("Mine", ev.path[1] or ev.node)
    end
    assert.equal("run_end", mine[6].type)
  end)

  it("keeps a node:run inside a node in its caller's run", function()
    local inner = step("Inner", function() return 1 end)()
    local outer = step("Outer", function() return inner:run({}) end)()
    local got, lines = record(function() outer:run({}) end)
    assert.same({ "run_start Outer", "node_start Outer", "node_start Inner", "node_end Inner ok",
                  "node_end Outer ok", "run_end Outer ok" }, lines)
    assert.equal(got[2].span_id, got[3].parent_id)
    assert.same({ "Outer", "Inner" }, got[3].path)
  end)

  it("checks the run options before anything listens", function()
    local n = pf.Node()
    local cases = {
      { { on_event = 5 }, "run: on_event must be a function %(got number%)" },
      { { on_event = {} }, "run: on_event must be a function %(got table%)" },
      { { progress = 2 }, 'run: progress must be true, "json" or a function %(got number%)' },
      { { trace = 5 }, "run: trace must be a file path or an http:// URL %(got number%)" },
      { { trace = "" }, 'run: trace must be a file path or an http:// URL %(got ""%)' },
      { { capture = "yes" }, 'run: capture must be a boolean %(got "yes"%)' },
      { { progress = "bar" }, 'run: progress must be true, "json" or a function %(got "bar"%)' },
      { { trace = "/nonexistent/dir/x.jsonl", on_event = print }, "trace: cannot open" },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(n.run, n, {}, c[1])
      assert.is_false(ok)
      assert.matches(c[2], err)
      assert.equal(0, events.count())
    end
    local ok, err = pcall(function() n:run({}, { on_event = 5 }) end)
    assert.is_false(ok)
    assert.matches("^spec/events_spec%.lua:%d+: run: on_event", err)
  end)

  it("copes with a subscriber that comes or goes in the middle of a run", function()
    local got = {}
    local sub
    local First = step("First", function()
      sub = pf.on(function(ev) got[#got + 1] = ev.type .. " " .. tostring(ev.node) end)
    end)
    local Second = step("Second", function() sub:off() end)
    local f = First()
    local _ = f >> Second() >> step("Third")()
    pf.Flow{ start = f }:run({})
    assert.same({ "node_end First", "node_start Second" }, got)
    -- and a run that starts listening mid-way and fails ends its spans
    local Boom = step("Boom", function() error("boom", 0) end)
    got = {}
    f = First()
    _ = f >> Boom()
    assert.has_error(function() pf.Flow{ start = f }:run({}) end)
    sub:off()
    -- (the flow started before anyone listened: it has no span to end)
    assert.same({ "node_end First", "node_start Boom", "node_end Boom" }, got)
  end)
end)

describe("paths of real runs", function()
  it("keep a node named like a field of the bus's own tables", function()
    local got = {}
    local sub = pf.on(function(ev) if ev.type == "node_start" then got[#got + 1] = ev.path end end)
    local a = pf.Node{ name = "n" }
    local _ = a >> pf.Node{ name = "paths" }
    pf.Flow{ name = "F", start = a }:run({})
    sub:off()
    assert.same({ { "F" }, { "F", "n" }, { "F", "paths" } }, got)
  end)
end)

describe("events of a timed flow", function()
  it("keep its timeout, with run options and with a subscriber", function()
    local Slow = pf.Node:extend("Slow")
    function Slow:exec() pf.sleep(5) end
    local f = pf.Flow{ name = "Timed", start = Slow(), timeout = 0.05 }
    local got = {}
    local ok, err = pcall(f.run, f, {}, { on_event = function(ev)
      got[#got + 1] = ev.type .. " " .. ev.node .. " " .. (ev.status or "") end })
    assert.is_false(ok)
    assert.matches("^Timed: flow timed out after 0.05 s", err)
    -- the flow's walk ran in a task of its own, cancelled at the timeout
    assert.same({ "run_start Timed ", "node_start Timed ", "node_start Slow ",
                  "node_end Slow cancelled", "node_end Timed cancelled", "run_end Timed error" }, got)
    assert.equal(0, events.count())
  end)
end)

describe("events of a durable run", function()
  it("come as for a run without a store, and its end says how it stopped", function()
    local A = pf.Node:extend("A")
    function A:post(s) s.n = (s.n or 0) + 1 end
    local Ask = pf.Node:extend("Ask")
    function Ask:exec() return pf.interrupt("ok?") end
    local f = pf.Flow{ name = "Main", start = A() }
    local got = {}
    local function on(ev) got[#got + 1] = ev.type .. " " .. ev.node .. " " .. (ev.status or "") end
    f:run({}, { store = pf.memory(), on_event = on })
    assert.same({ "run_start Main ", "node_start Main ", "node_start A ", "node_end A ok",
                  "node_end Main ok", "run_end Main ok" }, got)
    got = {}
    local g = pf.Flow{ name = "Main", start = Ask() }
    local _, run = g:run({}, { store = pf.memory(), on_event = on })
    assert.equal("interrupted", run.status)
    assert.equal("run_end Main interrupted", got[#got])
    assert.equal(0, events.count())
  end)
end)

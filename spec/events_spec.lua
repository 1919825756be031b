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

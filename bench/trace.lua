-- The cost of observing a run, through the walk's own path (core.event,
-- C pf_emit):
--   file: spans per second written by trace = file (target: at least
--     300k/s) against a floor measured in the same run: the same number
--     of the same lines written to a file by file:write; and the event
--     cost with a no-op subscriber (the bus's share of a span).
--   otlp: trace = "http://..." against a local collector (a process of
--     its own, bench/otlp_sink.lua, answering at once or after 2 s):
--     spans per second with the exporter on (N/4 spans) and the bus's
--     share, and whether a node ever waits for the collector: 50 tasks
--     run nodes that each yield once, a ticking task records the longest
--     gap between its ticks, and the nodes' time (to the last node's end)
--     with a collector answering after 2 s is compared with one answering
--     at once (and with no exporter). Spans dropped are counted (the
--     exporter keeps 4 requests in flight and 65536 spans waiting).
-- usage: build/pocketflow bench/trace.lua [N] [RUNS] [file|otlp]
--        (default 200000 5, both parts; "file" with RUNS = 1 for callgrind)
local pf = require "pocketflow"
local core = require "pocketflow.core"
local trace = require "pocketflow.trace"

local N = tonumber(arg and arg[1]) or 200000
local RUNS = tonumber(arg and arg[2]) or 5
local only = arg and arg[3]
local event, new = core.event, core.event_new
local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."

-- N node spans (a start and an end event each) in one run, made as the
-- walk makes them: core.event_new is pf_event_begin (nil when nobody
-- listens, else a table sized for what the bus adds), core.event pf_emit.
-- Returns the seconds to the run's end event.
local function spans(n)
  local t0, t1
  pf.run(function()
    t0 = pf.now()
    local ev = new("run_start")
    if ev then ev.node = "Flow"; ev.path = "Flow"; event(ev) end
    for i = 1, n do
      ev = new("node_start")
      if ev then ev.node = "Step"; ev.path = "Flow/Step"; ev.attempt = 1; event(ev) end
      ev = new("node_end")
      if ev then ev.status = "ok"; ev.exec_res = i; event(ev) end
    end
    ev = new("run_end")
    if ev then ev.status = "ok"; event(ev) end
    t1 = pf.now()
  end)
  return t1 - t0
end

local function median(t)
  table.sort(t)
  return t[(#t + 1) // 2]
end

-- f() RUNS times; the medians of its CPU seconds and of what it returns
local function measure(f)
  local cpu, res = {}, {}
  for r = 1, RUNS do
    local c0 = os.clock()
    res[r] = f()
    cpu[r] = os.clock() - c0
  end
  return median(cpu), median(res)
end

local function rate(n, s) return ("%.0f"):format(n / s) end

-- ---------------------------------------------------------------- file

local function file_part()
  local path = os.tmpname()
  local cpu, wall = measure(function()
    os.remove(path)
    local sink = trace.open(path)
    local t0 = pf.now()
    spans(N)
    sink:close()    -- the flush of the last lines counts
    return pf.now() - t0
  end)
  -- the floor: the same lines (1024 of them, in turn), N of them, one
  -- file:write each into the same 64 KiB buffer
  local lines, bytes = {}, 0
  for line in io.lines(path) do
    bytes = bytes + #line + 1
    if #lines < 1024 then lines[#lines + 1] = line .. "\n" end
  end
  os.remove(path)
  assert(bytes > 0)
  local floor_cpu = measure(function()
    local f = assert(io.open(path, "w"))
    f:setvbuf("full", 65536)
    local k = #lines
    for i = 1, N do f:write(lines[i % k + 1]) end
    f:close()
  end)
  os.remove(path)
  print(("trace to a file: %d spans of %.0f bytes, median of %d runs")
        :format(N, bytes / (N + 1), RUNS))
  print(("  engine: CPU %.3f s = %s spans/s (target >= 300000); wall %.3f s = %s/s")
        :format(cpu, rate(N, cpu), wall, rate(N, wall)))
  print(("  floor (the same lines, file:write each): CPU %.3f s = %s lines/s; engine/floor time %.1fx")
        :format(floor_cpu, rate(N, floor_cpu), cpu / floor_cpu))
  if only == "file" then return end
  local noop_cpu = measure(function()
    local sub = pf.on(function() end)
    spans(N)
    sub:off()
  end)
  local none_cpu = measure(function() spans(N) end)
  print(("  of a span's %.0f ns: the bus with a no-op subscriber %.0f ns (2 events), "
         .. "the trace sink %.0f ns, no subscriber %.0f ns (the flag tests and the loop)")
        :format(cpu / N * 1e9, (noop_cpu - none_cpu) / N * 1e9, (cpu - noop_cpu) / N * 1e9,
                none_cpu / N * 1e9))
end

-- ---------------------------------------------------------------- OTLP

-- a collector process answering after delay seconds; returns its url
-- and a function that gives its stats line and stops it
local function collector(delay)
  local cmd = ("exec timeout 600 lua5.4 %s/otlp_sink.lua %s"):format(here, delay)
  local p = assert(io.popen(cmd, "r"))
  local url, pid = (p:read("l") or ""):match("^(%S+) (%d+)$")
  assert(url, "bench/otlp_sink.lua did not start")
  return url, function()
    local stats = pf.run(function() return pf.http.get(url .. "/stats").body end)
    os.execute("kill " .. pid)
    p:close()
    return stats
  end
end

-- TASKS tasks of NODES nodes each, every node yielding once between its
-- start and end; a ticking task. Returns the nodes' seconds (to the last
-- node's end), pf.run's seconds and the longest gap between ticks (s).
local TASKS = 50
local function nodes(per_task)
  local t0, t_nodes, gap = pf.now(), nil, 0
  pf.run(function()
    local done = false
    local ticker = pf.spawn(function()
      local last = pf.now()
      while not done do
        pf.sleep(0.002)
        local t = pf.now()
        if t - last > gap then gap = t - last end
        last = t
      end
    end)
    local ev = new("run_start")
    if ev then ev.node = "Flow"; ev.path = "Flow"; event(ev) end
    local tasks = {}
    for k = 1, TASKS do
      tasks[k] = pf.spawn(function()
        for i = 1, per_task do
          local ev = new("item_start")
          if ev then ev.node = "Step"; ev.item = i; ev.attempt = 1; event(ev) end
          pf.sleep(0)
          ev = new("item_end")
          if ev then ev.status = "ok"; event(ev) end
        end
      end)
    end
    for k = 1, TASKS do tasks[k]:wait() end
    t_nodes = pf.now() - t0
    done = true
    ticker:wait()
    ev = new("run_end")
    if ev then ev.status = "ok"; event(ev) end
  end)
  return t_nodes, pf.now() - t0, gap
end

-- closes an OTLP sink and lets its senders finish (they outlive pf.run)
local function close_otlp(sink)
  sink:close()
  pf.run(function()
    while sink.in_flight > 0 or #sink.batches > 0 do pf.sleep(0.01) end
  end)
  return sink.dropped
end

local function otlp_part()
  local M = N // 4
  local url, stop = collector(0)
  local slow_url, slow_stop = collector(2)
  print(("trace to OTLP/HTTP, local collector processes; median of %d runs"):format(RUNS))
  local bus_cpu = measure(function()
    local sub = pf.on(function() end)
    spans(M)
    sub:off()
  end)
  local dropped = 0
  local on_cpu, on_wall = measure(function()
    local sink = trace.open(url)
    local s = spans(M)
    dropped = dropped + close_otlp(sink)
    return s
  end)
  print(("  %d spans in one task that never yields: CPU %.3f s = %s spans/s (the bus alone, a no-op "
         .. "subscriber: %.3f s; the exporter %.1f us a span); to the run's end %.3f s; "
         .. "spans dropped %d")
        :format(M, on_cpu, rate(M, on_cpu), bus_cpu, (on_cpu - bus_cpu) / M * 1e6, on_wall, dropped))
  local per = M // TASKS
  local rows = {}
  for _, case in ipairs{ { "off" }, { "collector answering at once", url },
                         { "collector answering after 2 s", slow_url } } do
    local t_nodes, t_run, gaps, cpu, dropped = {}, {}, {}, {}, 0
    for r = 1, RUNS do
      local sink = case[2] and trace.open(case[2])
      local c0 = os.clock()
      t_nodes[r], t_run[r], gaps[r] = nodes(per)
      cpu[r] = os.clock() - c0
      if sink then dropped = dropped + close_otlp(sink) end
    end
    rows[#rows + 1] = { case[1], median(t_nodes), median(t_run), median(gaps),
                        math.max(table.unpack(gaps)), dropped, median(cpu) }
  end
  print(("  %d tasks x %d nodes, each node yielding once, a task ticking every 2 ms:")
        :format(TASKS, per))
  for _, row in ipairs(rows) do
    print(("    %-30s nodes %.3f s (%s/s; CPU %.3f s), longest tick gap %.1f ms (max %.1f), "
           .. "spans dropped %d")
          :format(row[1], row[2], rate(TASKS * per, row[2]), row[7], row[4] * 1e3, row[5] * 1e3,
                  row[6]))
  end
  print(("  nodes' time with the collector answering after 2 s / at once: %.2fx")
        :format(rows[3][2] / rows[2][2]))
  print("  collector at once: " .. stop())
  print("  collector after 2 s: " .. slow_stop())
end

if only ~= "otlp" then file_part() end
if only ~= "file" then otlp_part() end

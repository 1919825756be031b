-- bench/queue.lua: the cost of distributed batches (pf.queue, pf.work) on
-- Redis Streams, against a floor measured in the same run.
--
--   build/pocketflow bench/queue.lua [--smoke] [--floor PATH] [--runs K] [N]
--
-- 1. Throughput: N no-op items (default 100,000) of a ParallelBatchNode
--    with distribute = q, through 1, 2 and 4 worker processes (this
--    script under the same binary, running pf.work). Floor: the same
--    XADD / XREADGROUP / XACK traffic from plain hiredis in C, pipelined,
--    with as many worker processes (bench/queue_floor.c). Goal: the
--    engine at least 0.5x the floor's items a second.
-- 2. Items that sleep 10 ms, on 1 and on 4 workers: 4 at least 3.5x faster.
-- 3. The coordinator's memory (RSS, Lua heap) with 1M items outstanding
--    (max_concurrency above that, no worker running).
--
-- Every measured coordinator and worker is a process of its own, started
-- with pf.exec and killed (its task cancelled) when its part ends. One
-- redis-server, started here on a free 127.0.0.1 port without persistence
-- (spec/support/redisd.lua), is emptied between runs and killed at the
-- end, also on error. Engine and floor runs alternate; the median of K
-- runs is shown. --smoke: small N, one run, figures printed, nothing judged.
--
-- Modes used by the runs themselves (not for users):
--   queue.lua worker URL NAME CONCURRENCY SLEEP LIFE MARKER
--   queue.lua coordinator URL NAME N SLEEP MAX_CONCURRENCY
--   queue.lua outstanding URL NAME N
local pf = pf or require "pocketflow"
local uv = require "luv"

local HERE = (arg[0]:match("^(.*)/[^/]*$") or ".")
package.path = HERE .. "/../spec/?.lua;" .. package.path

-- PF_BENCH_QUEUE_LUA=file: every process of the bench (they inherit it)
-- runs that queue.lua instead of the built-in one, to compare a change
-- without a rebuild
if os.getenv("PF_BENCH_QUEUE_LUA") then
  package.loaded["pocketflow.queue"] = assert(loadfile(os.getenv("PF_BENCH_QUEUE_LUA")))("pocketflow.queue")
end

-- ------------------------------------------------------------ the flow
-- The graph workers and coordinator share (same script, same hash).
local SLEEP = 0
local Items = pf.ParallelBatchNode:extend("Items")
function Items:prep(shared) return shared.items end
function Items:exec(x)
  if SLEEP > 0 then pf.sleep(SLEEP) end
  return x
end
function Items:post(shared, _, res) shared.res = res end

local function make_flow(url, name, max_concurrency)
  local q = pf.queue{ redis = url, name = name, lease = 30 }
  local node = Items{ distribute = q, max_concurrency = max_concurrency }
  return q, pf.Flow{ start = node }
end

local function status(key)  -- a field of /proc/self/status, in KiB
  local f = assert(io.open("/proc/self/status"))
  local s = f:read("a")
  f:close()
  return tonumber(s:match(key .. ":%s*(%d+)"))
end

local function heap_kb() return math.floor(collectgarbage("count")) end

local function items_list(n)
  local t = {}
  for i = 1, n do t[i] = i end
  return t
end

-- ------------------------------------------------------------ child modes
local mode = arg[1]
if mode == "worker" then
  local url, name, conc, sleep, life = arg[2], arg[3], tonumber(arg[4]), tonumber(arg[5]), tonumber(arg[6])
  SLEEP = sleep
  local q, flow = make_flow(url, name)
  -- bounded: a worker outlives a bench that died by LIFE seconds at most
  local ok, err = pcall(pf.timeout, life, pf.work, q, flow, { concurrency = conc })
  if not ok and not tostring(err):find("timeout after", 1, true) then
    io.stderr:write("worker: ", tostring(err), "\n")
    os.exit(1)
  end
  os.exit(0)
end

if mode == "coordinator" then
  local url, name, n, sleep, maxc = arg[2], arg[3], tonumber(arg[4]), tonumber(arg[5]), tonumber(arg[6])
  SLEEP = sleep
  local _, flow = make_flow(url, name, maxc)
  local shared = { items = items_list(n) }
  local t0, c0 = uv.hrtime(), os.clock()
  flow:run(shared)
  local dt, cpu = (uv.hrtime() - t0) / 1e9, os.clock() - c0
  local res = shared.res
  for i = 1, n do
    if res[i] ~= i then
      io.stderr:write(("coordinator: result %d is %s, not %d\n"):format(i, tostring(res[i]), i))
      os.exit(3)
    end
  end
  if #res ~= n then io.stderr:write("coordinator: ", #res, " results for ", n, " items\n"); os.exit(3) end
  print(("RESULT time=%.6f rss_kb=%d heap_kb=%d cpu_coord=%.6f"):format(dt, status("VmHWM"), heap_kb(), cpu))
  os.exit(0)
end

if mode == "outstanding" then
  -- puts N items on the queue with nobody to take them, and measures this
  -- process once they are all outstanding; then cancels the run and exits
  -- (the bench empties Redis)
  local url, name, n = arg[2], arg[3], tonumber(arg[4])
  local q, flow = make_flow(url, name, n + 1)
  local shared = { items = items_list(n) }
  collectgarbage("collect")
  local base_rss, base_heap = status("VmRSS"), heap_kb()
  local t0 = uv.hrtime()
  local run = pf.spawn(function() return flow:run(shared) end)
  local deadline = pf.now() + 600
  while true do
    local s = q:stats()
    if s.pending + s.in_flight >= n then break end
    if run:status() ~= "running" then run:wait(); error("the run ended with items outstanding") end
    if pf.now() > deadline then error("items not outstanding after 600 s: " .. s.pending) end
    pf.sleep(0.05)
  end
  local dt = (uv.hrtime() - t0) / 1e9
  local rss, heap = status("VmRSS"), heap_kb()
  collectgarbage("collect")
  local live = heap_kb()
  run:cancel()
  print(("RESULT time=%.6f rss_kb=%d hwm_kb=%d heap_kb=%d live_kb=%d base_rss_kb=%d base_heap_kb=%d")
    :format(dt, rss, status("VmHWM"), heap, live, base_rss, base_heap))
  os.exit(0)
end

-- ------------------------------------------------------------ the bench
local redisd = require "support.redisd"

local opts = { runs = nil, smoke = false, n = nil }
do
  local i = 1
  while arg[i] do
    local a = arg[i]
    if a == "--smoke" then opts.smoke = true
    elseif a == "--floor" then i = i + 1; opts.floor = arg[i]
    elseif a == "--runs" then i = i + 1; opts.runs = tonumber(arg[i])
    elseif tonumber(a) then opts.n = tonumber(a)
    else io.stderr:write("bench/queue.lua: unknown argument ", a, "\n"); os.exit(2) end
    i = i + 1
  end
end
local SMOKE = opts.smoke
local N = opts.n or (SMOKE and 2000 or 100000)
local RUNS = opts.runs or (SMOKE and 1 or 3)
local SLEEP_N = SMOKE and 100 or 2000      -- items that sleep 10 ms
local OUTSTANDING = SMOKE and 10000 or 1000000
local CONC = 100          -- pf.work's concurrency; the floor reads COUNT = CONC
local MAXC = 1000         -- max_concurrency; the floor keeps WINDOW = MAXC outstanding
local SLEEP_CONC = 8      -- concurrency of the sleeping workers
-- the floor's sizes: an item's v, a result's blob, the node's path
local ITEM_B = #pf.serialize(N, "item")
local RESULT_B = #pf.serialize({ i = N, ok = true, v = N })
local PATH_B = #"Flow\31Items"
local LIFE = 900          -- no worker lives longer
local CLK_TCK = 100       -- /proc/<pid>/stat's unit (sysconf(_SC_CLK_TCK) on Linux)
local BIN = uv.exepath()
local SCRIPT = arg[0]
local FLOOR = opts.floor or HERE .. "/../build/bench/queue_floor"

local function median(xs)
  local s = { table.unpack(xs) }
  table.sort(s)
  return s[(#s + 1) // 2]
end

local function fields(out)
  local r = {}
  local line = out:match("RESULT ([^\n]*)")
  if not line then return nil end
  for k, v in line:gmatch("([%w_]+)=(%S+)") do r[k] = tonumber(v) or v end
  return r
end

-- runs argv to its end; its RESULT fields, or raises with its output
local function result_of(argv, timeout)
  local r = pf.exec(argv, { timeout = timeout or 600 })
  local f = r.code == 0 and fields(r.stdout)
  if not f then
    error(("%s exited %d (signal %d):\n%s%s"):format(table.concat(argv, " "), r.code, r.signal,
      r.stdout, r.stderr), 0)
  end
  return f
end

-- ------------------------------------------------------------ workers
local Workers = {}
Workers.__index = Workers

-- starts k worker processes; each is a task running pf.exec, so that
-- cancelling the task kills the process. Their argv holds a marker.
local function start_workers(url, name, k, conc, sleep)
  local self = setmetatable({ tasks = {}, url = url, name = name,
    marker = ("pf-bench-%d-%s"):format(uv.os_getpid(), name) }, Workers)
  for i = 1, k do
    self.tasks[i] = pf.spawn(function()
      return pf.exec({ BIN, SCRIPT, "worker", url, name, conc, sleep, LIFE, self.marker })
    end)
  end
  return self
end

local function read_all(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- CPU seconds (user + system) the workers have used so far, from
-- /proc/<pid>/stat of every process whose argv holds the marker
function Workers:cpu()
  local total, dir = 0, uv.fs_scandir("/proc")
  while true do
    local pid = uv.fs_scandir_next(dir)
    if not pid then break end
    local cmd = pid:match("^%d+$") and read_all("/proc/" .. pid .. "/cmdline")
    local stat = cmd and cmd:find(self.marker, 1, true) and read_all("/proc/" .. pid .. "/stat")
    if stat then   -- fields 14 and 15, after the ")" that ends the name
      local ut, st = stat:match("%)%s+%S+" .. ("%s+%S+"):rep(10) .. "%s+(%d+)%s+(%d+)")
      total = total + (tonumber(ut) + tonumber(st)) / CLK_TCK
    end
  end
  return total
end

-- raises if a worker ended (it should run until stopped)
function Workers:check()
  for _, t in ipairs(self.tasks) do
    if t:status() ~= "running" then
      local ok, r = pcall(t.wait, t)
      error("a worker ended: " .. (ok and (r.stderr .. r.stdout) or tostring(r)), 0)
    end
  end
end

-- waits until q:stats() counts k live workers
function Workers:wait_attached(q, k)
  local deadline = pf.now() + 30
  while q:stats().workers < k do
    self:check()
    if pf.now() > deadline then error("workers did not attach within 30 s", 0) end
    pf.sleep(0.02)
  end
end

function Workers:stop()
  for _, t in ipairs(self.tasks) do t:cancel() end
  self.tasks = {}
end

-- ------------------------------------------------------------ measurements
local seq = 0
local function fresh_name(r)
  r:call("FLUSHALL")
  seq = seq + 1
  return "bench" .. seq
end

-- What Redis did since CONFIG RESETSTAT: calls by command, the server's
-- CPU time in its commands (usec), bytes in and out.
local function cpu_of(r)
  local s = r:call("INFO", "cpu")
  return tonumber(s:match("used_cpu_user:([%d.]+)")) + tonumber(s:match("used_cpu_sys:([%d.]+)"))
end

local function traffic(r, cpu0)
  local t = { calls = {}, usec = (cpu_of(r) - cpu0) * 1e6 }
  for cmd, calls in r:call("INFO", "commandstats"):gmatch("cmdstat_([%w|]+):calls=(%d+)") do
    if cmd ~= "info" and cmd ~= "config|resetstat" then t.calls[cmd:upper()] = tonumber(calls) end
  end
  local s = r:call("INFO", "stats")
  t.bytes_in = tonumber(s:match("total_net_input_bytes:(%d+)"))
  t.bytes_out = tonumber(s:match("total_net_output_bytes:(%d+)"))
  return t
end

-- one engine run: k workers started and attached, then a coordinator
local function engine_run(srv, r, k, n, conc, sleep, maxc)
  local name = fresh_name(r)
  local q = make_flow(srv.url, name, maxc)
  local w = start_workers(srv.url, name, k, conc, sleep)
  local ok, res = pcall(function()
    w:wait_attached(q, k)
    r:call("CONFIG", "RESETSTAT")
    local cpu0, wcpu0 = cpu_of(r), w:cpu()
    local c = pf.spawn(result_of, { BIN, SCRIPT, "coordinator", srv.url, name, n, sleep, maxc },
                       SMOKE and 60 or 600)
    while c:status() == "running" do w:check(); pf.sleep(0.05) end
    local f = c:wait()
    f.traffic = traffic(r, cpu0)
    f.cpu_workers = w:cpu() - wcpu0
    return f
  end)
  w:stop()
  if not ok then error(res, 0) end
  return res
end

local function floor_run(srv, r, k, n)
  fresh_name(r)
  r:call("CONFIG", "RESETSTAT")
  local cpu0 = cpu_of(r)
  local f = result_of({ FLOOR, srv.port, n, k, CONC, MAXC, ITEM_B, RESULT_B, PATH_B })
  f.traffic = traffic(r, cpu0)
  return f
end

-- "CPU an item: coordinator 5.1 us, workers 9.0 us, redis-server 7.2 us;
-- 284 B in, 232 B out; XADD 1 XACK 0.01 ..." (the commands run by
-- scripts count too)
local function per_item(f, n)
  local t = f.traffic
  local cmds = {}
  for cmd in pairs(t.calls) do cmds[#cmds + 1] = cmd end
  table.sort(cmds)
  local parts = {}
  for _, cmd in ipairs(cmds) do parts[#parts + 1] = ("%s %.3g"):format(cmd, t.calls[cmd] / n) end
  return ("CPU an item: coordinator %.1f us, workers %.1f us, redis-server %.1f us; "
    .. "to Redis %.0f B, from it %.0f B; commands: %s"):format(
    f.cpu_coord * 1e6 / n, f.cpu_workers * 1e6 / n, t.usec / n, t.bytes_in / n, t.bytes_out / n,
    table.concat(parts, " "))
end
local notes = {}

local rows = {}
local function row(cells) rows[#rows + 1] = cells end
local function verdict(ok) return SMOKE and "ok (smoke)" or (ok and "met" or "MISSED") end
local function rate(n, t) return ("%.3f s (%.0f/s)"):format(t, n / t) end

local function throughput(srv, r)
  for _, k in ipairs{ 1, 2, 4 } do
    local et, ft, erss = {}, {}, {}
    local e, f
    for i = 1, RUNS do
      f = floor_run(srv, r, k, N)
      e = engine_run(srv, r, k, N, CONC, 0, MAXC)
      ft[i], et[i], erss[i] = f.time, e.time, e.rss_kb
    end
    notes[#notes + 1] = ("%d worker(s), engine: %s"):format(k, per_item(e, N))
    notes[#notes + 1] = ("%d worker(s), floor:  %s"):format(k, per_item(f, N))
    e, f = median(et), median(ft)
    row{ ("no-op %d, %d worker%s"):format(N, k, k > 1 and "s" or ""), rate(N, e),
         ("%.1f MB"):format(median(erss) / 1024), rate(N, f), ("%.2fx"):format(f / e),
         ">= 0.5x floor", verdict(f / e >= 0.5) }
  end
end

local function sleepers(srv, r)
  local t = {}
  for _, k in ipairs{ 1, 4 } do
    local ts = {}
    for i = 1, RUNS do ts[i] = engine_run(srv, r, k, SLEEP_N, SLEEP_CONC, 0.01, MAXC).time end
    t[k] = median(ts)
  end
  local speedup = t[1] / t[4]
  row{ ("sleep 10 ms x %d, concurrency %d: 1 -> 4 workers"):format(SLEEP_N, SLEEP_CONC),
       ("%.3f s -> %.3f s"):format(t[1], t[4]), "", "", ("%.2fx faster"):format(speedup),
       ">= 3.5x faster", verdict(speedup >= 3.5) }
end

local function memory(srv, r)
  local name = fresh_name(r)
  local m = result_of({ BIN, SCRIPT, "outstanding", srv.url, name, OUTSTANDING }, 900)
  local used = tonumber(r:call("INFO", "memory"):match("used_memory:(%d+)"))
  fresh_name(r)
  local function mb(kb) return kb / 1024 end
  notes[#notes + 1] = ("coordinator with %d items outstanding (no worker; enqueued in %.2f s): "
    .. "RSS %.1f MB (%.1f MB before the run: +%.0f B an item), Lua heap %.1f MB "
    .. "(%.1f MB live after a full GC; %.1f MB before the run); redis-server used_memory %.1f MB")
    :format(OUTSTANDING, m.time, mb(m.rss_kb), mb(m.base_rss_kb),
            (m.rss_kb - m.base_rss_kb) * 1024 / OUTSTANDING, mb(m.heap_kb), mb(m.live_kb),
            mb(m.base_heap_kb), used / 1048576)
end

local function print_table()
  local head = { "measure", "engine", "coordinator peak RSS", "floor", "ratio", "target", "" }
  local all = { head }
  for _, x in ipairs(rows) do all[#all + 1] = x end
  local w = {}
  for _, x in ipairs(all) do
    for i = 1, #head do w[i] = math.max(w[i] or 0, #(x[i] or "")) end
  end
  for _, x in ipairs(all) do
    local cells = {}
    for i = 1, #head do cells[i] = (x[i] or "") .. (" "):rep(w[i] - #(x[i] or "")) end
    io.write((table.concat(cells, "  "):gsub("%s+$", "")), "\n")
  end
end

local srv = redisd.start()
local ok, err = xpcall(pf.run, debug.traceback, function()
  local r = pf.redis.connect(srv.url)
  local version = r:call("INFO", "server"):match("redis_version:([%d.]+)")
  throughput(srv, r)
  sleepers(srv, r)
  memory(srv, r)
  r:close()
  local f = io.open("/proc/cpuinfo")
  local cpu = f and f:read("a"):match("model name%s*:%s*([^\n]+)") or "?"
  if f then f:close() end
  io.write(("# queue bench %s, %s, redis %s, %s; median of %d run(s); ratio = floor time / engine time\n"
    .. "# engine: concurrency %d a worker, max_concurrency %d; floor: COUNT %d, %d outstanding\n")
    :format(os.date("!%Y-%m-%d %H:%M UTC"), cpu, version or "?",
            SMOKE and "SMOKE (small N, not judged)" or "full", RUNS, CONC, MAXC, CONC, MAXC))
  print_table()
  for _, n in ipairs(notes) do io.write(n, "\n") end
end)
srv:kill()
if not ok then
  io.stderr:write("bench/queue.lua: ", tostring(err), "\n")
  os.exit(1)
end

-- pf.queue, distribute = q and pf.work (API.md section 9), against a real
-- redis-server of the spec's own (support.redisd) and worker processes
-- (the pocketflow binary running support/queue_worker.lua).
local pf = require "pocketflow"
local uv = require "luv"
local redisd = require "support.redisd"
local left = require "support.leftovers"
local qf = require "support.queueflow"
local warnings = require "support.warnings"

local bin = assert(os.getenv("PF_BIN"))
local src = assert(os.getenv("PF_SRC"))
local slow = os.getenv("PF_MODE") ~= "plain"

local tmp = os.tmpname()
os.remove(tmp)
assert(uv.fs_mkdir(tmp, 448))

local workers = {}
local names = 0

-- a worker process: { marker, err = its stderr file }
local function start_worker(srv, name, lease, variant, conc, max_deliveries)
  local m = left.marker()
  local w = { marker = m, err = ("%s/w%s.err"):format(tmp, m) }
  local cmd = ("%s %s/spec/support/queue_worker.lua %s %s %s %s %d %s %d 2>%s >/dev/null &")
    :format(bin, src, srv.url, name, lease, variant, conc or 4, m, max_deliveries or 3, w.err)
  assert(os.execute(cmd))
  workers[#workers + 1] = w
  return w
end

local function stderr_of(w)
  local f = io.open(w.err)
  local s = f and f:read("a") or ""
  if f then f:close() end
  return s
end

-- waits (in the task) until test() is true, 60 s at most
local function wait_until(test, what)
  local deadline = uv.hrtime() + 60e9
  while not test() do
    if uv.hrtime() > deadline then error("timed out waiting for " .. what) end
    pf.sleep(0.02)
  end
end

local function kill(w)
  for _, pid in ipairs(left.pids(w.marker)) do uv.kill(pid, "sigkill") end
  assert.equal(0, left.wait_gone(w.marker), "a worker is still running")
end

local function kill_all()
  for _, w in ipairs(workers) do kill(w) end
  workers = {}
end

local function new_name()
  names = names + 1
  return ("q%d_%d"):format(uv.os_getpid(), names)
end

local queues = {}
local function build(o)
  local flow, q = qf.build(o)
  queues[#queues + 1] = q
  return flow, q
end

-- a client closed after the spec, whatever happens
local function redis(url)
  local r = pf.redis.connect(url)
  queues[#queues + 1] = r
  return r
end

local function close_all()
  pf.run(function()
    for _, q in ipairs(queues) do q:close() end
    qf.close()
  end)
  queues = {}
end

local local_result = qf.local_result

describe("pf.queue", function()
  local srv

  setup(function() srv = redisd.start() end)
  teardown(function()
    kill_all()
    close_all()
    if srv then srv:kill() end
    os.execute("rm -rf " .. tmp)
  end)
  after_each(function()
    kill_all()
    close_all()
  end)

  it("checks its options, naming the option and the value", function()
    local ok = { redis = "redis://127.0.0.1:1", name = "n" }
    local function with(k, v)
      local o = {}
      for a, b in pairs(ok) do o[a] = b end
      o[k] = v
      return o
    end
    assert.error_matches(function() pf.queue(nil) end, "pf.queue: options must be a table %(got nil%)")
    assert.error_matches(function() pf.queue(with("lease", 0)) end,
      "pf.queue: lease must be a finite number of seconds >= 0.1 %(got 0%)")
    assert.error_matches(function() pf.queue(with("lease", "x")) end, 'lease must be .* %(got "x"%)')
    assert.error_matches(function() pf.queue(with("max_deliveries", 1.5)) end,
      "pf.queue: max_deliveries must be a positive integer %(got 1.5%)")
    assert.error_matches(function() pf.queue(with("max_deliveries", 0)) end, "%(got 0%)")
    assert.error_matches(function() pf.queue(with("redis", "http://x")) end,
      'pf.queue: redis must be a redis:// URL %(got "http://x"%)')
    assert.error_matches(function() pf.queue(with("name", "")) end, 'name must be a non%-empty string.*%(got ""%)')
    assert.error_matches(function() pf.queue(with("name", 3)) end, "%(got 3%)")
    assert.error_matches(function() pf.queue(with("nmae", 3)) end, "pf.queue: unknown option 'nmae'")
    assert.error_matches(function() pf.queue{ name = "x" } end, "pf.queue: redis is required")
    local q = pf.queue(ok)
    assert.equal(30, q.lease)
    assert.equal(3, q.max_deliveries)
    -- distribute is checked where the node is made
    assert.error_matches(function() pf.ParallelBatchNode{ distribute = 3 } end,
      "ParallelBatchNode: distribute must be a pf.queue %(got number%)")
    assert.error_matches(function() pf.BatchNode{ distribute = q } end,
      "BatchNode: distribute needs a parallel batch node or flow")
    assert.error_matches(function() pf.Node{ name = "N", distribute = q } end,
      "N: distribute needs a parallel batch node or flow")
    assert.is_table(pf.ParallelBatchFlow{ distribute = q })
    assert.error_matches(function() pf.work(q, {}, {}) end, "pf.work: the flow must be a pocketflow node")
    assert.error_matches(function() pf.work({}, pf.Flow()) end, "pf.work: the queue must be a pf.queue")
    assert.error_matches(function() pf.work(q, pf.Flow(), { concurrency = 0 }) end,
      "pf.work: concurrency must be a positive integer %(got 0%)")
    assert.error_matches(function() pf.work(q, pf.Flow(), { concurency = 2 }) end,
      "pf.work: unknown option 'concurency'")
  end)

  it("gives a refused connection's error, from the coordinator and the worker", function()
    local url = ("redis://127.0.0.1:%d"):format(redisd.free_port())
    local flow, q = qf.build{ url = url, name = "refused" }
    local ok, err = pcall(flow.run, flow, { n = 3 })
    assert.is_false(ok)
    assert.matches("pf.redis: cannot connect to " .. url:gsub("%p", "%%%0") .. ": connection refused", err)
    ok, err = pcall(pf.work, q, flow)
    assert.is_false(ok)
    assert.matches("pf.redis: cannot connect to " .. url:gsub("%p", "%%%0") .. ": connection refused", err)
    pf.run(function() q:close() end)
  end)

  it("runs 1,000 items on 3 worker processes with the result of a local run", function()
    local name = new_name()
    for _ = 1, 3 do start_worker(srv, name, 30, "plain", 16) end
    local flow, q = build{ url = srv.url, name = name, max_concurrency = 300 }
    local shared = { n = 1000, keep = "kept" }
    pf.run(function()
      flow:run(shared)
      wait_until(function() return q:stats().workers == 3 end, "3 workers")
      local st = q:stats()
      assert.same({ pending = 0, in_flight = 0, dead = 0, workers = 3 }, st)
    end)
    assert.same(local_result(1000), shared)
    assert.equal(1000, #shared.squares)
    assert.same({ k = 7, seen = "kept" }, shared.k7)
    pf.run(function() q:close() end)
  end)

  it("finishes a batch whose worker is SIGKILLed mid-item, each item counted once", function()
    local name = new_name()
    local flow, q = build{ url = srv.url, name = name, lease = 1, sleep = 0.4 }
    local r = redis(srv.url)
    r:call("DEL", "runs", "running", "max_running")
    local a = start_worker(srv, name, 1, "count", 4)
    local shared = { n = 24, keep = "kept" }
    pf.run(function()
      local run = pf.spawn(function() flow:run(shared) end)
      -- a holds items (running their exec) when it is killed
      wait_until(function() return (tonumber(r:call("GET", "running")) or 0) >= 3 end, "items running on a")
      start_worker(srv, name, 1, "count", 4)
      kill(a)
      run:wait()
    end)
    local runs, total = r:call("HGETALL", "runs"), 0
    local seen = {}
    for j = 1, #runs, 2 do
      seen[tonumber(runs[j])] = tonumber(runs[j + 1])
      total = total + tonumber(runs[j + 1])
    end
    for i = 1, 24 do assert.is_true(seen[i] >= 1, "item " .. i .. " never ran") end
    assert.is_true(total > 24, "the killed worker's items ran again")
    -- each counted once: the same result as a local run
    assert.same(local_result(24), shared)
    pf.run(function() r:close() q:close() end)
  end)

  it("runs items on the worker with the node's retries and exec_fallback", function()
    -- with max_deliveries = 1 a failed run would fail the batch: the
    -- retry and the fallback happened within the one run on the worker
    for _, variant in ipairs { "flaky", "fallback" } do
      local name = new_name()
      start_worker(srv, name, 30, variant, 4, 1)
      local flow = build{ url = srv.url, name = name, variant = variant, max_deliveries = 1 }
      local shared = { n = 12, keep = "kept" }
      flow:run(shared)
      assert.same(local_result(12), shared)
      kill_all()
    end
  end)

  it("puts a poison item on the dead-letter stream and fails the batch", function()
    local name = new_name()
    start_worker(srv, name, 1, "poison", 4)
    start_worker(srv, name, 1, "poison", 4)
    local flow, q = build{ url = srv.url, name = name, lease = 1, variant = "poison" }
    local ok, err = pcall(flow.run, flow, { n = 40, keep = "kept" })
    assert.is_false(ok)
    assert.matches("^item 17 failed on 3 workers: .*poison 17", err)
    pf.run(function()
      assert.equal(1, q:stats().dead)
      local r = redis(srv.url)
      local dead = r:call("XRANGE", "pf:{" .. name .. "}:dead", "-", "+")
      local f = {}
      for j = 1, #dead[1][2], 2 do f[dead[1][2][j]] = dead[1][2][j + 1] end
      assert.equal("17", f.i)
      assert.equal("3", f.t)
      assert.matches("poison 17", f.e)
      assert.equal(17, pf.deserialize(f.v))
      -- the rest of the batch was taken off the queue
      wait_until(function()
        local s = q:stats()
        return s.pending == 0 and s.in_flight == 0
      end, "an empty queue")
      r:close()
    end)
    pf.run(function() q:close() end)
  end)

  it("leaves an item of a different graph and warns; a right worker runs it", function()
    local name = new_name()
    local wrong = start_worker(srv, name, 1, "other", 4)
    local flow, q = build{ url = srv.url, name = name, lease = 1 }
    local shared = { n = 5, keep = "kept" }
    pf.run(function()
      local run = pf.spawn(function() flow:run(shared) end)
      wait_until(function() return stderr_of(wrong):find("different graph", 1, true) end, "the warning")
      assert.matches("pocketflow: warning: pf.work: item %d+ of Main > Square comes from a different graph",
                     stderr_of(wrong))
      -- left, not acknowledged, not run
      assert.equal("running", run:status())
      local s = q:stats()
      assert.equal(5, s.pending + s.in_flight)
      start_worker(srv, name, 1, "plain", 4)
      run:wait()
    end)
    assert.same(local_result(5), shared)
    pf.run(function() q:close() end)
  end)

  it("keeps pending + in_flight within max_concurrency", function()
    local name = new_name()
    local r = redis(srv.url)
    r:call("DEL", "runs", "running", "max_running")
    start_worker(srv, name, 30, "count", 8)
    start_worker(srv, name, 30, "count", 8)
    local flow, q = build{ url = srv.url, name = name, max_concurrency = 5, sleep = 0.05 }
    local shared = { n = 60, keep = "kept" }
    local most = 0
    pf.run(function()
      local run = pf.spawn(function() flow:run(shared) end)
      while run:status() == "running" do
        local s = q:stats()
        most = math.max(most, s.pending + s.in_flight)
        pf.sleep(0.005)
      end
      run:wait()
    end)
    assert.is_true(most <= 5, "outstanding " .. most)
    assert.is_true(most >= 1)
    local max_running = tonumber(r:call("GET", "max_running"))
    assert.is_true(max_running <= 5 and max_running >= 2, "max running " .. max_running)
    assert.same(local_result(60), shared)
    pf.run(function() r:close() q:close() end)
  end)

  it("takes a cancelled batch's items off the queue; warns while no worker is there", function()
    local name = new_name()
    local flow, q = build{ url = srv.url, name = name, lease = 0.5 }
    pf.run(function()
      local ok, err
      local got = warnings.of(function()
        ok, err = pcall(pf.timeout, 2, flow.run, flow, { n = 50, keep = "kept" })
      end)
      assert.is_false(ok)
      assert.matches("timeout", err)
      assert.same({ ("Main > Square: no worker is attached to queue '%s'; the batch waits for one (pf.work)")
        :format(name) }, got)
      wait_until(function() return q:stats().pending == 0 end, "the items gone")
      local r = redis(srv.url)
      assert.same({}, r:call("KEYS", "pf:{" .. name .. "}:[mr]:*"))
    end)
  end)

  it("runs a worker in a task of the coordinator's process; cancelled, it leaves nothing", function()
    local name = new_name()
    local flow, q = build{ url = srv.url, name = name, lease = 1 }
    local shared = { n = 30, keep = "kept" }
    pf.run(function()
      local w = pf.spawn(pf.work, q, flow, { concurrency = 3 })
      local ok, err = pcall(pf.timeout, 60, flow.run, flow, shared)
      local workers = q:stats().workers
      w:cancel()
      assert(ok, err)
      assert.equal(1, workers)
      wait_until(function() return q:stats().workers == 0 end, "the worker gone")
    end)
    assert.same(local_result(30), shared)
  end)

  it("forgets the consumers of workers gone for 10 leases", function()
    local name = new_name()
    local flow, q = build{ url = srv.url, name = name, lease = 0.1 }
    local stream = "pf:{" .. name .. "}:items"
    pf.run(function()
      local r = redis(srv.url)
      r:call("XGROUP", "CREATE", stream, "pf", "0", "MKSTREAM")
      r:call("XGROUP", "CREATECONSUMER", stream, "pf", "ghost")
      pf.sleep(2.2)   -- 10 leases and a read's block
      local w = pf.spawn(pf.work, q, flow, { concurrency = 1 })
      local function names()
        local out = {}
        for _, c in ipairs(r:call("XINFO", "CONSUMERS", stream, "pf")) do out[#out + 1] = c[2] end
        return out
      end
      assert.same({ "ghost" }, names())
      local ok, err = pcall(wait_until, function() return #names() == 0 end,
                            "the ghost consumer gone")
      w:cancel()
      assert(ok, err)
    end)
  end)

  it("goes on when Redis restarts within the lease: coordinator and workers", function()
    local name = new_name()
    start_worker(srv, name, 10, "count", 4)
    local flow, q = build{ url = srv.url, name = name, lease = 10, sleep = 0.1 }
    local shared = { n = 40, keep = "kept" }
    pf.run(function()
      local r = redis(srv.url)
      r:call("DEL", "runs", "running", "max_running")
      local run = pf.spawn(function() flow:run(shared) end)
      wait_until(function()
        local runs = r:call("HLEN", "runs")
        return runs >= 8
      end, "some items done")
      r:close()
      srv:kill()
      pf.sleep(0.5)
      srv:restart()
      run:wait()
    end)
    assert.same(local_result(40), shared)
    pf.run(function() q:close() end)
  end)
end)

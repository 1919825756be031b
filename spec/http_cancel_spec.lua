-- pf.http under cancellation: requests in flight cancelled at random
-- moments (task:cancel, pf.timeout), while connecting, waiting for the
-- answer, or mid-stream with the stream function waiting. Each round
-- checks that later requests work, that no descriptor is left and that
-- Lua memory stays flat. Seeded: a failure names its seed.
local pf = require "pocketflow"
local httpd = require "support.httpd"
local res = require "support.fdcount"

local valgrind = os.getenv("PF_MODE") == "valgrind"
local N = valgrind and 60 or 300
-- the connection cache keeps at most 64 idle connections (src/http.c)
local IDLE_MAX = 64

describe("pf.http cancelled in flight", function()
  local srv
  before_each(function() srv = httpd.start() end)
  after_each(function() srv:close() end)

  -- N requests to a server that answers after 0.5 s; half are cancelled
  -- at a random moment, by task:cancel or by pf.timeout
  local function storm(seed)
    math.randomseed(seed)
    local done, cancelled = 0, 0
    pf.run(function()
      local tasks = {}
      for i = 1, N do
        local how = i % 4
        -- some by name, so that cancels also land while libcurl resolves
        local base = i % 8 < 2 and srv.url:gsub("127%.0%.0%.1", "localhost") or srv.url
        tasks[i] = pf.spawn(function()
          if how == 1 then
            return pf.timeout(math.random() * 0.7, pf.http.get, base .. "/slow?delay=0.5")
          end
          return pf.http.get(base .. "/slow?delay=0.5").body
        end)
        if how == 3 then
          pf.spawn(function() pf.sleep(math.random() * 0.7); tasks[i]:cancel() end)
        end
      end
      for i = 1, N do
        local ok, err = pcall(tasks[i].wait, tasks[i])
        if ok then
          done = done + 1
        else
          assert(err:find("timeout") or err:find("cancelled"), "seed " .. seed .. ": " .. err)
          cancelled = cancelled + 1
        end
      end
      assert.equal("hello", pf.http.get(srv.url .. "/hello").body)
    end)
    return done, cancelled
  end

  it("survives " .. N .. " requests with half cancelled at random moments", function()
    local fd0 = res.fds()
    local done, cancelled = storm(1)
    assert.equal(N, done + cancelled)
    assert.is_true(cancelled > 0 and done >= N / 2, done .. " done, " .. cancelled .. " cancelled")
    -- both ends of the kept connections are in this process
    assert.is_true(res.fds() <= fd0 + 2 * IDLE_MAX + 4, "descriptors: " .. fd0 .. " -> " .. res.fds())
  end)

  it("leaves no descriptor and no memory behind over rounds", function()
    local seed = os.time()
    local fd0 = res.fds()
    storm(seed)
    local mem1 = res.mem()
    for r = 1, valgrind and 2 or 4 do storm(seed + r) end
    local fd2, mem2 = res.fds(), res.mem()
    -- what may stay open: both ends of the idle connections curl keeps
    -- (at most one per concurrent request, and at most IDLE_MAX), however
    -- many requests were cancelled over the rounds
    local bound = fd0 + 2 * math.min(N + 1, IDLE_MAX) + 4
    assert.is_true(fd2 <= bound, "seed " .. seed .. ": descriptors " .. fd0 .. " -> " .. fd2)
    assert.is_true(mem2 < mem1 * 1.5 + 256, "seed " .. seed .. ": KiB " .. mem1 .. " -> " .. mem2)
  end)
end)

-- A process with few descriptors (ulimit -n 64): a burst of requests
-- queues for connections instead of failing, the idle connections kept
-- afterwards are bounded, and a request that cannot get a socket says
-- "too many open files".
describe("pf.http with few file descriptors", function()
  local bin = assert(os.getenv("PF_BIN"), "PF_BIN: the built pocketflow binary")
  local child = [[
    local pf = require "pocketflow"
    local res = require "support.fdcount"
    local url, other = arg[1], arg[2]
    -- libcurl loaded and one idle connection (to other) kept
    assert(pf.http.get(other .. "/hello").body == "hello")
    local fd0 = res.fds()
    local fns = {}
    for i = 1, 300 do fns[i] = function() return pf.http.get(url .. "/id?i=" .. i).body end end
    local bodies = pf.gather(fns)
    for i = 1, 300 do assert(bodies[i] == "id " .. i, bodies[i]) end
    print("burst ok, descriptors kept: " .. (res.fds() - fd0))
    local files = {}
    while true do
      local f = io.open("/dev/null")
      if not f then break end
      files[#files + 1] = f
    end
    local ok, err = pcall(pf.http.get, other .. "/hello")
    print(ok, err)
    for _, f in ipairs(files) do f:close() end
    print("after: " .. pf.http.get(other .. "/hello").body)
  ]]

  it("queues a burst, keeps few idle connections and names fd exhaustion", function()
    local srv, other = httpd.start(), httpd.start()
    local script = os.tmpname()
    local f = assert(io.open(script, "w")); f:write(child); f:close()
    local r = pf.run(function()
      return pf.exec({ "sh", "-c", 'ulimit -n 64 && exec "$0" "$@"', bin, script, srv.url, other.url },
        { timeout = 120 })
    end)
    os.remove(script)
    srv:close()
    other:close()
    assert.equal(0, r.code, r.stdout .. r.stderr)
    assert.is_true(not r.signal or r.signal == 0, "killed by signal " .. tostring(r.signal))
    local kept = tonumber(r.stdout:match("burst ok, descriptors kept: (%-?%d+)"))
    assert.truthy(kept, r.stdout .. r.stderr)
    -- at most 16 idle connections (half of the 32 a 64-descriptor process
    -- may open), one of them the connection to other from before
    assert.is_true(kept <= 16, "descriptors kept: " .. kept)
    assert.truthy(r.stdout:find("false\tpf.http: GET " .. other.url .. "/hello: too many open files", 1, true), r.stdout)
    assert.truthy(r.stdout:find("after: hello", 1, true), r.stdout)
  end)
end)

-- Streams: the stream function waits (pf.sleep) while curl is paused by
-- flow control (more than 1 MiB buffered) or still delivering; tasks are
-- cancelled at random points, by task:cancel or pf.timeout.
describe("pf.http streams cancelled at random points", function()
  local srv
  before_each(function() srv = httpd.start() end)
  after_each(function() srv:close() end)

  it("pauses curl while the stream function waits, and resumes it", function()
    local size = 5 * 1000 * 1000
    local chunks, biggest, total = 0, 0, 0
    local r = pf.http.get(srv.url .. "/big?size=" .. size, { stream = function(c)
      chunks = chunks + 1
      total = total + #c
      if #c > biggest then biggest = #c end
      if chunks == 1 then pf.sleep(0.3) end   -- everything arrives meanwhile
    end })
    assert.equal(200, r.status)
    assert.equal(size, total)
    -- after the wait the task takes what was buffered in one piece: about
    -- 1 MiB (the pause threshold), not the whole body
    assert.is_true(biggest >= 1024 * 1024, "biggest chunk " .. biggest)
    assert.is_true(biggest < 2 * 1024 * 1024, "biggest chunk " .. biggest)
  end)

  local function round(seed, n)
    math.randomseed(seed)
    local outcomes = { ok = 0, cancelled = 0 }
    pf.run(function()
      local tasks = {}
      for i = 1, n do
        local path = (i % 2 == 0) and "/big?size=3000000" or "/drip?n=30&delay=0.01"
        local nap = math.random() * 0.02
        local function get()
          return pf.http.get(srv.url .. path, { stream = function() pf.sleep(nap) end }).status
        end
        if i % 3 == 0 then
          local limit = math.random() * 0.5
          tasks[i] = pf.spawn(function() return pf.timeout(limit, get) end)
        else
          tasks[i] = pf.spawn(get)
          if i % 3 == 1 then
            local at = math.random() * 0.5
            pf.spawn(function() pf.sleep(at); tasks[i]:cancel() end)
          end
        end
      end
      for i = 1, n do
        local ok, err = pcall(tasks[i].wait, tasks[i])
        if ok then
          outcomes.ok = outcomes.ok + 1
        else
          assert(err:find("timeout") or err:find("cancelled"), "seed " .. seed .. ": " .. err)
          outcomes.cancelled = outcomes.cancelled + 1
        end
      end
      assert.equal("hello", pf.http.get(srv.url .. "/hello").body)
    end)
    return outcomes
  end

  it("leaves no descriptor and no memory behind, and later requests work", function()
    local seed = os.time()
    local n = valgrind and 12 or 40
    local fd0 = res.fds()
    round(seed, n)
    local mem1 = res.mem()
    local seen = { ok = 0, cancelled = 0 }
    for r = 1, valgrind and 2 or 5 do
      local o = round(seed + r, n)
      seen.ok, seen.cancelled = seen.ok + o.ok, seen.cancelled + o.cancelled
    end
    assert.is_true(seen.cancelled > 0, "seed " .. seed .. ": nothing was cancelled")
    local fd2, mem2 = res.fds(), res.mem()
    -- both ends of at most one idle connection per concurrent request
    local bound = fd0 + 2 * (n + 1) + 4
    assert.is_true(fd2 <= bound, "seed " .. seed .. ": descriptors " .. fd0 .. " -> " .. fd2)
    assert.is_true(mem2 < mem1 * 1.5 + 256, "seed " .. seed .. ": KiB " .. mem1 .. " -> " .. mem2)
  end)
end)

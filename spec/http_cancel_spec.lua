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
        tasks[i] = pf.spawn(function()
          if how == 1 then
            return pf.timeout(math.random() * 0.7, pf.http.get, srv.url .. "/slow?delay=0.5")
          end
          return pf.http.get(srv.url .. "/slow?delay=0.5").body
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
    storm(seed)
    local fd1, mem1 = res.fds(), res.mem()
    for r = 1, valgrind and 1 or 3 do storm(seed + r) end
    local fd2, mem2 = res.fds(), res.mem()
    assert.is_true(fd2 <= fd1 + 2, "seed " .. seed .. ": descriptors " .. fd1 .. " -> " .. fd2)
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
    -- at most 16 idle connections (half of the 32 a 64-descriptor process may open)
    assert.is_true(kept <= 16 + 2, "descriptors kept: " .. kept)
    assert.truthy(r.stdout:find("false\tpf.http: GET " .. other.url .. "/hello: too many open files", 1, true), r.stdout)
    assert.truthy(r.stdout:find("after: hello", 1, true), r.stdout)
  end)
end)

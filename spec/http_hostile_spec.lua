-- pf.http against a hostile server (spec/support/hostile.lua): resets,
-- closed keep-alive connections, slow drips, huge headers and lines, cut
-- event streams, bad chunking. Every request returns or raises an error
-- naming its URL and the real reason; nothing crashes or hangs, and no
-- descriptor is left.
local pf = require "pocketflow"
local hostile = require "support.hostile"
local res = require "support.fdcount"

local valgrind = os.getenv("PF_MODE") == "valgrind"

describe("pf.http against a hostile server", function()
  local srv
  before_each(function() srv = hostile.start{ lifetime = 60 } end)
  after_each(function() srv:close() end)

  -- n requests to path, 'wide' at a time; returns the error messages
  local function burst(path, n, wide)
    local errors = {}
    pf.run(function()
      for first = 1, n, wide do
        local fns = {}
        for i = first, math.min(n, first + wide - 1) do
          fns[#fns + 1] = function()
            local ok, err = pcall(pf.http.get, srv.url .. path)
            if not ok then errors[#errors + 1] = err end
          end
        end
        pf.gather(fns)
      end
    end)
    return errors
  end

  for _, path in ipairs{ "/close-after", "/reset-after" } do
    it("serves every request when the server drops kept-alive connections (" .. path .. ")", function()
      local n = valgrind and 200 or 2000
      local errors = burst(path, n, 50)
      assert.equal(0, #errors, errors[1])
      assert.is_true(srv.connections > n / 50)   -- connections did get dropped
    end)
  end

  -- path, the words the error must contain
  local failing = {
    { "/reset", "Connection reset by peer" },
    { "/reset-mid", "Connection reset by peer" },
    { "/close-mid", "partial file" },
    { "/bad-chunk", "chunked" },
    { "/long-chunk", "chunked" },
    { "/garbage", "HTTP/0.9" },
    { "/huge-header", "header line over 100 KB" },
    { "/endless-headers", "Too large response headers" },
  }
  for _, case in ipairs(failing) do
    local path, why = case[1], case[2]
    it("raises a clear error for " .. path .. " and leaves no descriptor", function()
      local url = srv.url .. path
      local fd0 = res.fds()
      for _ = 1, 5 do
        local ok, err = pcall(pf.http.get, url, { timeout = 30 })
        assert.is_false(ok)
        assert.truthy(err:find("pf.http: GET " .. url .. ": ", 1, true), err)
        assert.truthy(err:find(why, 1, true), err)
      end
      assert.equal("ok", pf.http.get(srv.url .. "/ok").body)
      srv:close()
      assert.is_true(res.fds() <= fd0 + 1, "descriptors " .. fd0 .. " -> " .. res.fds())
    end)
  end

  it("waits out a slow drip", function()
    local r = pf.http.get(srv.url .. "/drip?delay=0.005", { timeout = 60 })
    assert.equal("dripped", r.body)
  end)

  it("times out a server that never answers, naming the URL", function()
    local url = srv.url .. "/silent"
    local ok, err = pcall(pf.http.get, url, { timeout = 0.3 })
    assert.is_false(ok)
    assert.truthy(err:find("pf.http: GET " .. url .. ": timeout", 1, true), err)
  end)

  for path, why in pairs{ ["/sse-cut"] = "partial file", ["/sse-reset"] = "Connection reset by peer" } do
    it("delivers the events of a cut event stream, then its real error (" .. path .. ")", function()
      local url = srv.url .. path
      local got = {}
      local ok, err = pcall(pf.http.get, url, { stream = pf.http.sse(function(ev)
        got[#got + 1] = ev.data
      end) })
      assert.is_false(ok)
      assert.same({ "one", "two" }, got)
      assert.truthy(err:find("pf.http: GET " .. url .. ": ", 1, true), err)
      assert.truthy(err:find(why, 1, true), err)
    end)
  end

  it("stops an event stream whose line passes max_line, naming the URL", function()
    local url = srv.url .. "/sse-huge-line"
    local events = 0
    local ok, err = pcall(pf.http.get, url, { stream = pf.http.sse(function() events = events + 1 end) })
    assert.is_false(ok)
    assert.equal(0, events)
    assert.equal("pf.http.sse: GET " .. url .. ": a line is longer than max_line (1048576 bytes)",
      (err:gsub("\nstack traceback:.*", "")))
    assert.equal("ok", pf.http.get(srv.url .. "/ok").body)
  end)

  it("takes an 8 MB event line in 16 KB pieces when max_line allows it", function()
    local sizes = {}
    local r = pf.http.get(srv.url .. "/sse-huge-line", { stream = pf.http.sse(function(ev)
      sizes[#sizes + 1] = #ev.data
    end, { max_line = 16 * 1024 * 1024 }) })
    assert.equal(200, r.status)
    assert.same({ 8 * 1024 * 1024, 5 }, sizes)
  end)
end)

-- Attempts (API section 6) outside the walk: the options checked at
-- construction, the computed wait (src/attempts.c through
-- core.retry_delay) and pf.http.check against a local server
-- (spec/support/httpd.lua).
local pf = require "pocketflow"
local core = require "pocketflow.core"
local httpd = require "support.httpd"

local nan, inf = 0 / 0, math.huge

-- the message of constructing cls with opts, from a line of this file
local function raised(cls, opts)
  local line = debug.getinfo(1, "l").currentline + 1
  local ok, err = pcall(function() local n = cls(opts) return n end)
  assert.is_false(ok, "constructed")
  local where = ("attempts_spec.lua:%d: "):format(line)
  local at = err:find(where, 1, true)
  assert(at, "error not at the caller's line: " .. err)
  return err:sub(at + #where)
end

-- a table whose __tostring must never be called by a check
local loud = setmetatable({}, { __tostring = function() error("__tostring called") end })

-- each option: what it must be, and its bad values as messages show them
local BAD = {
  timeout = { "a finite number of seconds > 0",
    { { 0, "0" }, { -1, "-1" }, { -0.5, "-0.5" }, { nan, "nan" }, { inf, "inf" },
      { -inf, "-inf" }, { "10", "string" }, { true, "boolean" }, { loud, "table" } } },
  deadline = { "a finite number of seconds > 0",
    { { 0, "0" }, { -3, "-3" }, { nan, "nan" }, { inf, "inf" }, { -inf, "-inf" },
      { "60", "string" }, { false, "boolean" }, { loud, "table" } } },
  backoff = { "a finite number >= 1",
    { { 0.5, "0.5" }, { 0, "0" }, { -2, "-2" }, { nan, "nan" }, { inf, "inf" },
      { -inf, "-inf" }, { "2", "string" }, { loud, "table" } } },
  max_wait = { "a finite number of seconds >= 0",
    { { -1, "-1" }, { -0.001, "-0.001" }, { nan, "nan" }, { inf, "inf" },
      { -inf, "-inf" }, { "30", "string" }, { print, "function" } } },
  jitter = { "a number in [0, 1]",
    { { 2, "2" }, { 1.5, "1.5" }, { -0.1, "-0.1" }, { -1, "-1" }, { nan, "nan" },
      { inf, "inf" }, { -inf, "-inf" }, { "0.5", "string" }, { loud, "table" } } },
  retry_on = { "a function",
    { { 1, "1" }, { "f", "string" }, { true, "boolean" }, { loud, "table" },
      { setmetatable({}, { __call = function() return true end }), "table" } } },
}

describe("attempt options", function()
  local Fetch = pf.Node:extend("Fetch")

  for option, spec in pairs(BAD) do
    it(option .. ": every bad value raises at construction, naming node, option and value", function()
      for _, case in ipairs(spec[2]) do
        assert.equal(("Fetch: %s must be %s (got %s)"):format(option, spec[1], case[2]),
          raised(Fetch, { [option] = case[1] }))
      end
    end)
  end

  it("the message is the one documented for jitter", function()
    assert.equal("Fetch: jitter must be a number in [0, 1] (got 2)", raised(Fetch, { jitter = 2 }))
  end)

  it("takes good values, the bounds included, and nil", function()
    local f = function() return true end
    local n = Fetch{ max_retries = 5, wait = 0.5, backoff = 2, max_wait = 30, jitter = 0.5,
      timeout = 10, deadline = 60, retry_on = f }
    assert.equal(2, n.backoff)
    assert.equal(f, n.retry_on)
    Fetch{ backoff = 1, max_wait = 0, jitter = 0, timeout = 1e-3, deadline = 1e-3 }
    Fetch{ jitter = 1, backoff = 1e6, max_wait = 1e9, timeout = 1e9 }
    local m = Fetch{}
    assert.is_nil(m.timeout)
    assert.is_nil(m.deadline)
    assert.is_nil(m.backoff)
    assert.is_nil(m.retry_on)
  end)

  it("checks values set on the class, with the node's name", function()
    local Slow = pf.Node:extend("Slow")
    Slow.timeout = -5
    assert.equal("Slow: timeout must be a finite number of seconds > 0 (got -5)", raised(Slow))
    assert.equal("Api: timeout must be a finite number of seconds > 0 (got -5)",
      raised(Slow, { name = "Api" }))
    Slow.timeout = nil
  end)

  it("checks every kind of node and flow, the flows' timeout and deadline too", function()
    for _, cls in ipairs{ pf.BatchNode, pf.ParallelBatchNode, pf.Flow, pf.BatchFlow,
        pf.ParallelBatchFlow } do
      local name = cls.__name
      assert.equal(name .. ": timeout must be a finite number of seconds > 0 (got 0)",
        raised(cls, { timeout = 0 }))
      assert.equal(name .. ": deadline must be a finite number of seconds > 0 (got inf)",
        raised(cls, { deadline = inf }))
      assert.equal(name .. ": backoff must be a finite number >= 1 (got 0)",
        raised(cls, { backoff = 0 }))
      assert.equal(name .. ": retry_on must be a function (got 3)",
        raised(cls, { retry_on = 3 }))
    end
    local f = pf.Flow{ start = pf.Node{}, timeout = 5, deadline = 10 }
    assert.equal(5, f.timeout)
  end)

  -- before, a flow's option errors (and a class init's super call's)
  -- pointed into init.lua
  it("points at the caller's line through Flow's init and a class's own init", function()
    assert.equal("Flow: max_retries must be a positive integer (got 0)",
      raised(pf.Flow, { max_retries = 0 }))
    assert.equal("Main: wait must be a non-negative number (got -1)",
      raised(pf.Flow, { name = "Main", start = pf.Node{}, wait = -1 }))
    local Own = pf.Node:extend("Own")
    function Own:init(opts) pf.Node.init(self, opts) self.extra = true end
    assert.equal("Own: jitter must be a number in [0, 1] (got -1)", raised(Own, { jitter = -1 }))
  end)
end)

describe("core.retry_delay (src/attempts.c)", function()
  local d = core.retry_delay

  it("is min(max_wait, wait * backoff^(n-1)) shortened by jitter * u", function()
    assert.equal(0.5, d(0.5, 1, nil, 0, 7, 0.3))            -- today's fixed wait
    assert.equal(4, d(0.5, 2, nil, 0, 4, 0.9))
    assert.equal(30, d(0.5, 2, 30, 0, 10, 0))
    assert.equal(15, d(0.5, 2, 30, 0.5, 10, 1))
    assert.near(8 * 0.75, d(1, 2, 30, 0.5, 4, 0.5), 1e-12)
    for _ = 1, 1000 do
      local w = d(1, 2, 30, 0.5, 4, math.random())
      assert.is_true(w > 4 and w <= 8, w)
    end
  end)

  it("never overflows: a huge backoff stops at max_wait or at 1e9 s", function()
    assert.equal(30, d(1, 1e300, 30, 0, 1000, 0))
    assert.equal(1e9, d(1, 10, nil, 0, 0x7fffffff, 0))
    assert.equal(1e9, d(inf, 1, nil, 0, 1, 0))
    assert.equal(0, d(0, inf, nil, 0, 5, 0))
    assert.error_matches(function() d(1, 2, nil, 0, 0, 0) end, "must be a positive int")
  end)
end)

describe("pf.http.check", function()
  local srv
  before_each(function()
    srv = httpd.start{ routes = {
      ["/limited"] = function(req, res)
        res:send(429, "slow down", { ["Retry-After"] = srv.after or req.query.after or "2",
          ["X-Why"] = "quota" })
      end,
      ["/moved"] = function(_, res) res:send(302, "", { Location = "/limited?after=5" }) end,
    } }
  end)
  after_each(function() srv:close() end)

  local function check_error(url)
    local res = pf.http.get(url)
    local ok, err = pcall(pf.http.check, res)
    assert.is_false(ok)
    assert.equal("table", type(err))
    return err, res
  end

  it("returns a 2xx response itself", function()
    local res = pf.http.get(srv.url .. "/hello")
    assert.equal(res, pf.http.check(res))
    local r204 = pf.http.get(srv.url .. "/status?code=204")
    assert.equal(r204, pf.http.check(r204))
  end)

  it("raises a plain table with every field for 404, 429 and 503", function()
    for _, code in ipairs{ 404, 503 } do
      local url = srv.url .. "/status?code=" .. code
      local err, res = check_error(url)
      assert.equal(code, err.status)
      assert.equal("status " .. code, err.body)
      assert.equal(url, err.url)
      assert.equal(res.headers, err.headers)
      assert.is_nil(err.retry_after)
      assert.equal(("HTTP %d from %s"):format(code, url), tostring(err))
    end
    local url = srv.url .. "/limited"
    local err = check_error(url)
    assert.same({ status = 429, body = "slow down", url = url, retry_after = 2 },
      { status = err.status, body = err.body, url = err.url, retry_after = err.retry_after })
    assert.equal("quota", err.headers["x-why"])
    assert.equal("HTTP 429 from " .. url, tostring(err))
  end)

  it("names the final URL after redirects", function()
    local err = check_error(srv.url .. "/moved")
    assert.equal(srv.url .. "/limited?after=5", err.url)
    assert.equal(5, err.retry_after)
    assert.equal("HTTP 429 from " .. srv.url .. "/limited?after=5", tostring(err))
    -- a redirect not followed is not a 2xx either
    local e302 = select(2, pcall(pf.http.check, pf.http.get(srv.url .. "/moved", { follow = false })))
    assert.equal(302, e302.status)
  end)

  it("reads Retry-After as seconds, integer or decimal", function()
    assert.equal(120, check_error(srv.url .. "/limited?after=120").retry_after)
    assert.equal(1.5, check_error(srv.url .. "/limited?after=1.5").retry_after)
    assert.equal(0, check_error(srv.url .. "/limited?after=0").retry_after)
  end)

  it("reads Retry-After as an HTTP date in each form, as seconds from now", function()
    local function after(date)
      srv.after = date   -- sent as it is
      return check_error(srv.url .. "/limited").retry_after
    end
    local function hdate(fmt)   -- 100 s from now, in the C locale's names
      return os.date("!" .. fmt, os.time() + 100)
    end
    for _, fmt in ipairs{ "%a, %d %b %Y %H:%M:%S GMT",     -- IMF-fixdate
                          "%A, %d-%b-%y %H:%M:%S GMT",     -- RFC 850
                          "%a %b %e %H:%M:%S %Y" } do      -- asctime
      local s = after(hdate(fmt))
      assert(s and s >= 90 and s <= 100, fmt .. ": " .. tostring(s))
    end
    -- in the past: 0 (1994, not 2094, for the two-digit year)
    assert.equal(0, after("Sun, 06 Nov 1994 08:49:37 GMT"))
    assert.equal(0, after("Sunday, 06-Nov-94 08:49:37 GMT"))
    assert.equal(0, after("Sun Nov  6 08:49:37 1994"))
    -- fixed instants: 2050-01-01T00:00:00Z is 2524608000 s after the epoch
    local far = after("Sat, 01 Jan 2050 00:00:00 GMT")
    local want = math.max(0, math.min(1e9, 2524608000 - os.time()))
    assert(far >= want - 10 and far <= want, far .. " vs " .. want)
    assert.equal(0, after("Thu, 01 Jan 1970 00:00:00 GMT"))
    -- at most 10^9 s, like any wait (9999-12-31 is further)
    assert.equal(1e9, after("Fri, 31 Dec 9999 23:59:59 GMT"))
  end)

  it("gives no retry_after for an absent or invalid Retry-After", function()
    local function ra(v)
      local ok, err = pcall(pf.http.check, { status = 503, url = "x",
        headers = { ["retry-after"] = v }, body = "" })
      assert.is_false(ok)
      return err.retry_after
    end
    for _, bad in ipairs{ "", "soon", "-1", "+5", "1e3", "0x10", "inf", "nan", "1.", ".5",
        "12, 12", "Sun, 06 Nov 1994 08:49:37 UTC", "Sun, 32 Nov 1994 08:49:37 GMT",
        "Sun, 29 Feb 2023 08:49:37 GMT", "Xyz, 06 Nov 1994 08:49:37 GMT",
        "Sun, 06 Foo 1994 08:49:37 GMT", "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 6 Nov 1994 08:49:37 GMT", "Sunny, 06-Nov-94 08:49:37 GMT",
        "Sun Nov 6 08:49:37 1994", "sun, 06 nov 1994 08:49:37 gmt", 5, loud } do
      assert.is_nil(ra(bad), type(bad) == "string" and bad or type(bad))
    end
    assert.equal(7, ra(" 7\t"))
    assert.equal(1e9, ra(("9"):rep(400)))   -- not inf
    assert.equal(1e9, ra("1000000001"))
    assert.equal(0, ra("Thu, 29 Feb 2024 00:00:00 GMT"))   -- a leap day
    local ok, err = pcall(pf.http.check, { status = 500 })
    assert.is_false(ok)
    assert.is_nil(err.retry_after)
    assert.equal("HTTP 500 from ?", tostring(err))
  end)

  it("refuses what is not a response, at the caller's line", function()
    for _, v in ipairs{ false, "200", 200 } do
      local line = debug.getinfo(1, "l").currentline + 1
      local ok, err = pcall(function() pf.http.check(v) end)
      assert.is_false(ok)
      assert.equal(("attempts_spec.lua:%d: pf.http.check: expected a response (got %s)"):format(
        line, type(v)), err:match("[^/]*$"))
    end
    assert.error_matches(function() pf.http.check({ status = "200" }) end,
      "expected a response %(got a table without an integer status%)")
    assert.error_matches(function() pf.http.check(nil) end, "%(got nil%)")
  end)

  it("in exec, hands exec_fallback the very table it raised, after every retry", function()
    local raised_errs, got = {}, nil
    local Fetch = pf.Node:extend("Fetch")
    function Fetch:exec()
      local ok, err = pcall(pf.http.check, pf.http.get(srv.url .. "/limited?after=3"))
      assert(not ok)
      raised_errs[#raised_errs + 1] = err
      error(err)
    end
    function Fetch:exec_fallback(_, err)
      got = err
      return "fallback " .. err.status .. " " .. tostring(err.retry_after)
    end
    function Fetch:post(shared, _, res) shared.res = res end
    local shared = {}
    pf.Flow{ start = Fetch{ max_retries = 3 } }:run(shared)
    assert.equal("fallback 429 3", shared.res)
    assert.equal(3, #raised_errs)
    assert.equal(3, srv.requests)
    assert.is_true(rawequal(raised_errs[3], got))
    assert.equal("HTTP 429 from " .. srv.url .. "/limited?after=3", tostring(got))
  end)

  it("without a fallback, reaches the caller of run as the same table", function()
    local n = pf.Node{ exec = function() return pf.http.check(pf.http.get(srv.url .. "/status?code=503")) end }
    local ok, err = pcall(n.run, n, {})
    assert.is_false(ok)
    assert.equal(503, err.status)
    assert.equal("HTTP 503 from " .. srv.url .. "/status?code=503", tostring(err))
  end)
end)

-- ------------------------------------------------------ attempts in the walk

local left = require "support.leftovers"

-- Runs node (or flow) over a fresh shared store inside a task of its own;
-- returns the shared store and run's error, if any.
local function run(node)
  local shared = {}
  local ok, err = pcall(node.run, node, shared)
  return shared, (not ok) and err or nil
end

-- the first line of an error (its where line and traceback follow)
local function first_line(err)
  return (tostring(err):match("^[^\n]*"))
end

-- a node class whose runs log each attempt's start (pf.now) and
-- cur_retry, and whose fallback keeps the error it got
local function logged(exec, opts)
  local log = { starts = {}, retries = {} }
  local N = pf.Node:extend("Fetch")
  function N:exec(p)
    log.starts[#log.starts + 1] = pf.now()
    log.retries[#log.retries + 1] = self.cur_retry
    return exec(self, p, #log.starts)
  end
  function N:exec_fallback(_, err)
    log.fallback = err
    return "fallback"
  end
  function N:post(shared, _, res) shared.res = res end
  return N(opts), log
end

-- the waits between the attempts of a log
local function gaps(log)
  local g = {}
  for i = 2, #log.starts do g[i - 1] = log.starts[i] - log.starts[i - 1] end
  return g
end

describe("an attempt's timeout", function()
  it("ends the attempt, which is retried; the fallback gets the last one's message", function()
    local n, log = logged(function() pf.sleep(30) end, { timeout = 0.2, max_retries = 3 })
    local shared, err = run(n)
    assert.is_nil(err)
    assert.equal("fallback", shared.res)
    assert.equal(3, #log.starts)
    assert.same({ 0, 1, 2 }, log.retries)
    assert.equal("Fetch: exec attempt 3 of 3 timed out after 0.2 s", log.fallback)
    for _, g in ipairs(gaps(log)) do assert.is_true(g >= 0.2, g) end
  end)

  it("prints whole seconds without decimals, fractions as Lua does", function()
    for _, case in ipairs{ { 1, "1" }, { 0.25, "0.25" }, { 0.125, "0.125" } } do
      local n, log = logged(function() pf.sleep(30) end, { timeout = case[1] })
      run(n)
      assert.equal("Fetch: exec attempt 1 of 1 timed out after " .. case[2] .. " s", log.fallback)
    end
  end)

  it("lets an attempt that ends in time return its result, or raise its own error", function()
    local n = pf.Node{ timeout = 5, prep = function() return 20 end,
      exec = function(_, x) pf.sleep(0.01) return x + 1 end,
      post = function(_, sh, _, r) sh.res = r end }
    assert.equal(21, run(n).res)
    local tbl = { code = 7 }
    local bad, log = logged(function(_, _, a)
      if a == 1 then error("first fails") end
      error(tbl)
    end, { timeout = 5, max_retries = 2 })
    run(bad)
    assert.equal(2, #log.starts)
    assert.is_true(rawequal(tbl, log.fallback))   -- the very value raised
  end)

  it("kills the attempt's pf.exec child (and its children)", function()
    local m = left.marker()
    local n, log = logged(function()
      return pf.exec({ "sh", "-c", "sleep " .. m .. " & sleep " .. m .. "; :" })
    end, { timeout = 0.5, max_retries = 2 })
    local seen = 0
    pf.run(function()
      local watch = pf.spawn(function()
        left.wait_for(m, 2, pf.sleep)   -- the first attempt's family runs
        seen = left.procs(m)
      end)
      run(n)
      watch:wait()
    end)
    assert.is_true(seen >= 2, seen)
    assert.equal(2, #log.starts)
    assert.equal("Fetch: exec attempt 2 of 2 timed out after 0.5 s", log.fallback)
    assert.equal(0, left.wait_gone(m))
  end)

  it("closes an HTTP request the server never answers, on the server's side", function()
    -- the fd count once it has stayed the same for 5 polls
    local function steady_fds()
      local n, same = left.fds(), 0
      while same < 5 do
        pf.sleep(0.02)
        local m = left.fds()
        same = m == n and same + 1 or 0
        n = m
      end
      return n
    end
    local conns = {}
    local srv = httpd.start{ routes = { ["/never"] = function(_, res)
      conns[#conns + 1] = res.conn   -- no answer, ever
    end } }
    local ok, err = pcall(function()
      local before
      -- twice: the first round also lets the HTTP client drop connections
      -- that earlier specs' servers closed
      for round = 1, 2 do
        if round == 2 then before = steady_fds() end
        local n, log = logged(function() return pf.http.get(srv.url .. "/never") end,
          { timeout = 0.3, max_retries = 2 })
        run(n)
        assert.equal("Fetch: exec attempt 2 of 2 timed out after 0.3 s", log.fallback)
        assert.equal(2 * round, #conns)
        local deadline = pf.now() + 10
        local open = #conns
        while open > 0 and pf.now() < deadline do
          pf.sleep(0.02)
          open = 0
          for _, c in ipairs(conns) do if not c.closed then open = open + 1 end end
        end
        assert.equal(0, open, "requests still open on the server")
      end
      assert.equal(before, steady_fds(), left.fd_list())
    end)
    srv:close()
    assert(ok, err)
  end)

  it("closes the attempt's to-be-closed variables, its own tasks cancelled", function()
    local closed, spawned = 0, nil
    local n, log = logged(function()
      local _ <close> = setmetatable({}, { __close = function() closed = closed + 1 end })
      spawned = pf.spawn(pf.sleep, 30)
      pf.sleep(30)
    end, { timeout = 0.1, max_retries = 2 })
    run(n)
    assert.equal(2, #log.starts)
    assert.equal(2, closed)
    assert.equal("cancelled", spawned:status())
  end)

  it("bounds each item's attempts in a batch, a parallel batch and a parallel batch of one attempt", function()
    for _, cls in ipairs{ pf.BatchNode, pf.ParallelBatchNode } do
      for _, retries in ipairs{ 1, 2 } do
        local B = cls:extend("Items")
        local tries = {}
        function B.prep() return { 0.01, 30, 0.02 } end
        function B:exec(d)
          tries[d] = (tries[d] or 0) + 1
          pf.sleep(d)
          return d
        end
        function B.exec_fallback(_, d, err) return first_line(err) .. " (" .. d .. ")" end
        function B.post(_, sh, _, r) sh.res = r end
        local shared, err = run(B{ timeout = 0.3, max_retries = retries })
        assert.is_nil(err)
        assert.same({ 0.01, ("Items: exec attempt %d of %d timed out after 0.3 s (30)"):format(
          retries, retries), 0.02 }, shared.res)
        assert.equal(retries, tries[30])
      end
    end
  end)

  it("bounds a parallel batch's items of one attempt without a fallback (no direct item body)", function()
    local B = pf.ParallelBatchNode:extend("Items")
    function B.prep() return { 0.01, 30 } end
    function B.exec(_, d) pf.sleep(d) end
    local t0 = pf.now()
    local ok, err = pcall(function() local b = B{ timeout = 0.2 } return b:run({}) end)
    assert.is_false(ok)
    assert.equal("Items: exec attempt 1 of 1 timed out after 0.2 s", first_line(err))
    assert.truthy(err:find("in Items (exec, attempt 1 of 1, item 2)", 1, true), err)
    assert.is_true(pf.now() - t0 < 20)
  end)

  it("ends with the task that runs it: a pf.timeout around the run, a failing sibling item", function()
    local m = left.marker()
    local n = pf.Node{ timeout = 60, max_retries = 5, exec = function() pf.exec({ "sleep", m }) end,
      exec_fallback = function() error("no fallback after a cancel") end }
    local ok, err = pcall(pf.timeout, 0.3, n.run, n, {})
    assert.is_false(ok)
    assert.truthy(tostring(err):find("pf.timeout: timeout after 0.3 s", 1, true), err)
    assert.equal(0, left.wait_gone(m))
    local B = pf.ParallelBatchNode:extend("Items")
    function B.prep() return { 1, 2, 3 } end
    function B.exec(_, i)
      if i == 2 then pf.sleep(0.2) error("item 2 fails", 0) end
      pf.exec({ "sleep", m })
    end
    ok, err = pcall(function() local b = B{ timeout = 60 } return b:run({}) end)
    assert.is_false(ok)
    assert.equal("item 2 fails", first_line(err))
    assert.equal(0, left.wait_gone(m))
  end)

  it("names where the error of a timed attempt was raised, and the user's line", function()
    local line
    local Bad = pf.Node:extend("Bad")
    function Bad.exec()
      line = debug.getinfo(1, "l").currentline + 1
      error("boom")
    end
    local f = pf.Flow{ name = "Main", start = Bad{ timeout = 5, max_retries = 2 } }
    local err = select(2, pcall(pf.run, function()
      return pf.spawn(f.run, f, {}):wait()
    end))
    assert.truthy(err:find("attempts_spec.lua:" .. line .. ": boom\nin Main > Bad (exec, attempt 2 of 2)\n",
      1, true), err)
    assert.truthy(err:find("attempts_spec.lua:" .. line .. ": in ", 1, true), err)   -- the traceback's
    -- a timed-out attempt's message names where too
    local Slow = pf.Node:extend("Slow")
    function Slow.exec() pf.sleep(30) end
    local g = pf.Flow{ name = "Main", start = Slow{ timeout = 0.05 } }
    err = select(2, pcall(pf.run, function() return pf.spawn(g.run, g, {}):wait() end))
    assert.truthy(err:find("^Slow: exec attempt 1 of 1 timed out after 0.05 s\n"
      .. "in Main > Slow %(exec, attempt 1 of 1%)\nstack traceback:"), err)
  end)
end)

describe("a flow's timeout", function()
  it("bounds the whole run of the flow, killing what runs", function()
    for _, cls in ipairs{ pf.Flow, pf.BatchFlow, pf.ParallelBatchFlow } do
      local m = left.marker()
      local posted = false
      local Work = pf.Node:extend("Work")
      function Work.exec() return pf.exec({ "sleep", m }) end
      local F = cls:extend("Main")
      function F.prep() return { {}, {} } end
      function F.post() posted = true end
      for _, opts in ipairs{ { timeout = 0.3 }, { deadline = 0.3 }, { timeout = 30, deadline = 0.3 } } do
        opts.start = Work{ timeout = 60 }
        local shared, err = run(F(opts))
        assert.is_table(shared)
        assert.equal("Main: flow timed out after 0.3 s", first_line(err))
        assert.is_false(posted)
        assert.equal(0, left.wait_gone(m))
      end
    end
  end)

  it("returns what the flow returns when it ends in time; its errors pass unchanged", function()
    local A = pf.Node:extend("A")
    function A.post(_, sh) sh.a = true return "go" end
    local B = pf.Node:extend("B")
    function B.exec() pf.sleep(0.01) return 5 end
    function B.post(_, sh, _, r) sh.b = r return "end" end
    local a = A()
    local _ = a - "go" >> B()
    local f = pf.Flow{ start = a, timeout = 10 }
    local shared = {}
    assert.equal("end", f:run(shared))
    assert.same({ a = true, b = 5 }, shared)
    local t = { why = "mine" }
    local bad = pf.Flow{ start = pf.Node{ exec = function() error(t) end }, deadline = 10 }
    local _, err = run(bad)
    assert.is_true(rawequal(t, err))
    local line = debug.getinfo(1, "l").currentline + 1
    local s = pf.Flow{ name = "Main", start = pf.Node{ name = "P", prep = function() error("in prep") end }, timeout = 10 }
    _, err = run(s)
    assert.equal(("attempts_spec.lua:%d: in prep"):format(line), first_line(err):match("[^/]*$"))
  end)
  it("names the whole path in the where line of an error inside it", function()
    local X = pf.Node:extend("X")
    function X.exec() error("deep") end
    local outer = pf.Flow{ name = "Outer", start = pf.Flow{ name = "Inner", start = X{}, timeout = 5 } }
    local err = select(2, pcall(pf.run, function() return pf.spawn(outer.run, outer, {}):wait() end))
    assert.truthy(err:find(": deep\nin Outer > Inner > X (exec, attempt 1 of 1)\nstack traceback:\n",
      1, true), err)
  end)
end)

describe("an attempt's deadline", function()
  it("falls back at once with the last error when the next wait would pass it", function()
    local n, log = logged(function(_, _, a) error("fail " .. a, 0) end,
      { max_retries = 5, wait = 30, deadline = 1 })
    local t0 = pf.now()
    local shared = run(n)
    assert.equal("fallback", shared.res)
    assert.equal(1, #log.starts)
    assert.equal("fail 1", log.fallback)
    assert.is_true(pf.now() - t0 < 20)   -- never the 30 s wait
    -- waits that fit are taken
    n, log = logged(function(_, _, a) error("fail " .. a, 0) end,
      { max_retries = 5, wait = 0.05, deadline = 30 })
    run(n)
    assert.equal(5, #log.starts)
    assert.equal("fail 5", log.fallback)
  end)

  it("ends the attempt running when it passes", function()
    local n, log = logged(function() pf.sleep(30) end,
      { max_retries = 3, timeout = 20, deadline = 0.3 })
    run(n)
    assert.equal(1, #log.starts)
    assert.equal("Fetch: exec attempt 1 of 3 ran past the deadline of 0.3 s", log.fallback)
  end)

  it("does not take a retry_after that would pass it", function()
    local n, log = logged(function() error({ retry_after = 60 }) end,
      { max_retries = 3, deadline = 5 })
    run(n)
    assert.equal(1, #log.starts)
    assert.equal(60, log.fallback.retry_after)
  end)

  it("counts from each run's (each item's) first attempt", function()
    local n, log = logged(function(_, _, a)
      if a % 2 == 1 then pf.sleep(0.15) error("slow", 0) end
      return "ok"
    end, { max_retries = 2, deadline = 0.25 })
    for i = 1, 3 do
      assert.equal("ok", run(n).res, i)
    end
    assert.equal(6, #log.starts)
  end)
end)

describe("the waits between attempts", function()
  it("grow by backoff up to max_wait", function()
    local n, log = logged(function() error("no") end,
      { max_retries = 5, wait = 0.05, backoff = 2, max_wait = 0.2 })
    run(n)
    local g = gaps(log)
    assert.equal(4, #g)
    for i, want in ipairs{ 0.05, 0.1, 0.2, 0.2 } do
      assert.is_true(g[i] >= want - 0.002, ("wait %d: %f < %f"):format(i, g[i], want))
    end
  end)

  it("are shortened by jitter, never lengthened", function()
    local n, log = logged(function() error("no") end,
      { max_retries = 11, wait = 0.2, jitter = 1 })
    run(n)
    local g = gaps(log)
    table.sort(g)
    -- without jitter every wait is >= 0.2 s; with jitter = 1 each is in
    -- [0, 0.2] s: all ten at 0.16 s or more has a chance of 0.2^10
    assert.is_true(g[1] < 0.18, table.concat(g, ", "))
  end)

  it("always let the other tasks run, even with wait = 0", function()
    local attempts, ticks, order = 0, 0, {}
    local n = pf.Node{ max_retries = 2000000, wait = 0, exec = function()
      attempts = attempts + 1
      if attempts <= 5 then order[#order + 1] = "attempt" end
      error("again")
    end }
    local ok, err
    pf.run(function()
      local ticker = pf.spawn(function()
        while true do
          ticks = ticks + 1
          if ticks <= 5 then order[#order + 1] = "tick" end
          pf.sleep(0)
        end
      end)
      ok, err = pcall(pf.timeout, 0.5, n.run, n, {})
      ticker:cancel()
    end)
    assert.is_false(ok)
    assert.truthy(tostring(err):find("pf.timeout: timeout after 0.5 s", 1, true), err)
    assert.is_true(attempts < 2000000, attempts)
    -- the ticker and the attempts take turns
    assert.equal(10, #order)
    for i = 2, #order do assert.are_not.equal(order[i - 1], order[i], table.concat(order, " ")) end
  end)

  it("are not taken after a cancel: cancellation is never retried", function()
    for _, opts in ipairs{ { wait = 30 }, { wait = 0.01, timeout = 30 }, { wait = 0.01 } } do
      opts.max_retries = 100
      local fell = false
      local n, log = logged(function(_, _, a)
        if a == 1 then error("fail") end
        pf.sleep(30)
      end, opts)
      function n.exec_fallback() fell = true end
      pf.run(function()
        local t = pf.spawn(n.run, n, {})
        while #log.starts < (opts.wait == 30 and 1 or 2) do pf.sleep(0.01) end
        pf.sleep(0.05)
        t:cancel()
        pf.sleep(0.1)
        assert.equal("cancelled", t:status())
      end)
      assert.equal(opts.wait == 30 and 1 or 2, #log.starts)
      assert.is_false(fell)
    end
  end)
end)

describe("retry_on", function()
  it("is asked after each failed attempt with attempts left, with the error and its number", function()
    local asked = {}
    local e1 = { n = 1 }
    local n, log = logged(function(_, _, a) if a == 1 then error(e1) end error("second", 0) end,
      { max_retries = 3, retry_on = function(err, a) asked[#asked + 1] = { err, a } return true end })
    run(n)
    assert.equal(3, #log.starts)
    assert.equal(2, #asked)
    assert.is_true(rawequal(e1, asked[1][1]))
    assert.same({ "second", 2 }, asked[2])
  end)

  it("false (or nil) ends the attempts: the fallback gets the error at once", function()
    for _, answer in ipairs{ false, "nil" } do
      local n, log = logged(function() error("nope", 0) end,
        { max_retries = 5, wait = 30, retry_on = function()
          if answer == "nil" then return end
          return answer
        end })
      assert.equal("fallback", run(n).res)
      assert.equal(1, #log.starts)
      assert.equal("nope", log.fallback)
    end
  end)

  it("a number is the wait; over a table error's retry_after, which is over the computed wait", function()
    local function gap(opts, err)
      local n, log = logged(function() error(err) end, opts)
      run(n)
      return gaps(log)[1]
    end
    local t0 = pf.now()
    assert.is_true(gap({ max_retries = 2, wait = 0, retry_on = function() return 0.3 end }, "x") >= 0.299)
    assert.is_true(gap({ max_retries = 2, wait = 0 }, { retry_after = 0.3 }) >= 0.299)
    -- retry_on's true keeps retry_after; its number wins over it
    assert.is_true(gap({ max_retries = 2, wait = 0, retry_on = function() return true end },
      { retry_after = 0.3 }) >= 0.299)
    local short = gap({ max_retries = 2, wait = 30, retry_on = function() return 0 end },
      { retry_after = 30 })
    -- a bad retry_after is no retry_after: the computed wait (0.3 s)
    for _, bad in ipairs{ -1, nan, inf, "1", loud } do
      assert.is_true(gap({ max_retries = 2, wait = 0.3 }, { retry_after = bad }) >= 0.299)
    end
    assert.is_true(short < 25, short)
    assert.is_true(pf.now() - t0 < 25)
  end)

  it("raises, naming node and value, when it returns something else", function()
    for _, case in ipairs{ { -1, "-1" }, { nan, "nan" }, { inf, "inf" }, { "yes", "string" },
        { loud, "table" } } do
      local n, log = logged(function() error("x") end,
        { max_retries = 3, retry_on = function() return case[1] end })
      local _, err = run(n)
      assert.equal("Fetch: retry_on must return a boolean or a finite number of seconds >= 0 (got "
        .. case[2] .. ")", first_line(err):match("Fetch: .*"))
      assert.truthy(err:find("in Fetch (exec, attempt 1 of 3)", 1, true), err)
      assert.equal(1, #log.starts)
      assert.is_nil(log.fallback)
    end
  end)

  it("that raises fails the node, the fallback not called", function()
    local n, log = logged(function() error("x", 0) end,
      { max_retries = 3, retry_on = function(err) error("retry_on saw " .. err, 0) end })
    local _, err = run(n)
    assert.equal("Fetch: retry_on failed: retry_on saw x", first_line(err):match("Fetch: .*"))
    assert.is_nil(log.fallback)
    -- a table error's __tostring is called protected
    n, log = logged(function() error("x", 0) end,
      { max_retries = 3, retry_on = function() error(loud) end })
    _, err = run(n)
    assert.truthy(first_line(err):find("Fetch: retry_on failed: ", 1, true), err)
  end)

  it("may wait", function()
    local n, log = logged(function() error("x", 0) end,
      { max_retries = 2, retry_on = function() pf.sleep(0.01) return true end })
    assert.equal("fallback", run(n).res)
    assert.equal(2, #log.starts)
  end)
end)

-- ------------------------------------------------ examples/resilient.lua

local flaky = require "support.flaky_llm"
local BIN, SRC = os.getenv("PF_BIN"), os.getenv("PF_SRC")

local function run_resilient(srv, question)
  return pf.exec({ BIN, SRC .. "/examples/resilient.lua", question }, { timeout = 120, env = {
    PATH = os.getenv("PATH"), OPENAI_BASE_URL = srv.base_url,
    OPENAI_API_KEY = "test-key", OPENAI_MODEL = "fake-model",
    -- a sanitizer build's binary needs its runtime options too
    ASAN_OPTIONS = os.getenv("ASAN_OPTIONS"), LSAN_OPTIONS = os.getenv("LSAN_OPTIONS"),
    UBSAN_OPTIONS = os.getenv("UBSAN_OPTIONS"),
  } })
end

local function answer(messages)
  return "an answer to: " .. messages[#messages].content
end

describe("spec/support/flaky_llm.lua", function()
  it("answers 429 with Retry-After, then hangs until the client gives up, then answers", function()
    local srv = flaky.start(answer)
    local ok, err = pcall(function()
      local url = srv.base_url .. "/chat/completions"
      local body = pf.json.encode{ model = "m", messages = { { role = "user", content = "q" } } }
      local e429 = select(2, pcall(pf.http.check, pf.http.post(url, body)))
      assert.equal(429, e429.status)
      assert.equal(1, e429.retry_after)
      local hung, herr = pcall(pf.http.post, url, body, { timeout = 0.3 })
      assert.is_false(hung)
      assert.truthy(tostring(herr):find("timeout", 1, true), tostring(herr))
      pf.sleep(0.2)   -- the server sees the close
      assert.equal(0, srv:hung_open())
      local res = pf.http.check(pf.http.post(url, body))
      assert.equal("an answer to: q", pf.json.decode(res.body).choices[1].message.content)
      assert.same({ "limit", "hang", "answer" }, srv.steps)
    end)
    srv:close()
    assert(ok, err)
  end)
end)

describe("examples/resilient.lua", function()
  local srv
  after_each(function() if srv then srv:close() end srv = nil end)

  it("falls back after its 4 attempts when the API keeps failing", function()
    srv = flaky.start(answer, { script = { "fail", "fail", "fail", "fail", "fail" } })
    local r = run_resilient(srv, "anyone there?")
    assert.equal(0, r.code, r.stderr)
    assert.equal("Sorry, the model is not available right now.\n", r.stdout)
    assert.equal("resilient: no answer: HTTP 503 from " .. srv.base_url .. "/chat/completions\n",
      r.stderr)
    assert.equal(4, #srv.calls)
    assert.equal("anyone there?", srv.calls[4].messages[1].content)
  end)

  it("waits out a 429's Retry-After, ends a hung attempt, then answers; no retry of a 401", function()
    srv = flaky.start(answer)   -- 429 with Retry-After: 1, a hang, then answers
    local t0 = pf.now()
    local r = run_resilient(srv, "why jitter?")
    local elapsed = pf.now() - t0
    assert.equal(0, r.code, r.stderr)
    assert.equal("", r.stderr)
    assert.equal("an answer to: why jitter?\n", r.stdout)
    assert.same({ "limit", "hang", "answer" }, srv.steps)
    assert.equal(0, srv:hung_open())   -- the timed-out attempt closed its request
    assert.is_true(elapsed >= 5.9, elapsed)   -- 1 s as asked, then the 5 s timeout
    srv:close()

    -- a Retry-After as an HTTP date, 2 s ahead: honoured as well
    srv = flaky.start(answer, { script = { "limit" },
      retry_after = os.date("!%a, %d %b %Y %H:%M:%S GMT", os.time() + 2) })
    local limited = run_resilient(srv, "x")
    assert.equal("an answer to: x\n", limited.stdout)
    assert.equal(2, #srv.calls)

    -- a 401 is not retried: retry_on says false, the fallback answers at once
    srv:close()
    srv = flaky.start(answer, { script = { "unauthorized" } })
    local denied = run_resilient(srv, "x")
    assert.equal("Sorry, the model is not available right now.\n", denied.stdout)
    assert.equal(1, #srv.calls)
  end)
end)

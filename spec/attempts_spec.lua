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

-- Does the walk end an attempt at its timeout yet? (issue 11: the walk's
-- part lands separately; until then the example hangs on its 2nd attempt)
local function walk_has_timeouts()
  local shared = {}
  local n = pf.Node{ timeout = 0.05,
    exec = function() pf.sleep(5) return "slept" end,
    exec_fallback = function() return "timed out" end,
    post = function(_, sh, _, res) sh.res = res end }
  local ok = pcall(pf.timeout, 1, function() return n:run(shared) end)
  return ok and shared.res == "timed out"
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
    if not walk_has_timeouts() then
      pending("needs per-attempt timeouts in the walk (issue 11)")
    end
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

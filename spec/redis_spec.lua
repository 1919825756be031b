-- pf.redis: a client on the scheduler's loop, against a real
-- redis-server of the spec's own (support.redisd) and hostile servers.
local pf = require "pocketflow"
local uv = require "luv"
local redisd = require "support.redisd"
local left = require "support.leftovers"
local res = require "support.fdcount"

local valgrind = os.getenv("PF_MODE") == "valgrind"

local function info_field(r, section, name)
  local text = r:call("INFO", section)
  return tonumber(text:match(name .. ":(%d+)"))
end

-- a luv TCP server on 127.0.0.1 that answers the client's first write
-- (connect's PING) with +PONG and the next with 'payload' (a string, or a
-- function(tcp) that writes); it stops after 60 s at most
local function hostile(payload)
  local srv = { conns = {} }
  local server = uv.new_tcp()
  assert(server:bind("127.0.0.1", 0))
  srv.port = server:getsockname().port
  srv.url = ("redis://127.0.0.1:%d"):format(srv.port)
  server:listen(16, function()
    local c = uv.new_tcp()
    server:accept(c)
    srv.conns[#srv.conns + 1] = c
    local n = 0
    c:read_start(function(err, data)
      if err or not data then
        if not c:is_closing() then c:close() end
        return
      end
      n = n + 1
      if n == 1 then c:write("+PONG\r\n")
      elseif n == 2 then
        if type(payload) == "function" then payload(c) else c:write(payload) end
      end
    end)
  end)
  local stopper = uv.new_timer()
  function srv.close()
    for _, c in ipairs(srv.conns) do if not c:is_closing() then c:close() end end
    if not server:is_closing() then server:close() end
    if not stopper:is_closing() then stopper:close() end
  end
  stopper:start(60000, 0, srv.close)
  uv.unref(stopper)
  return srv
end

describe("pf.redis", function()
  local srv

  setup(function() srv = redisd.start() end)
  teardown(function()
    if srv then srv:kill() end
    assert.equal(0, left.procs(srv.marker))
  end)

  it("is exported with its null sentinel, pf.json.null", function()
    assert.is_function(pf.redis.connect)
    assert.equal(pf.json.null, pf.redis.null)
  end)

  it("maps every reply type to Lua", function()
    pf.run(function()
      local r = pf.redis.connect(srv.url .. "/3")
      assert.equal("OK", r:call("SET", "s", "hello"))           -- status
      assert.equal("hello", r:call("GET", "s"))                 -- bulk
      assert.equal("", (r:call("SET", "e", "") and r:call("GET", "e")))
      assert.is_nil(r:call("GET", "missing"))                   -- nil bulk
      assert.equal(1, r:call("INCR", "i"))                      -- integer
      assert.equal(math.type(r:call("DECRBY", "i", 5)), "integer")
      assert.equal(-4, r:call("GET", "i") + 0)
      assert.same({}, r:call("LRANGE", "nolist", 0, -1))        -- empty array
      local t = r:call("MGET", "s", "missing", "e")
      assert.same({ "hello", pf.redis.null, "" }, t)           -- nil inside
      -- nested arrays and a nested error, from a script
      local v = r:call("EVAL", "return {1, {2, 'x', {'deep'}}, false, redis.error_reply('boom')}", 0)
      assert.same({ 1, { 2, "x", { "deep" } }, pf.redis.null, { err = "ERR boom" } }, v)
      -- EXEC: one error among the results does not raise
      assert.equal("OK", r:call("MULTI"))
      assert.equal("QUEUED", r:call("SET", "m", "1"))
      assert.equal("QUEUED", r:call("LPUSH", "m", "x"))
      local ex = r:call("EXEC")
      assert.equal("OK", ex[1])
      assert.matches("^WRONGTYPE", ex[2].err)
      -- the database of the URL was selected
      assert.equal(3, (r:call("CLIENT", "INFO"):match(" db=(%d+)") + 0))
      -- numbers go as their decimal text
      assert.equal("2.5", r:call("INCRBYFLOAT", "f", 2.5))
      assert.equal("0.10000000000000001", r:call("INCRBYFLOAT", "g", 0.1))
      r:close()
    end)
  end)

  it("is binary safe in arguments and replies", function()
    pf.run(function()
      local r = pf.redis.connect(srv.url)
      local bytes = {}
      for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
      local all = table.concat(bytes):rep(3) .. "\r\n$3\r\n\0"
      assert.equal("OK", r:call("SET", "k\0ey", all))
      assert.equal(all, r:call("GET", "k\0ey"))
      assert.is_nil(r:call("GET", "k"))
      local big = ("x\0\r\n"):rep(300000)
      r:call("SET", "big", big)
      assert.equal(big, r:call("GET", "big"))
      assert.same({ "k\0ey" }, r:call("KEYS", "k\0*"))
      r:close()
    end)
  end)

  it("raises a Redis error with the command and keeps the connection usable", function()
    pf.run(function()
      local r = pf.redis.connect(srv.url)
      local ok, err = pcall(r.call, r, "SET", "k")
      assert.is_false(ok)
      assert.equal("pf.redis: SET: ERR wrong number of arguments for 'set' command", err)
      ok, err = pcall(r.call, r, "lpush", "s", "x")
      r:call("SET", "str", "v")
      ok, err = pcall(r.call, r, "lpush", "str", "x")
      assert.matches("^pf%.redis: LPUSH: WRONGTYPE", err)
      assert.equal("PONG", r:call("PING"))
      assert.equal(1, info_field(r, "clients", "connected_clients"))
      r:close()
    end)
  end)

  it("refuses bad arguments at the caller's line", function()
    pf.run(function()
      local r = pf.redis.connect(srv.url)
      local function err_of(f, ...)
        local ok, e = pcall(f, ...)
        assert.is_false(ok)
        return e
      end
      assert.matches("redis_spec.lua:%d+: r:call: argument 3 must be a string or a number %(got table%)",
        err_of(function() return r:call("SET", "k", {}) end))
      assert.matches("r:call: argument 2 must be a string or a number %(got boolean%)",
        err_of(function() return r:call("GET", true) end))
      assert.matches("r:call: the command must be a string %(got no value%)",
        err_of(function() return r:call() end))
      assert.matches("r:call: the command must be a string %(got number%)",
        err_of(function() return r:call(1) end))
      assert.matches("r:call: expected a pf.redis client as self %(got string%)",
        err_of(function() return r.call("x", "PING") end))
      assert.matches("pf.redis.connect: the URL must be a string %(got no value%)",
        err_of(pf.redis.connect))
      for url, why in pairs({
        ["http://127.0.0.1"] = "the scheme must be redis://",
        ["redis://"] = "the host is missing",
        ["redis://127.0.0.1:0"] = "the port must be an integer from 1 to 65535",
        ["redis://127.0.0.1:99999"] = "the port must be an integer from 1 to 65535",
        ["redis://127.0.0.1:6379/x"] = "the database must be a non%-negative integer",
        ["redis://[::1"] = "an IPv6 address lacks its ']'",
        ["redis://user@127.0.0.1"] = "a user needs a password",
      }) do
        assert.matches("pf.redis.connect: bad URL \"" .. url:gsub("%p", "%%%0") .. "\": " .. why,
          err_of(pf.redis.connect, url))
      end
      -- the password is never shown
      local e = err_of(pf.redis.connect, "redis://:s3cret@127.0.0.1:1/x")
      assert.matches("redis://:%*%*%*@127%.0%.0%.1:1/x", e)
      assert.is_nil(e:find("s3cret", 1, true))
      r:close()
      assert.matches("pf.redis: the client is closed",
        err_of(function() return r:call("PING") end))
      r:close()   -- twice is fine
    end)
  end)

  it("raises the contract's message on a refused connection", function()
    local port = redisd.free_port()
    local ok, err = pcall(pf.run, function()
      return pf.redis.connect(("redis://127.0.0.1:%d"):format(port))
    end)
    assert.is_false(ok)
    assert.matches(("^pf%%.redis: cannot connect to redis://127%%.0%%.0%%.1:%d: connection refused"):format(port), err)
    -- the exact form of the contract, wherever it is called from
    ok, err = pcall(pf.redis.connect, "redis://127.0.0.1:" .. port)
    assert.equal(("pf.redis: cannot connect to redis://127.0.0.1:%d: connection refused"):format(port),
      err:match("^[^\n]*"))
  end)

  it("says why an AUTH or SELECT of the URL failed", function()
    pf.run(function()
      local ok, err = pcall(pf.redis.connect, "redis://:pw@127.0.0.1:" .. srv.port)
      assert.is_false(ok)
      assert.matches("^pf%.redis: cannot connect to redis://:%*%*%*@127%.0%.0%.1:%d+: AUTH: ERR", err)
      ok, err = pcall(pf.redis.connect, srv.url .. "/99999")
      assert.matches("^pf%.redis: cannot connect to redis://127%.0%.0%.1:%d+/99999: SELECT: ERR", err)
    end)
  end)

  it("puts the commands of 1,000 tasks on one connection without waiting for replies", function()
    pf.run(function()
      local r = pf.redis.connect(srv.url .. "/1")
      local probe = pf.redis.connect(srv.url .. "/1")
      r:call("DEL", "c")
      local function reads() return info_field(probe, "stats", "total_reads_processed") end
      -- serial: one round trip per command
      local before = reads()
      for _ = 1, 200 do r:call("INCR", "serial") end
      local serial = reads() - before
      assert.is_true(serial >= 200, "serial reads " .. serial)
      -- 1,000 tasks at once: a few writes carry them all
      before = reads()
      local tasks = {}
      for i = 1, 1000 do
        tasks[i] = pf.spawn(function() return r:call("ECHO", "v" .. i), r:call("INCR", "c") end)
      end
      local seen = {}
      for i = 1, 1000 do
        local echo, n = tasks[i]:wait()
        assert.equal("v" .. i, echo)
        assert.is_nil(seen[n])
        seen[n] = true
      end
      local piped = reads() - before
      -- 2,000 commands; serially that is 2,000 reads at least
      assert.is_true(piped < 200, "pipelined reads " .. piped)
      assert.equal("1000", r:call("GET", "c"))
      assert.equal(2, info_field(probe, "clients", "connected_clients"))
      r:close()
      probe:close()
    end)
  end)

  it("fails pending commands when the server dies, and reconnects once it is back", function()
    pf.run(function()
      local r = pf.redis.connect(srv.url)
      local fds = left.fds()
      local blocked = pf.spawn(function() return r:call("BLPOP", "never", 0) end)
      local also = pf.spawn(function() pf.sleep(0.05); return r:call("BLPOP", "never2", 0) end)
      pf.sleep(0.2)
      srv:kill()   -- SIGKILL mid-command
      local ok, err = pcall(blocked.wait, blocked)
      assert.is_false(ok)
      assert.matches("^pf%.redis: connection to redis://127%.0%.0%.1:%d+ lost: ", err)
      ok, err = pcall(also.wait, also)
      assert.matches("^pf%.redis: connection to redis://127%.0%.0%.1:%d+ lost: ", err)
      -- while it is down: the contract's refused message
      ok, err = pcall(r.call, r, "PING")
      assert.equal(("pf.redis: cannot connect to redis://127.0.0.1:%d: connection refused"):format(srv.port), err)
      srv:restart()
      assert.equal("PONG", r:call("PING"))
      assert.equal("OK", r:call("SET", "after", "1"))
      assert.equal(fds, left.fds())
      r:close()
    end)
  end)

  it("notices an idle connection dropped by the server and reconnects", function()
    pf.run(function()
      local r = pf.redis.connect(srv.url)
      local probe = pf.redis.connect(srv.url)
      local id = r:call("CLIENT", "ID")
      probe:call("CLIENT", "KILL", "ID", id)
      pf.sleep(0.1)
      assert.equal("PONG", r:call("PING"))
      assert.is_true(r:call("CLIENT", "ID") > id)
      r:close()
      probe:close()
    end)
  end)

  it("stays in order when waits are cancelled at random points", function()
    local rounds, n = valgrind and 6 or 30, valgrind and 60 or 200
    local r
    pf.run(function() r = pf.redis.connect(srv.url) end)
    local function round(seed)
      math.randomseed(seed)
      pf.run(function()
        local tasks, kept = {}, {}
        for i = 1, n do
          local how = math.random(4)
          local value = ("%d:%d:%s"):format(seed, i, ("z"):rep(math.random(0, 3000)))
          tasks[i] = pf.spawn(function()
            if math.random(2) == 1 then pf.sleep(0) end
            if how == 1 then
              return pf.timeout(math.random() * 0.01, r.call, r, "ECHO", value)
            end
            return r:call("ECHO", value)
          end)
          if how == 2 then
            local delay = math.random(0, 3)
            pf.spawn(function()
              for _ = 1, delay do pf.sleep(0) end
              tasks[i]:cancel()
            end)
          end
          kept[i] = { how = how, value = value }
        end
        for i = 1, n do
          local ok, got = pcall(tasks[i].wait, tasks[i])
          if ok then
            assert.equal(kept[i].value, got, "seed " .. seed .. " task " .. i)
          elseif kept[i].how == 1 then
            assert.matches("timeout", got)
          else
            assert.equal(2, kept[i].how, "seed " .. seed .. ": " .. tostring(got))
            assert.matches("cancel", got)
          end
        end
        -- what comes after still gets its own reply
        assert.equal("after" .. seed, r:call("ECHO", "after" .. seed))
      end)
    end
    round(1)
    local fds, mem = left.fds(), res.mem()
    for seed = 2, rounds do round(seed) end
    assert.equal(fds, left.fds())
    assert.is_true(res.mem() < mem + 200, ("Lua memory grew from %.0f to %.0f KiB"):format(mem, res.mem()))
    pf.run(function()
      assert.equal(1, info_field(r, "clients", "connected_clients"))
      r:close()
    end)
  end)

  it("cancelled while connecting leaves nothing behind", function()
    pf.run(function() pf.sleep(0.05) end)   -- earlier closes complete
    local fds = left.fds()
    pf.run(function()
      for i = 1, 20 do
        local t = pf.spawn(pf.redis.connect, srv.url)
        for _ = 1, i % 4 do pf.sleep(0) end
        t:cancel()
      end
      pf.sleep(0.05)
    end)
    collectgarbage(); collectgarbage()
    pf.run(function() pf.sleep(0.05) end)
    assert.equal(fds, left.fds())
  end)

  describe("against a hostile server", function()
    local function against(payload, pattern)
      local h = hostile(payload)
      local ok, err
      pf.run(function()
        local r = pf.redis.connect(h.url)
        ok, err = pcall(r.call, r, "GET", "k")
        r:close()
      end)
      h.close()
      pf.run(function() pf.sleep(0) end)
      assert.is_false(ok)
      assert.matches(pattern, err)
    end

    it("says protocol error on garbage", function()
      against("!garbage\r\n", "^pf%.redis: protocol error from redis://127%.0%.0%.1:%d+: Protocol error")
    end)
    it("refuses a huge bulk length before reading it", function()
      against("$1000000000\r\n", "protocol error from .*: a bulk string over 512 MiB")
      against("$99999999999999999999999\r\n", "protocol error from .*: Bad bulk string length")
    end)
    it("does not allocate a huge array up front", function()
      against(function(c) c:write("*2147483647\r\n:1\r\n:2\r\n", function() c:close() end) end,
        "^pf%.redis: connection to .* lost: the server closed the connection")
    end)
    it("refuses arrays nested too deep", function()
      against(("*1\r\n"):rep(10), "protocol error from .*nested")
    end)
    it("says a reply came to no command", function()
      local h = hostile("+OK\r\n+EXTRA\r\n")
      local err
      pf.run(function()
        local r = pf.redis.connect(h.url)
        local t = pf.spawn(function() return r:call("GET", "k") end)
        assert.equal("OK", t:wait())
        -- the extra reply broke the connection: the next call reconnects
        -- (to the same server, which answers the first command with PONG)
        err = r:call("GET", "k")
        r:close()
      end)
      h.close()
      assert.equal("PONG", err)
      assert.equal(2, #h.conns)
    end)
    it("reads a reply dripped one byte at a time", function()
      local t
      local h = hostile(function(c)
        local s, i = "*2\r\n$5\r\nhel\0o\r\n:42\r\n", 0
        t = uv.new_timer()
        t:start(1, 3, function()
          i = i + 1
          if i > #s or c:is_closing() then t:close(); return end
          c:write(s:sub(i, i))
        end)
      end)
      pf.run(function()
        local r = pf.redis.connect(h.url)
        assert.same({ "hel\0o", 42 }, r:call("GET", "k"))
        r:close()
      end)
      h.close()
      if t and not t:is_closing() then t:close() end   -- the drip's timer
    end)
  end)

  it("works outside a task, and closes as a to-be-closed variable", function()
    local r = pf.redis.connect(srv.url)     -- each runs the loop itself
    assert.equal("OK", r:call("SET", "outside", "1"))
    assert.equal("1", r:call("GET", "outside"))
    assert.matches("^pf%.redis client %(redis://127%.0%.0%.1:%d+%)$", tostring(r))
    r:close()
    pf.run(function()
      local c <close> = pf.redis.connect(srv.url)
      assert.equal("PONG", c:call("PING"))
      r = c
    end)
    assert.matches(", closed%)$", tostring(r))
    assert.matches("the client is closed", select(2, pcall(r.call, r, "PING")))
  end)

  it("is usable from nodes: a parallel batch whose exec calls Redis", function()
    local r
    pf.run(function() r = pf.redis.connect(srv.url .. "/4") end)
    local Sum = pf.ParallelBatchNode:extend("Sum")
    function Sum:prep() local t = {} for i = 1, 100 do t[i] = i end return t end
    function Sum:exec(i) return r:call("INCRBY", "total", i) end
    function Sum:post(shared, _, results)
      shared.n = #results
      shared.total = tonumber(r:call("GET", "total"))
    end
    local shared = {}
    pf.run(function() Sum{ max_concurrency = 10 }:run(shared) end)
    assert.equal(100, shared.n)
    assert.equal(5050, shared.total)
    pf.run(function() r:close() end)
  end)
end)

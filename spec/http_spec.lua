-- pf.http: requests on libcurl's multi interface, against a luv server in
-- this process (spec/support/httpd.lua). Traffic goes to 127.0.0.1 only;
-- the DNS failure uses a name under .invalid.
local pf = require "pocketflow"
local httpd = require "support.httpd"
local fake_llm = require "support.fake_llm"

-- valgrind is ~50x slower: 1000 concurrent requests become 100 there
local MANY = os.getenv("PF_MODE") == "valgrind" and 100 or 1000

describe("pf.http", function()
  local srv
  before_each(function() srv = httpd.start() end)
  after_each(function() srv:close() end)

  it("gets a plain response with status, headers and body", function()
    local r = pf.http.get(srv.url .. "/hello")
    assert.equal(200, r.status)
    assert.equal("hello", r.body)
    assert.equal("5", r.headers["content-length"])
  end)

  it("returns HTTP error statuses as results", function()
    local r = pf.http.get(srv.url .. "/status?code=404")
    assert.equal(404, r.status)
    assert.equal("status 404", r.body)
    assert.equal(503, pf.http.get(srv.url .. "/status?code=503").status)
  end)

  it("posts a body with headers", function()
    local r = pf.http.post(srv.url .. "/echo", "payload", { headers = { ["X-Test"] = "yes" } })
    local e = pf.json.decode(r.body)
    assert.equal("POST", e.method)
    assert.equal("payload", e.body)
    assert.equal("yes", e.headers["x-test"])
  end)

  it("sends other methods through request", function()
    local opts = { method = "put", url = srv.url .. "/echo", body = "b" }
    local r = pf.http.request(opts)
    local e = pf.json.decode(r.body)
    assert.equal("PUT", e.method)
    assert.equal("put", opts.method)   -- the caller's table is left as it was
    assert.equal("b", e.body)
    r = pf.http.request{ method = "DELETE", url = srv.url .. "/echo" }
    assert.equal("DELETE", pf.json.decode(r.body).method)
  end)

  it("sends a large body", function()
    local big = ("y"):rep(3 * 1000 * 1000)
    local r = pf.http.post(srv.url .. "/echo", big)
    assert.equal(#big, #pf.json.decode(r.body).body)
  end)

  it("receives a large body", function()
    local r = pf.http.get(srv.url .. "/big?size=5000000")
    assert.equal(5000000, #r.body)
  end)

  it("follows redirects", function()
    local r = pf.http.get(srv.url .. "/redirect")
    assert.equal(200, r.status)
    assert.equal("hello", r.body)
    r = pf.http.get(srv.url .. "/redirect", { follow = false })
    assert.equal(302, r.status)
  end)

  it("gives the final url, after redirects", function()
    assert.equal(srv.url .. "/hello", pf.http.get(srv.url .. "/redirect").url)
    assert.equal(srv.url .. "/redirect", pf.http.get(srv.url .. "/redirect", { follow = false }).url)
    local chunks = {}
    local r = pf.http.get(srv.url .. "/redirect", { stream = function(c) chunks[#chunks + 1] = c end })
    assert.equal(srv.url .. "/hello", r.url)
    assert.equal("hello", table.concat(chunks))
  end)

  it("goes through the proxy option", function()
    local proxy = httpd.start{ routes = { ["http://example.invalid/hello"] = function(req, res)
      res:send(200, "via proxy, for " .. req.headers.host)
    end } }
    local r = pf.http.get("http://example.invalid/hello", { proxy = proxy.url })
    proxy:close()
    assert.equal("via proxy, for example.invalid", r.body)
    assert.equal(1, proxy.requests)
  end)

  it("honours http_proxy and no_proxy from the environment", function()
    local bin = assert(os.getenv("PF_BIN"))
    local proxy = httpd.start{ routes = { ["http://example.invalid/hello"] = function(_, res)
      res:send(200, "via env proxy")
    end } }
    local script = [[
      local pf = require "pocketflow"
      local ok, r = pcall(pf.http.get, "http://example.invalid/hello", { timeout = 20 })
      io.write(ok and r.body or r)
    ]]
    local function run(env)
      return pf.run(function()
        return pf.exec({ "sh", "-c", env .. ' exec "$0" -e "$1"', bin, script }, { timeout = 60 })
      end)
    end
    local via = run("http_proxy=" .. proxy.url)
    local direct = run("http_proxy=" .. proxy.url .. " no_proxy=example.invalid")
    proxy:close()
    assert.equal("via env proxy", via.stdout, via.stderr)
    assert.truthy(direct.stdout:find("pf.http: GET http://example.invalid/hello: ", 1, true), direct.stdout .. direct.stderr)
    assert.equal(1, proxy.requests)
  end)

  it("decodes a chunked body", function()
    local r = pf.http.get(srv.url .. "/chunked?n=3")
    assert.equal("chunk1\nchunk2\nchunk3\n", r.body)
  end)

  it("streams body chunks into the task as they arrive", function()
    local got, times = {}, {}
    local r = pf.http.get(srv.url .. "/drip?n=4&delay=0.05", { stream = function(chunk)
      got[#got + 1] = chunk
      times[#times + 1] = pf.now()
    end })
    assert.equal(200, r.status)
    assert.equal("drop1\ndrop2\ndrop3\ndrop4\n", table.concat(got))
    assert.is_true(#got >= 2)
    assert.is_true(times[#times] - times[1] > 0.05)
  end)

  it("lets the stream function wait", function()
    local got = {}
    pf.http.get(srv.url .. "/drip?n=3&delay=0.01", { stream = function(chunk)
      pf.sleep(0.02)
      got[#got + 1] = chunk
    end })
    assert.equal("drop1\ndrop2\ndrop3\n", table.concat(got))
  end)

  it("reuses connections across requests", function()
    pf.run(function()
      for _ = 1, 5 do assert.equal("hello", pf.http.get(srv.url .. "/hello").body) end
    end)
    assert.equal(5, srv.requests)
    assert.equal(1, srv.connections)
  end)

  it("reconnects after the server closes an idle kept-alive connection", function()
    local closer = httpd.start{ routes = { ["/bye"] = function(_, res)
      res:send(200, "bye")
      res:after(0.02, function() res:close() end)
    end } }
    local cpu
    pf.run(function()
      assert.equal("bye", pf.http.get(closer.url .. "/bye").body)
      -- the idle socket turns readable (EOF) while curl is not watching it:
      -- the poll must stop rather than wake the loop again and again
      local c0 = os.clock()
      pf.sleep(0.2)
      cpu = os.clock() - c0
      assert.equal("bye", pf.http.get(closer.url .. "/bye").body)
    end)
    closer:close()
    assert.equal(2, closer.connections)
    assert.is_true(cpu < 0.1, "cpu while idle: " .. cpu)
  end)

  it("raises on connection refused, naming the URL", function()
    local url = "http://127.0.0.1:" .. httpd.dead_port() .. "/x"
    local ok, err = pcall(pf.http.get, url)
    assert.is_false(ok)
    assert.truthy(err:find(url, 1, true))
    assert.truthy(err:find("onnect"))
  end)

  it("raises on a DNS failure", function()
    local ok, err = pcall(pf.http.get, "http://no-such-host.invalid/")
    assert.is_false(ok)
    assert.truthy(err:find("no-such-host.invalid", 1, true))
  end)

  it("raises on a TLS failure (https to a plain HTTP port)", function()
    local url = srv.url:gsub("^http:", "https:") .. "/hello"
    -- generous: loading the system's CA store is slow under valgrind
    local ok, err = pcall(pf.http.get, url, { timeout = 60 })
    assert.is_false(ok)
    assert.truthy(err:find(url, 1, true), err)
    assert.truthy(err:find("SSL"), err)
  end)

  it("raises a timeout error for a slow response", function()
    local t0 = pf.now()
    local ok, err = pcall(pf.http.get, srv.url .. "/slow?delay=2", { timeout = 0.2 })
    assert.is_false(ok)
    assert.truthy(err:find("timeout"))
    assert.is_true(pf.now() - t0 < 1.5)
  end)

  it("raises when the server closes mid-body", function()
    local ok, err = pcall(pf.http.get, srv.url .. "/cut")
    assert.is_false(ok)
    assert.truthy(err:find("/cut", 1, true))
  end)

  it("is cancelled by pf.timeout mid-transfer", function()
    local ok, err = pcall(pf.run, function()
      return pf.timeout(0.1, pf.http.get, srv.url .. "/drip?n=50&delay=0.02")
    end)
    assert.is_false(ok)
    assert.truthy(err:find("timeout"))
    -- the server sees the connection go
    assert.equal("hello", pf.http.get(srv.url .. "/hello").body)
  end)

  it("is cancelled with its task mid-stream", function()
    local chunks = 0
    pf.run(function()
      local t = pf.spawn(function()
        pf.http.get(srv.url .. "/drip?n=100&delay=0.01", { stream = function()
          chunks = chunks + 1
        end })
      end)
      pf.sleep(0.1)
      t:cancel()
      local ok, err = pcall(t.wait, t)
      assert.is_false(ok)
      assert.truthy(err:find("cancelled"))
    end)
    assert.is_true(chunks > 0 and chunks < 100)
  end)

  it("runs " .. MANY .. " concurrent requests from " .. MANY .. " tasks", function()
    local bodies = pf.run(function()
      local fns = {}
      for i = 1, MANY do
        fns[i] = function() return pf.http.get(srv.url .. "/id?i=" .. i).body end
      end
      return pf.gather(fns)
    end)
    assert.equal(MANY, #bodies)
    for i = 1, MANY do assert.equal("id " .. i, bodies[i]) end
  end)

  it("checks its arguments, naming the bad option", function()
    local function e(f, ...)
      local ok, err = pcall(f, ...)
      assert.is_false(ok)
      return err
    end
    local u = srv.url .. "/hello"
    local cases = {
      { "x", "pf.http: options must be a table (got string)" },
      { {}, "pf.http: url is required" },
      { { url = 1 }, "pf.http: url must be a string (got number)" },
      { { url = u, stream = 1 }, "pf.http: stream must be a function (got number)" },
      { { url = u, timout = 1 }, "pf.http: unknown option 'timout'" },
      { { url = u, [1] = "x" }, "pf.http: unknown option '1'" },
      { { url = u, method = true }, "pf.http: method must be a string (got boolean)" },
      { { url = u, method = "GET /x HTTP/1.1\r\nX: y" }, 'pf.http: method must be an HTTP token (got "GET /x' },
      { { url = u, method = "" }, 'pf.http: method must be an HTTP token (got "")' },
      { { url = u, headers = "x" }, "pf.http: headers must be a table (got string)" },
      { { url = u, headers = { x = {} } }, "pf.http: headers must map names to strings (got x = table)" },
      { { url = u, headers = { [1] = "x" } }, "pf.http: headers must map names to strings (got 1 = string)" },
      { { url = u, headers = { x = "a\r\nInjected: 1" } }, 'pf.http: header "x" has a NUL, CR or LF byte' },
      { { url = u, body = {} }, "pf.http: body must be a string (got table)" },
      { { url = u, timeout = "1" }, "pf.http: timeout must be a number (got string)" },
      { { url = u, timeout = 0 }, "pf.http: timeout must be a positive number of seconds (got 0)" },
      { { url = u, timeout = 0 / 0 }, "pf.http: timeout must be a positive number of seconds" },
      { { url = u, follow = 1 }, "pf.http: follow must be a boolean (got number)" },
      { { url = u, verify = "no" }, "pf.http: verify must be a boolean (got string)" },
      { { url = u, ca_file = 1 }, "pf.http: ca_file must be a string (got number)" },
      { { url = u, client_cert = false }, "pf.http: client_cert must be a string (got boolean)" },
      { { url = u, client_key = "k.pem" }, "pf.http: client_key needs client_cert" },
      { { url = u, proxy = 8080 }, "pf.http: proxy must be a string (got number)" },
      { { url = u .. "\0junk" }, "pf.http: url contains a NUL byte" },
      { { url = u, ca_file = "a\0b" }, "pf.http: ca_file contains a NUL byte" },
    }
    for _, c in ipairs(cases) do
      local err = e(pf.http.request, c[1])
      assert.truthy(err:find(c[2], 1, true), c[2] .. " <- " .. err)
    end
    -- get and post check the same way; the error is at the caller's line
    local err = e(function() pf.http.get(u, { timout = 1 }) end)
    assert.truthy(err:find("^spec/http_spec%.lua:%d+: pf%.http: unknown option 'timout'"), err)
    err = e(function() pf.http.get(u, { proxy = "http://a\0b" }) end)
    assert.truthy(err:find("^spec/http_spec%.lua:%d+: pf%.http: proxy contains a NUL byte"), err)
    assert.truthy(e(pf.http.get, u, 5):find("pf.http: options must be a table (got number)", 1, true))
    assert.truthy(e(pf.http.post, u, 5):find("pf.http: body must be a string (got number)", 1, true))
    assert.equal("hello", pf.http.get(u).body)   -- and nothing is left broken
  end)
end)

-- libcurl is dlopened by the first request, not when the program starts
describe("pf.http without libcurl loaded", function()
  local bin = assert(os.getenv("PF_BIN"), "PF_BIN: the built pocketflow binary")

  local function sh(cmd)
    local out = os.tmpname()
    local _, _, code = os.execute(cmd .. " >" .. out .. " 2>&1 </dev/null")
    local f = assert(io.open(out)); local s = f:read("a"); f:close(); os.remove(out)
    return s, code
  end

  local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

  -- the file libcurl.so.4 resolves to, from this process's own mappings
  local function libcurl_path()
    local srv = httpd.start()
    pf.http.get(srv.url .. "/hello")
    srv:close()
    for line in io.lines("/proc/self/maps") do
      local p = line:match("%s(/%S*/libcurl%.so%.4[%.%d]*)$")
      if p then return p end
    end
  end

  it("starts and runs flows without mapping libcurl", function()
    local out, code = sh(bin .. " -e " .. q([[
      local pf = require "pocketflow"
      pf.sleep(0.01)
      assert(pf.json.decode("[1]")[1] == 1)
      for l in io.lines("/proc/self/maps") do assert(not l:find("libcurl", 1, true), l) end
      io.write("ok")]]))
    assert.equal(0, code, out)
    assert.equal("ok", out)
  end)

  it("fails a request with an error naming libcurl.so.4 when it cannot load", function()
    local lib = libcurl_path()
    assert.truthy(lib)
    if select(2, sh("unshare -m true")) ~= 0 then
      pending("needs unshare -m (root) to hide " .. lib)
      return
    end
    local out, code = sh("unshare -m sh -c " .. q("mount --bind /dev/null " .. lib .. " && exec " .. bin .. " -e " .. q([[
      local pf = require "pocketflow"
      local ok, err = pcall(pf.http.get, "http://127.0.0.1:1/")
      assert(not ok)
      io.write(err, "\n")
      assert(pf.json.encode({}) == "{}")]])))
    assert.equal(0, code, out)
    assert.matches("^pf%.http: cannot load libcurl%.so%.4: .+\n$", out)
  end)
end)

describe("pf.http.sse", function()
  it("parses events split across chunks", function()
    local events = {}
    local feed = pf.http.sse(function(ev) events[#events + 1] = ev end)
    feed("event: greet\nid: 1\ndata: hel")
    feed("lo\ndata: world\n\n: comment\r\n")
    feed("data: second\r\n\r\ndata: third\n")
    assert.equal(2, #events)
    assert.same({ event = "greet", id = "1", data = "hello\nworld" }, events[1])
    assert.equal("message", events[2].event)
    assert.equal("second", events[2].data)
    feed("\n")
    assert.equal("third", events[3].data)
  end)

  it("ends lines at CR LF, LF or CR, also when CR LF is split across chunks", function()
    local events = {}
    local feed = pf.http.sse(function(ev) events[#events + 1] = ev.data end)
    feed("data: a\r")
    feed("")
    feed("\ndata: b\r")
    feed("\r")
    feed("data: c\rdata: d\n\r\n")
    assert.same({ "a\nb", "c\nd" }, events)
  end)

  it("is linear: an 8 MB line in 16 KB pieces takes well under a second's work per MB", function()
    -- the old parser joined its buffer with every chunk: 26 s for this
    local mb = os.getenv("PF_MODE") == "valgrind" and 2 or 8
    local piece = ("x"):rep(16 * 1024)
    local got
    local feed = pf.http.sse(function(ev) got = #ev.data end, { max_line = 16 * 1024 * 1024 })
    local c0 = os.clock()
    feed("data: ")
    for _ = 1, mb * 64 do feed(piece) end
    feed("\n\n")
    local cpu = os.clock() - c0
    assert.equal(mb * 1024 * 1024, got)
    assert.is_true(cpu < (mb == 8 and 5 or 30), "cpu seconds: " .. cpu)
  end)

  it("raises once a line passes max_line (1 MiB unless set)", function()
    local feed = pf.http.sse(function() end)
    local piece = ("x"):rep(16 * 1024)
    local fed = 0
    local ok, err = pcall(function()
      for _ = 1, 512 do feed(piece); fed = fed + #piece end
    end)
    assert.is_false(ok)
    assert.equal(1024 * 1024, fed)   -- the piece that passed the limit raised
    assert.matches("^pf%.http%.sse: a line is longer than max_line %(1048576 bytes%)$", err)
    feed = pf.http.sse(function() end, { max_line = 10 })
    feed("data: 1234\n")
    ok, err = pcall(feed, "data: 12345\n")
    assert.is_false(ok)
    assert.truthy(err:find("max_line (10 bytes)", 1, true), err)
  end)

  it("raises once an event's data passes max_event", function()
    local feed = pf.http.sse(function() end, { max_event = 10 })
    feed("data: 12345\ndata: 1234\n\n")
    local ok, err = pcall(feed, "data: 12345\ndata: 12345\n")
    assert.is_false(ok)
    assert.truthy(err:find("pf.http.sse: an event's data is longer than max_event (10 bytes)", 1, true), err)
  end)

  it("checks its options", function()
    local function e(...) local ok, err = pcall(pf.http.sse, ...); assert.is_false(ok); return err end
    assert.truthy(e(1):find("expected a function (got number)", 1, true))
    assert.truthy(e(print, 1):find("options must be a table (got number)", 1, true))
    assert.truthy(e(print, { max_lines = 1 }):find("unknown option 'max_lines'", 1, true))
    assert.truthy(e(print, { max_line = 0 }):find("max_line must be a positive integer (got 0)", 1, true))
    assert.truthy(e(print, { max_event = 1.5 }):find("max_event must be a positive integer (got 1.5)", 1, true))
  end)

  it("streams an OpenAI-compatible completion", function()
    local srv = fake_llm.start(function(messages) return "echo: " .. messages[#messages].content end)
    local text = {}
    local ok, err = pcall(pf.http.request, {
      method = "POST", url = srv.base_url .. "/chat/completions",
      headers = { ["Content-Type"] = "application/json", Authorization = "Bearer test-key" },
      body = pf.json.encode{ model = "m", stream = true, messages = { { role = "user", content = "one two three" } } },
      stream = pf.http.sse(function(ev)
        if ev.data ~= "[DONE]" then
          text[#text + 1] = pf.json.decode(ev.data).choices[1].delta.content
        end
      end),
    })
    srv:close()
    assert.is_true(ok, err)
    assert.equal("echo: one two three", table.concat(text))
  end)
end)

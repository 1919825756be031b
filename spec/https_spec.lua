-- pf.http over TLS, against `openssl s_server -WWW` on 127.0.0.1 with a
-- self-signed certificate made for the run. The servers run under
-- `timeout` (they stop themselves) and are killed by pid when done.
local pf = require "pocketflow"
local warnings = require "support.warnings"

-- system tools run without the sanitizer runtimes the asan mode preloads
local CLEAN = "unset LD_PRELOAD; "

local function sh(cmd)
  local out = os.tmpname()
  local ok, _, code = os.execute(CLEAN .. cmd .. " >" .. out .. " 2>&1 </dev/null")
  local f = assert(io.open(out)); local s = f:read("a"); f:close(); os.remove(out)
  return s, ok and 0 or code
end

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local dir = os.tmpname()
os.remove(dir)
assert(sh("mkdir " .. q(dir)) == "")

-- the processes whose argv mentions this run's directory
local function leftovers()
  local found = {}
  local p = io.popen(CLEAN .. "grep -l -F " .. q(dir) .. " /proc/[0-9]*/cmdline 2>/dev/null")
  for line in p:lines() do
    local pid = line:match("^/proc/(%d+)/")
    local f = io.open("/proc/" .. pid .. "/stat")
    local stat = f and f:read("l") or ""
    if f then f:close() end
    -- not grep itself, not zombies
    if not stat:find("^%d+ %(grep%)") and not stat:find("^%d+ %(.-%) Z") then
      local c = io.open("/proc/" .. pid .. "/cmdline")
      local argv = c and c:read("a"):gsub("%z", " ") or ""
      if c then c:close() end
      if not argv:find("/proc/[0-9]*/cmdline", 1, true) then   -- not this search
        found[#found + 1] = pid .. " " .. argv
      end
    end
  end
  p:close()
  return found
end

-- a self-signed certificate for 127.0.0.1, its own CA
local function make_cert(name, cn)
  local out, code = sh(("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    .. " -keyout %s/%s.key -out %s/%s.pem -subj /CN=%s -addext subjectAltName=IP:127.0.0.1 -days 2")
    :format(q(dir), name, q(dir), name, cn))
  assert(code == 0, out)
  return dir .. "/" .. name .. ".pem", dir .. "/" .. name .. ".key"
end

-- openssl s_server -WWW serving dir; extra: more arguments. Returns the
-- server's base URL and a function that kills it.
local servers = 0
local function serve(extra)
  servers = servers + 1
  local log = ("%s/server%d.log"):format(dir, servers)
  local p = io.popen(CLEAN .. ("cd %s && (timeout 60 openssl s_server -accept 127.0.0.1:0 -cert server.pem"
    .. " -key server.key -WWW %s >%s 2>&1 </dev/null & echo $!)"):format(q(dir), extra or "", q(log)))
  local pid = assert(tonumber(p:read("l")))
  p:close()
  local function kill() sh("kill " .. pid) end
  local port
  for _ = 1, 500 do
    local f = io.open(log)
    local s = f and f:read("a") or ""
    if f then f:close() end
    port = s:match("ACCEPT 127%.0%.0%.1:(%d+)")
    if port then break end
    sh("sleep 0.02")
  end
  if not port then kill(); error("openssl s_server did not start") end
  return "https://127.0.0.1:" .. port, kill
end

describe("pf.http over HTTPS", function()
  local ca, url, kill
  local body = ("0123456789abcdef"):rep(200000)   -- 3.2 MB, for streaming

  setup(function()
    ca = make_cert("server", "127.0.0.1")
    make_cert("client", "pocketflow-client")
    local f = assert(io.open(dir .. "/hello.txt", "w")); f:write("hello over TLS\n"); f:close()
    f = assert(io.open(dir .. "/big.txt", "w")); f:write(body); f:close()
    url, kill = serve()
  end)

  teardown(function()
    if kill then kill() end
    local left = leftovers()
    for _ = 1, 100 do   -- killed processes may take a moment to go
      if #left == 0 then break end
      sh("sleep 0.1")
      left = leftovers()
    end
    sh("rm -rf " .. q(dir))
    assert.same({}, left)
  end)

  it("succeeds with ca_file, and the response carries its url", function()
    local r = pf.http.get(url .. "/hello.txt", { ca_file = ca })
    assert.equal(200, r.status)
    assert.equal("hello over TLS\n", r.body)
    assert.equal(url .. "/hello.txt", r.url)
  end)

  it("raises a clear verification error without ca_file", function()
    local ok, err = pcall(pf.http.get, url .. "/hello.txt")
    assert.is_false(ok)
    assert.truthy(err:find("pf.http: GET " .. url .. "/hello.txt: ", 1, true), err)
    assert.truthy(err:find("SSL certificate problem: self%-signed certificate"), err)
  end)

  it("raises a clear error for a ca_file that does not exist", function()
    local ok, err = pcall(pf.http.get, url .. "/hello.txt", { ca_file = dir .. "/none.pem" })
    assert.is_false(ok)
    assert.truthy(err:find(url .. "/hello.txt", 1, true), err)
    assert.truthy(err:find("CA", 1, true), err)
  end)

  it("skips verification with verify = false, warning once", function()
    local got = warnings.of(function()
      for _ = 1, 3 do
        assert.equal("hello over TLS\n", pf.http.get(url .. "/hello.txt", { verify = false }).body)
      end
    end)
    assert.same({ "pf.http: verify = false: TLS certificates and host names are not checked "
      .. "(this warning is given once)" }, got)
    -- and only for the requests that ask
    assert.is_false((pcall(pf.http.get, url .. "/hello.txt")))
  end)

  it("streams a body over TLS", function()
    local chunks = {}
    local r = pf.http.get(url .. "/big.txt", { ca_file = ca, stream = function(c)
      chunks[#chunks + 1] = c
      if #chunks % 10 == 0 then pf.sleep(0.001) end   -- curl pauses meanwhile
    end })
    assert.equal(200, r.status)
    assert.is_true(#chunks > 1)
    assert.is_true(table.concat(chunks) == body)
  end)

  it("presents client_cert and client_key to a server that requires them", function()
    local url2, kill2 = serve("-Verify 1 -CAfile client.pem")
    local ok, err = pcall(pf.http.get, url2 .. "/hello.txt", { ca_file = ca, timeout = 20 })
    local r
    if ok then
      err = "no client certificate, yet it succeeded"
    else
      r = pf.http.get(url2 .. "/hello.txt", { ca_file = ca, timeout = 20,
        client_cert = dir .. "/client.pem", client_key = dir .. "/client.key" })
    end
    kill2()
    assert.truthy(not ok and err:find(url2 .. "/hello.txt", 1, true), err)
    assert.equal("hello over TLS\n", r.body)
  end)
end)

-- A small HTTP/1.1 server on luv for the specs, listening on 127.0.0.1 on
-- an ephemeral port. It shares the event loop with pocketflow, so it
-- serves while a pf.run is running in the same process.
--
--   local httpd = require "support.httpd"
--   local srv = httpd.start{ routes = { ["/x"] = function(req, res) ... end } }
--   srv.url .. "/hello"; srv:close()
--
-- A handler gets req = { method, path, query, headers, body } and res with
-- res:send(status, body, headers), res:start(status, headers) then
-- res:chunk(data) / res:finish() (chunked), res:raw(bytes), res:close(),
-- res:after(seconds, fn). Built-in routes are listed in 'builtin' below.
local uv = require "luv"

local httpd = {}

local reasons = { [200] = "OK", [201] = "Created", [204] = "No Content",
  [302] = "Found", [400] = "Bad Request", [404] = "Not Found",
  [500] = "Internal Server Error", [503] = "Service Unavailable" }

local Res = {}
Res.__index = Res

function Res:raw(s)
  if not self.conn.closed then self.conn.tcp:write(s) end
end

local function head(status, headers)
  local out = { ("HTTP/1.1 %d %s\r\n"):format(status, reasons[status] or "Status") }
  for k, v in pairs(headers or {}) do out[#out + 1] = k .. ": " .. v .. "\r\n" end
  return table.concat(out)
end

function Res:send(status, body, headers)
  body = body or ""
  local h = { ["Content-Length"] = tostring(#body) }
  for k, v in pairs(headers or {}) do h[k] = v end
  self:raw(head(status, h) .. "\r\n" .. body)
  self.conn:done()
end

function Res:start(status, headers)
  local h = { ["Transfer-Encoding"] = "chunked" }
  for k, v in pairs(headers or {}) do h[k] = v end
  self:raw(head(status, h) .. "\r\n")
end

function Res:chunk(data)
  if #data > 0 then self:raw(("%x\r\n%s\r\n"):format(#data, data)) end
end

function Res:finish()
  self:raw("0\r\n\r\n")
  self.conn:done()
end

function Res:close() self.conn:close() end

-- fn runs after 'seconds' unless the connection closed meanwhile
function Res:after(seconds, fn)
  local conn = self.conn
  local t = uv.new_timer()
  conn.timers[t] = true
  t:start(math.floor(seconds * 1000), 0, function()
    conn.timers[t] = nil
    t:close()
    if not conn.closed then fn() end
  end)
end

local function parse_query(q)
  local t = {}
  for k, v in (q or ""):gmatch("([^&=]+)=?([^&]*)") do t[k] = v end
  return t
end

local builtin = {}

builtin["/hello"] = function(_, res) res:send(200, "hello") end

builtin["/echo"] = function(req, res)
  local json = require "pocketflow.json"
  res:send(200, json.encode{ method = req.method, path = req.path,
    headers = req.headers, body = req.body }, { ["Content-Type"] = "application/json" })
end

-- /status?code=404
builtin["/status"] = function(req, res)
  res:send(tonumber(req.query.code) or 200, "status " .. (req.query.code or "200"))
end

-- /chunked?n=5: n chunks "chunk1\n".."chunkn\n", in one go
builtin["/chunked"] = function(req, res)
  res:start(200, { ["Content-Type"] = "text/plain" })
  for i = 1, tonumber(req.query.n) or 5 do res:chunk("chunk" .. i .. "\n") end
  res:finish()
end

-- /drip?n=5&delay=0.02: chunks with a delay between them
builtin["/drip"] = function(req, res)
  local n, delay = tonumber(req.query.n) or 5, tonumber(req.query.delay) or 0.02
  res:start(200, { ["Content-Type"] = "text/plain" })
  local i = 0
  local function step()
    i = i + 1
    if i > n then return res:finish() end
    res:chunk("drop" .. i .. "\n")
    res:after(delay, step)
  end
  step()
end

-- /slow?delay=1: answers after the delay
builtin["/slow"] = function(req, res)
  res:after(tonumber(req.query.delay) or 1, function() res:send(200, "slow") end)
end

-- /cut: promises 100 bytes, sends 10, closes
builtin["/cut"] = function(_, res)
  res:raw(head(200, { ["Content-Length"] = "100" }) .. "\r\n0123456789")
  res:after(0.02, function() res:close() end)
end

-- /big?size=N: N bytes of "x"
builtin["/big"] = function(req, res)
  res:send(200, ("x"):rep(tonumber(req.query.size) or 1000000))
end

-- /redirect -> /hello
builtin["/redirect"] = function(_, res)
  res:send(302, "", { Location = "/hello" })
end

-- /id?i=7: "id 7", for checking many concurrent requests
builtin["/id"] = function(req, res)
  res:send(200, "id " .. (req.query.i or ""))
end

-- ------------------------------------------------------------ connections

local Conn = {}
Conn.__index = Conn

function Conn:close()
  if self.closed then return end
  self.closed = true
  for t in pairs(self.timers) do
    t:stop()
    t:close()
  end
  self.timers = {}
  self.server.conns[self] = nil
  if not self.tcp:is_closing() then self.tcp:close() end
end

function Conn:raw_close(bytes)
  self.busy = true
  self.tcp:write(bytes)
  self.tcp:shutdown(function() self:close() end)
end

function Conn:done()
  self.busy = false
  if self.want_close then
    self.tcp:shutdown(function() self:close() end)
  else
    self:process()
  end
end

-- Parses and handles the next complete request in the buffer, if any.
function Conn:process()
  if self.busy or self.closed then return end
  local buf = self.buf
  if buf:find("^[^A-Z]") then  -- not HTTP (a TLS hello, say): answer and hang up
    self:raw_close("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    return
  end
  local e = buf:find("\r\n\r\n", 1, true)
  if not e then return end
  local lines = {}
  for line in buf:sub(1, e - 1):gmatch("[^\r\n]+") do lines[#lines + 1] = line end
  local method, target = (lines[1] or ""):match("^(%u+) (%S+) HTTP/1%.%d$")
  local headers = {}
  for i = 2, #lines do
    local k, v = lines[i]:match("^([^:]+):%s*(.-)%s*$")
    if k then headers[k:lower()] = v end
  end
  local len = tonumber(headers["content-length"] or "0") or 0
  if #buf < e + 3 + len then return end
  local body = buf:sub(e + 4, e + 3 + len)
  self.buf = buf:sub(e + 4 + len)
  if not method then
    self.want_close = true
    return Res.send(setmetatable({ conn = self }, Res), 400, "bad request")
  end
  self.want_close = (headers.connection or ""):lower() == "close"
  local path, q = target:match("^([^?]*)%??(.*)$")
  local req = { method = method, path = path, query = parse_query(q),
    headers = headers, body = body, server = self.server }
  local res = setmetatable({ conn = self }, Res)
  self.busy = true
  self.server.requests = self.server.requests + 1
  local handler = self.server.routes[path] or builtin[path]
  if not handler then return res:send(404, "not found: " .. path) end
  local ok, err = pcall(handler, req, res)
  if not ok then
    io.stderr:write("httpd: handler error: ", tostring(err), "\n")
    res:send(500, tostring(err))
  end
end

-- Runs the close callbacks of closed handles when no loop is running:
-- a luv close callback still pending when the Lua state closes crashes
-- the process at exit (pocketflow's scheduler runs the loop once more
-- after luv's handles are finalized; see the I/O report). Inside a
-- running loop uv.run refuses, and the running loop does it.
local function settle()
  pcall(uv.run, "nowait")
end
httpd.settle = settle

local Server = {}
Server.__index = Server

function Server:close()
  if self.closed then return end
  self.closed = true
  for c in pairs(self.conns) do c:close() end
  self.tcp:close()
  settle()
end

-- httpd.start{ routes = {...} } -> server with .url, .port, .requests,
-- .connections (accepted so far)
-- Listens on 127.0.0.1, on an ephemeral port, for srv (a table with
-- conns = {}, connections = 0): every accepted socket becomes a Conn
-- (setmetatable({ tcp, buf, timers, server }, Conn)) counted in srv, and
-- on_data(conn) runs after what arrives is appended to conn.buf. Sets
-- srv.tcp, srv.port and srv.url. Shared with support/hostile.lua.
function httpd.listen(srv, Conn, on_data)
  local tcp = uv.new_tcp()
  assert(tcp:bind("127.0.0.1", 0))
  srv.tcp = tcp
  assert(tcp:listen(1024, function(err)
    if err or srv.closed then return end
    local client = uv.new_tcp()
    if not tcp:accept(client) then client:close() return end
    local conn = setmetatable({ tcp = client, buf = "", timers = {}, server = srv }, Conn)
    srv.conns[conn] = true
    srv.connections = srv.connections + 1
    client:read_start(function(rerr, data)
      if rerr or not data then return conn:close() end
      conn.buf = conn.buf .. data
      on_data(conn)
    end)
  end))
  srv.port = tcp:getsockname().port
  srv.url = "http://127.0.0.1:" .. srv.port
  return srv
end

function httpd.start(opts)
  opts = opts or {}
  local srv = setmetatable({ routes = opts.routes or {}, conns = {},
    requests = 0, connections = 0 }, Server)
  return httpd.listen(srv, Conn, Conn.process)
end

-- A port on 127.0.0.1 with nothing listening (bound, then closed).
function httpd.dead_port()
  local tcp = uv.new_tcp()
  assert(tcp:bind("127.0.0.1", 0))
  local port = tcp:getsockname().port
  tcp:close()
  settle()
  return port
end

return httpd

-- A hostile HTTP/1.1 server for the specs, on luv in this process,
-- listening on 127.0.0.1 on an ephemeral port. It stops itself after
-- 'lifetime' seconds (default 120) if the spec does not close it first.
--
--   local hostile = require "support.hostile"
--   local srv = hostile.start()   -- srv.url, srv.connections, srv:close()
--
-- Every path misbehaves in one way (see 'routes' below); a query
-- parameter tunes some of them.
local uv = require "luv"
local httpd = require "support.httpd"

local hostile = {}

local function parse_query(q)
  local t = {}
  for k, v in (q or ""):gmatch("([^&=]+)=?([^&]*)") do t[k] = v end
  return t
end

local Conn = {}
Conn.__index = Conn

function Conn:write(s)
  if not self.closed then self.tcp:write(s) end
end

function Conn:close()
  if self.closed then return end
  self.closed = true
  self:stop_timers()
  self.server.conns[self] = nil
  if not self.tcp:is_closing() then self.tcp:close() end
end

-- closes with a TCP reset (SO_LINGER 0): the peer's next read or write
-- fails with ECONNRESET
function Conn:reset()
  if self.closed then return end
  self.closed = true
  self:stop_timers()
  self.server.conns[self] = nil
  if not self.tcp:is_closing() then self.tcp:close_reset() end
end

function Conn:stop_timers()
  for t in pairs(self.timers) do
    t:stop()
    t:close()
  end
  self.timers = {}
end

function Conn:after(seconds, fn)
  local t = uv.new_timer()
  self.timers[t] = true
  t:start(math.floor(seconds * 1000), 0, function()
    self.timers[t] = nil
    t:close()
    if not self.closed then fn() end
  end)
end

local function response(body, extra)
  return "HTTP/1.1 200 OK\r\nContent-Length: " .. #body .. "\r\n" .. (extra or "") .. "\r\n" .. body
end

local function chunked_head(ctype)
  return "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: " .. ctype .. "\r\n\r\n"
end

local function chunk(s) return ("%x\r\n%s\r\n"):format(#s, s) end

local routes = {}

-- a normal answer on a kept-alive connection, then the server closes it
-- at once: a client reusing it races the close
routes["/close-after"] = function(c)
  c:write(response("ok"))
  c:close()
end

-- the same, with a reset instead of a close
routes["/reset-after"] = function(c)
  c:write(response("ok"))
  c:after(0, function() c:reset() end)
end

-- a reset instead of any answer
routes["/reset"] = function(c) c:reset() end

-- headers and half the body, then a reset
routes["/reset-mid"] = function(c)
  c:write("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" .. ("x"):rep(500))
  c:after(0.05, function() c:reset() end)
end

-- headers and half the body, then a close
routes["/close-mid"] = function(c)
  c:write("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" .. ("x"):rep(500))
  c:after(0.05, function() c:close() end)
end

-- the answer one byte every 'delay' seconds (default 0.05)
routes["/drip"] = function(c, q)
  local delay = tonumber(q.delay) or 0.05
  local s, i = response("dripped"), 0
  local function step()
    i = i + 1
    if i > #s then return end
    c:write(s:sub(i, i))
    c:after(delay, step)
  end
  step()
end

-- a header line of 'size' bytes (default 1 MB): more than curl takes
routes["/huge-header"] = function(c, q)
  local size = tonumber(q.size) or 1000000
  c:write("HTTP/1.1 200 OK\r\nX-Huge: " .. ("h"):rep(size) .. "\r\nContent-Length: 2\r\n\r\nok")
end

-- headers that never end
routes["/endless-headers"] = function(c)
  c:write("HTTP/1.1 200 OK\r\n")
  local n = 0
  local function step()
    n = n + 1
    if n > 2000 then return end
    c:write(("X-More-%d: %s\r\n"):format(n, ("m"):rep(1000)))
    c:after(0, step)
  end
  step()
end

-- an event stream whose one 'data' line is 'size' bytes (default 8 MB),
-- in chunks of 16 KB, then a normal event
routes["/sse-huge-line"] = function(c, q)
  local size = tonumber(q.size) or 8 * 1024 * 1024
  c:write(chunked_head("text/event-stream"))
  local piece = ("d"):rep(16 * 1024)
  local sent = 0
  c:write(chunk("data: "))
  local function step()
    for _ = 1, 16 do
      if sent >= size then
        c:write(chunk("\n\ndata: after\n\n") .. "0\r\n\r\n")
        return
      end
      local n = math.min(#piece, size - sent)
      c:write(chunk(piece:sub(1, n)))
      sent = sent + n
    end
    c:after(0, step)
  end
  step()
end

-- two events, then the connection closes in the middle of the third
routes["/sse-cut"] = function(c)
  c:write(chunked_head("text/event-stream") .. chunk("data: one\n\n") .. chunk("data: two\n\n"))
  c:after(0.05, function()
    c:write(chunk("data: thr"))
    c:after(0.05, function() c:close() end)
  end)
end

-- the same, cut with a reset
routes["/sse-reset"] = function(c)
  c:write(chunked_head("text/event-stream") .. chunk("data: one\n\n") .. chunk("data: two\n\n"))
  c:after(0.05, function()
    c:write(chunk("data: thr"))
    c:after(0.05, function() c:reset() end)
  end)
end

-- a chunk size that is not hexadecimal
routes["/bad-chunk"] = function(c)
  c:write(chunked_head("text/plain") .. chunk("fine") .. "zz\r\nnot hex\r\n0\r\n\r\n")
end

-- a chunk longer than its size says
routes["/long-chunk"] = function(c)
  c:write(chunked_head("text/plain") .. "3\r\nmuch longer than three\r\n0\r\n\r\n")
end

-- not HTTP at all
routes["/garbage"] = function(c)
  c:write("\0\1\2 this is not HTTP\r\n\r\n")
  c:after(0.05, function() c:close() end)
end

-- accepts, reads, and never answers (a client timeout or cancel ends it)
routes["/silent"] = function() end

-- a valid answer, for checking that requests work after the hostile ones
routes["/ok"] = function(c) c:write(response("ok")) end

local function on_request(c, head)
  local target = head:match("^%u+ (%S+) HTTP/1%.%d\r\n")
  local path, q = (target or ""):match("^([^?]*)%??(.*)$")
  local route = routes[path]
  c.server.requests = c.server.requests + 1
  if not route then
    c:write("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    return
  end
  route(c, parse_query(q))
end

local Server = {}
Server.__index = Server

function Server:close()
  if self.closed then return end
  self.closed = true
  for c in pairs(self.conns) do c:close() end
  if not self.life:is_closing() then self.life:close() end
  self.tcp:close()
  pcall(uv.run, "nowait")   -- outside a running loop: run the close callbacks
end

function hostile.start(opts)
  opts = opts or {}
  local srv = setmetatable({ conns = {}, requests = 0, connections = 0 }, Server)
  httpd.listen(srv, Conn, function(c)
    -- requests carry no body here (GET): one per blank line
    while not c.closed do
      local e = c.buf:find("\r\n\r\n", 1, true)
      if not e then break end
      local head = c.buf:sub(1, e + 3)
      c.buf = c.buf:sub(e + 4)
      on_request(c, head)
    end
  end)
  -- stops itself, without keeping the loop alive
  srv.life = uv.new_timer()
  srv.life:start(math.floor((opts.lifetime or 120) * 1000), 0, function() srv:close() end)
  srv.life:unref()
  return srv
end

return hostile

-- bench/otlp_sink.lua: a local OTLP/HTTP collector for bench/trace.lua,
-- run as a process of its own (as a real collector is).
--
--   lua5.4 bench/otlp_sink.lua DELAY
--
-- Listens on 127.0.0.1 (an ephemeral port) and prints "<url> <pid>" on its
-- first line. POST /v1/traces is answered 200 after DELAY seconds (the
-- answers of concurrent requests overlap); GET /stats gives "requests
-- <n> spans <m> bytes <b>". It stops when killed, or by itself after 10
-- minutes.
local here = arg[0]:match("^(.*)/[^/]*$") or "."
package.path = here .. "/../spec/?.lua;" .. package.path
local uv = require "luv"
local httpd = require "support.httpd"

local delay = tonumber(arg[1]) or 0
local requests, spans, bytes = 0, 0, 0

local srv = httpd.start{ routes = {
  ["/v1/traces"] = function(req, res)
    requests = requests + 1
    bytes = bytes + #req.body
    local _, n = req.body:gsub('"spanId":', "")
    spans = spans + n
    local function reply() res:send(200, "{}", { ["Content-Type"] = "application/json" }) end
    if delay > 0 then res:after(delay, reply) else reply() end
  end,
  ["/stats"] = function(_, res)
    res:send(200, ("requests %d spans %d bytes %d"):format(requests, spans, bytes))
  end,
} }

local stop = uv.new_timer()
stop:start(600000, 0, function() srv:close(); stop:close() end)
io.stdout:write(srv.url, " ", uv.os_getpid(), "\n")
io.stdout:flush()
uv.run()

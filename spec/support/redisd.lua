-- A redis-server of the spec's own, on a free 127.0.0.1 port, without
-- persistence; its argv holds a marker (support.leftovers) so that the
-- spec can tell none is left.
--
--   local redisd = require "support.redisd"
--   local srv = redisd.start()        -- srv.port, srv.url, srv.pid, srv.marker
--   srv:kill()                        -- SIGKILL, and waits until it is gone
-- It runs under timeout(1): 600 s at most, even if the spec's process dies.
--   srv:restart()                     -- again on the same port
--   redisd.free_port()                -- a port nobody listens on (now)
local uv = require "luv"
local pf = require "pocketflow"
local left = require "support.leftovers"

local redisd = {}
local Server = {}
Server.__index = Server

function redisd.free_port()
  local tcp = uv.new_tcp()
  assert(tcp:bind("127.0.0.1", 0))
  local port = tcp:getsockname().port
  tcp:close()
  return port
end

-- answers PING within 10 s, or raises
local function wait_up(url)
  local deadline = uv.hrtime() + 10e9
  pf.run(function()
    while true do
      local ok, r = pcall(pf.redis.connect, url)
      if ok then r:close(); return end
      if uv.hrtime() > deadline then error("redis-server did not start: " .. r) end
      pf.sleep(0.02)
    end
  end)
end

-- the pid of the redis-server holding the marker, or nil
local function server_pid(marker)
  local p = assert(io.popen("unset LD_PRELOAD; ls /proc"))
  local found
  for pid in p:lines() do
    local f = pid:match("^%d+$") and io.open("/proc/" .. pid .. "/cmdline", "rb")
    local s = f and f:read("a")
    if f then f:close() end
    if s and s:find(marker, 1, true) and s:find("^redis%-server%z") then found = pid end
  end
  p:close()
  return found
end

function Server:start()
  -- set-proc-title no: the argv (and the marker in it) stays visible;
  -- timeout(1) bounds its life if the spec's process dies first
  local cmd = ("exec timeout -s KILL 600 redis-server --port %d --bind 127.0.0.1 --save '' "
    .. "--appendonly no --daemonize no --set-proc-title no --logfile '' "
    .. "--dbfilename pf-spec-%s.rdb >/dev/null 2>&1 & echo $!"):format(self.port, self.marker)
  local p = assert(io.popen(cmd))
  assert(tonumber(p:read("l")))
  p:close()
  wait_up(self.url)
  self.pid = assert(server_pid(self.marker), "redis-server not found")
end

function redisd.start()
  local port = redisd.free_port()
  local self = setmetatable({ port = port, marker = left.marker(),
    url = ("redis://127.0.0.1:%d"):format(port) }, Server)
  self:start()
  return self
end

function Server:kill()
  if self.pid then os.execute("kill -9 " .. self.pid .. " 2>/dev/null") end
  self.pid = nil
  assert(left.wait_gone(self.marker) == 0, "redis-server still running")
end

Server.restart = Server.start
Server.stop = Server.kill

return redisd

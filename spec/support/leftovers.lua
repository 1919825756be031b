-- What a spec may leave behind: open fds of this process, and processes
-- whose command line holds a marker.
--
--   local left = require "support.leftovers"
--   local m = left.marker()          -- a unique "30.<digits>": sleep accepts it
--   left.procs(m)                    -- live processes whose argv holds m
--   left.wait_gone(m)                -- polls (up to 10 s) until none; the count
--   left.wait_for(m, n, pf.sleep)   -- until n processes hold m (20 s at most)
--   left.settle_fds(n, pf.sleep)     -- until the fd count stays n (10 s at most)
--   left.fds()                       -- entries of /proc/self/fd
--   left.rm_tree(path)               -- removes a temporary folder a spec made
local uv = require "luv"

local left = {}

local seq = 0
function left.marker()
  seq = seq + 1
  return ("30.%d%05d%03d"):format(uv.os_getpid() % 100000,
    math.random(0, 99999), seq % 1000)
end

local function list(dir)
  local names, req = {}, uv.fs_scandir(dir)
  while req do
    local name = uv.fs_scandir_next(req)
    if not name then break end
    names[#names + 1] = name
  end
  return names
end

-- the pids of live processes whose argv holds marker
function left.pids(marker)
  local out = {}
  for _, pid in ipairs(list("/proc")) do
    if pid:match("^%d+$") then
      local f = io.open("/proc/" .. pid .. "/cmdline", "rb")
      local s = f and f:read("a")
      if f then f:close() end
      -- a zombie has an empty command line: it is gone already
      if s and s:find(marker, 1, true) then out[#out + 1] = tonumber(pid) end
    end
  end
  return out
end

function left.procs(marker)
  return #left.pids(marker)
end

function left.wait_gone(marker)
  local deadline = uv.hrtime() + 10e9
  while left.procs(marker) > 0 and uv.hrtime() < deadline do
    uv.sleep(20)
  end
  return left.procs(marker)
end

-- waits (with sleep(seconds), e.g. pf.sleep) until n processes hold the
-- marker; raises after 20 s
function left.wait_for(marker, n, sleep)
  local deadline = uv.hrtime() + 20e9
  while left.procs(marker) < n do
    if uv.hrtime() > deadline then
      error(("%d processes with %s did not appear"):format(n, marker), 2)
    end
    sleep(0.02)
  end
end

function left.fds()
  return #list("/proc/self/fd")
end

-- waits (with sleep) until the fd count has been n for 5 polls in a row:
-- cancelled requests still finish on libuv's pool and close their files
-- from the loop; 10 s at most. Returns the count.
function left.settle_fds(n, sleep)
  local deadline, same = uv.hrtime() + 10e9, 0
  while same < 5 and uv.hrtime() < deadline do
    sleep(0.02)
    if left.fds() == n then same = same + 1 else same = 0 end
  end
  return left.fds()
end

-- what the fds are, for a failure message
function left.fd_list()
  local out = {}
  for _, fd in ipairs(list("/proc/self/fd")) do
    out[#out + 1] = fd .. "=" .. tostring(uv.fs_readlink("/proc/self/fd/" .. fd))
  end
  return table.concat(out, " ")
end

-- removes path and, for a folder, everything below it (no links followed)
function left.rm_tree(path)
  local st = uv.fs_lstat(path)
  if st and st.type == "directory" then
    local req = uv.fs_scandir(path)
    while req do
      local name = uv.fs_scandir_next(req)
      if not name then break end
      left.rm_tree(path .. "/" .. name)
    end
    uv.fs_rmdir(path)
  elseif st then
    uv.fs_unlink(path)
  end
end

return left

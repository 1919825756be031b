-- Helpers shared by the workload scripts: a wall clock, peak RSS, the
-- one line of output the runner reads, and a check that fails loudly.
local uv = require "luv"
local M = {}

function M.clock() return uv.hrtime() / 1e9 end

-- peak resident set of this process, in KiB (what getrusage's ru_maxrss
-- and /usr/bin/time -f %M report)
function M.rss_kb()
  local f = io.open("/proc/self/status")
  if not f then return 0 end
  local s = f:read("a")
  f:close()
  return tonumber(s:match("VmHWM:%s*(%d+)")) or 0
end

function M.check(cond, msg)
  if not cond then
    io.stderr:write("bench check failed: ", msg, "\n")
    os.exit(3)
  end
end

-- the runner reads this line: seconds, KiB, and optional key=value extras
function M.report(seconds, extra)
  local line = ("RESULT time=%.6f rss_kb=%d"):format(seconds, M.rss_kb())
  if extra then line = line .. " " .. extra end
  io.stdout:write(line, "\n")
  io.stdout:flush()
end

function M.n(default) return tonumber(arg and arg[1]) or default end

return M

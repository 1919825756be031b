-- busted's helper, named by spec/run and by .busted (see there). It
-- installs the after_each that checks every spec leaves no task and no
-- handle (support/hygiene.lua). spec/run exports what the specs read;
-- without it:
-- * PF_BIN, PF_SRC and PF_MODE default to build/pocketflow, this source
--   tree and the plain mode;
-- * the processes some specs start find the module in build/ as busted
--   does: LUA_PATH and LUA_CPATH are set in the environment.
-- Values set in the environment win.
local getenv = os.getenv
local pwd = getenv("PWD") or "."
local defaults = {
  PF_BIN = pwd .. "/build/pocketflow",
  PF_SRC = pwd,
  PF_MODE = "plain",
}

os.getenv = function(name)
  local v = getenv(name)
  if v == nil then return defaults[name] end
  return v
end

-- in the process's environment, so every child (io.popen, os.execute,
-- pf.exec without env) inherits them
if getenv("LUA_PATH") == nil and getenv("LUA_CPATH") == nil then
  local setenv = require("luv").os_setenv
  setenv("LUA_PATH", pwd .. "/build/lua/?.lua;" .. pwd .. "/build/lua/?/init.lua;"
    .. pwd .. "/spec/?.lua;;")
  setenv("LUA_CPATH", pwd .. "/build/lua/?.so;;")
end

require "support.hygiene"

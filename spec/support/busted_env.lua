-- busted's helper, named by spec/run and by .busted (see there). It
-- installs the after_each that checks every spec leaves no task and no
-- handle (support/hygiene.lua). spec/run exports what the specs read;
-- without it:
-- * PF_BIN, PF_SRC and PF_MODE default to build/pocketflow, this source
--   tree and the plain mode;
-- * the lua5.4 processes some specs start find the module in build/ as
--   busted does: io.popen and os.execute export LUA_PATH and LUA_CPATH.
-- Values set in the environment win.
local getenv, popen, execute = os.getenv, io.popen, os.execute
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

if getenv("LUA_PATH") == nil and getenv("LUA_CPATH") == nil then
  local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
  local export = ("export LUA_PATH=%s LUA_CPATH=%s; "):format(
    q(pwd .. "/build/lua/?.lua;" .. pwd .. "/build/lua/?/init.lua;" .. pwd .. "/spec/?.lua;;"),
    q(pwd .. "/build/lua/?.so;;"))
  io.popen = function(cmd, ...) return popen(export .. cmd, ...) end
  os.execute = function(cmd, ...)
    if cmd == nil then return execute() end
    return execute(export .. cmd, ...)
  end
end

require "support.hygiene"

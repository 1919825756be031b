-- Runs Lua 5.4.4's own test suite (testes/all.lua, user mode) under the
-- pocketflow binary:  cd lua-5.4.4/testes && pocketflow PATH/lua-testes.lua
-- The one difference by design: the main chunk is a pocketflow task, so
-- coroutine.running() returns the task's thread, not the main thread, and
-- that thread is yieldable (to pocketflow's waits). The suite's checks of
-- the main thread are met here by presenting the task's thread as it.
local main = coroutine.running()
local running, isyieldable = coroutine.running, coroutine.isyieldable
coroutine.running = function()
  local co = running()
  return co, co == main
end
coroutine.isyieldable = function(co)
  co = co or running()
  if co == main then return false end
  return isyieldable(co)
end
_U = true
dofile("all.lua")

-- After every spec, nothing of the engine is left: no task, and no libuv
-- handle of anyone's (the scheduler's, the I/O's, the luv handles a spec
-- made) still started or still open. The discipline libuv's own tests
-- keep with MAKE_VALGRIND_HAPPY. busted_env.lua (busted's helper, which
-- spec/run and .busted both name) requires this file, and it registers
-- one after_each at busted's root: it runs after every spec of every file,
-- after the file's own after_each blocks, and fails the spec it follows.
--
-- It reads core.debug_counts() (src/sched.c): tasks not ended, handles
-- active, handles not closed (libuv's loop handles and the scheduler's
-- idle and timer left out). Handles closed in the spec's last loop turn
-- need one more turn to be gone: if any is open, one uv.run("nowait")
-- turn runs first, which can only finish closes when nothing is started.
--
-- One handle may stay open, inactive: the HTTP client's timer, made on
-- the first request and kept for the Lua state's life (src/http.c). A
-- spec that keeps a server for a whole describe must close it in an
-- after_each, or the check fails the describe's first spec.
local busted = require "busted"

local HTTP_TIMER = 1

local function counts()
  local core = package.loaded["pocketflow.core"]
  if core == nil then return 0, 0, 0 end
  return core.debug_counts()
end

-- the spec that just ran, to name it in the error
local last = "?"
busted.subscribe({ "test", "start" }, function(element)
  local where = element.trace
  last = (where and (where.short_src .. ":" .. where.currentline .. ": ") or "")
    .. element.name
end)

local function check()
  local tasks, active, open = counts()
  if tasks == 0 and active == 0 and open > HTTP_TIMER then
    require("luv").run("nowait")
    tasks, active, open = counts()
  end
  if tasks > 0 or active > 0 or open > HTTP_TIMER then
    require("luv").print_all_handles()   -- to stderr: what is left
    error(("left after the spec: %d task(s) not ended, %d handle(s) active, "
      .. "%d handle(s) open (%d allowed: the HTTP client's timer); the spec: %s")
      :format(tasks, active, open, HTTP_TIMER, last), 0)
  end
end

busted.after_each(check)

return { check = check, counts = counts }

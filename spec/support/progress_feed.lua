-- Fed to the pocketflow binary by spec/progress_spec.lua, under a
-- pseudo-terminal (script) or not: a progress sink from PF_PROGRESS or
-- the mode in argv[1], and a batch of 1000 items, 3 failed, reported
-- through the walk's path (core.event) over about half a second, with a
-- warning in the middle.
local pf = require "pocketflow"
local core = require "pocketflow.core"
local events = require "pocketflow.events"

local mode = arg[1] == "json" and "json" or true
local id = events.new_run_id()
local close = events.run_sinks({ progress = mode }, id)
pf.run(function()
  core.event{ type = "run_start", node = "Flow", run_id = id }
  core.event{ type = "node_start", node = "Translate" }
  local failed = 0
  core.event{ type = "progress", node = "Translate", path = "Flow/Translate",
              done = 0, failed = 0, total = 1000, in_flight = 4 }
  for i = 1, 1000 do
    if i % 400 == 0 then failed = failed + 1 end
    if i == 500 then pf.on_warning("halfway there") end
    core.event{ type = "progress", node = "Translate", path = "Flow/Translate",
                done = i, failed = i == 1000 and 3 or failed, total = 1000, in_flight = 4 }
    if i % 20 == 0 then pf.sleep(0.01) end
  end
  core.event{ type = "node_end", status = "ok" }
  core.event{ type = "run_end", status = "ok" }
end)
close()
io.stderr:write("end\n")

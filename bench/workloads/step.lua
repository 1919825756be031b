-- The loop workload's three methods, shared by the engine script and its
-- floors so that all of them do the same work per step.
local M = {}

function M.prep(_, shared) return shared.left end
function M.exec(_, left) return left - 1 end
function M.post(_, shared, _, left)
  shared.left = left
  if left > 0 then return "loop" end
  return "done"
end

-- a plain class with the three methods, for the floors
function M.class()
  local Step = { prep = M.prep, exec = M.exec, post = M.post }
  Step.__index = Step
  return Step
end

-- The engine's loop flow: one Step node whose post returns "loop" to
-- itself. The walk ends on "done", which has no successor: the engine
-- warns about that once; this keeps the run's output clean.
function M.flow(pf)
  local Step = pf.Node:extend("Step")
  Step.prep, Step.exec, Step.post = M.prep, M.exec, M.post
  pf.on_warning = function(msg)
    if not msg:find("flow ends: 'done'", 1, true) then io.stderr:write(msg, "\n") end
  end
  local step = Step()
  step:next(step, "loop")
  return pf.Flow{ start = step }
end

return M

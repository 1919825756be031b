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

return M

-- Catching pocketflow's warnings in the specs.
--
--   local warnings = require "support.warnings"
--   local seen, restore = warnings.capture()  -- seen fills until restore()
--   local got = warnings.of(fn)               -- the warnings fn raised
local pf = require "pocketflow"

local warnings = {}

function warnings.capture()
  local seen, saved = {}, pf.on_warning
  pf.on_warning = function(msg) seen[#seen + 1] = msg end
  return seen, function() pf.on_warning = saved end
end

-- replaces pf.on_warning while fn runs; returns the messages it got
function warnings.of(fn)
  local got, restore = warnings.capture()
  local ok, err = pcall(fn)
  restore()
  if not ok then error(err, 0) end
  return got
end

return warnings

-- pocketflow.interrupt: pf.interrupt, a question to a person from inside
-- a node (API.md section 8, "Human input"). Without a store, the run
-- option on_interrupt answers it; the question's id names where it was
-- asked, so that the same run asks the same questions under the same ids.
local core = require "pocketflow.core"

local M = {}

-- the questions asked so far in each node run: run (the table core.node_here
-- gives for one run of a node) -> { [key] = count }; a run ends, its
-- table goes
local asked = setmetatable({}, { __mode = "k" })

-- raises msg at the level of pf.interrupt's caller, marked so that the
-- node's attempts end at once (no retry, no fallback)
local function fail(msg)
  local info = debug.getinfo(3, "Sl")
  if info and info.currentline > 0 then
    msg = ("%s:%d: %s"):format(info.short_src, info.currentline, msg)
  end
  core.no_retry(msg)
  error(msg, 0)
end

-- the id of the next question of the node run: its key (path and items,
-- "Main/Review[3]") and its order in the run, from 1: "Main/Review[3]#1"
local function next_id(key, run)
  local counts = asked[run]
  if counts == nil then
    counts = {}
    asked[run] = counts
  end
  local n = (counts[key] or 0) + 1
  counts[key] = n
  return key .. "#" .. n
end

-- pf.interrupt(payload) -> the answer
function M.interrupt(payload)
  local opts, key, run = core.node_here()
  if key == nil then fail("pf.interrupt: not in a node's prep, exec or post") end
  local id = next_id(key, run)
  local answer = opts and rawget(opts, "on_interrupt")
  if answer == nil then fail("pf.interrupt needs a store or on_interrupt") end
  local ok, v = pcall(answer, payload, id)
  if not ok then
    core.no_retry(v)
    error(v, 0)
  end
  return v
end

return M

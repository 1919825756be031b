-- A decide/act agent loop: Decide picks an action, each action node does
-- its work and returns "decide" to loop back, until Decide says "answer".
-- The "model" here is a scripted policy so the example runs offline; swap
-- Decide:exec for a call_llm (see examples/llm.lua) to make it real.
local pf = require "pocketflow"

local Decide = pf.Node:extend("Decide")
function Decide:prep(shared) return shared end
function Decide:exec(state)
  pf.sleep(0.01)  -- thinking
  if not state.notes.search then return "search" end
  if not state.notes.calc then return "calculate" end
  return "answer"
end
function Decide:post(shared, _, action)
  shared.steps[#shared.steps + 1] = action
  print("decide -> " .. action)
  return action
end

local Search = pf.Node:extend("Search")
function Search:exec() pf.sleep(0.02); return "Lua 5.4 was released in 2020" end
function Search:post(shared, _, found)
  shared.notes.search = found
  print("search: " .. found)
  return "decide"
end

local Calculate = pf.Node:extend("Calculate")
function Calculate:exec() return 2026 - 2020 end
function Calculate:post(shared, _, years)
  shared.notes.calc = years
  print("calculate: " .. years .. " years")
  return "decide"
end

local Answer = pf.Node:extend("Answer")
function Answer:exec() return nil end
function Answer:post(shared)
  shared.answer = ("Lua 5.4 is %d years old."):format(shared.notes.calc)
  print("answer: " .. shared.answer)
end

local decide, search, calc, answer = Decide(), Search(), Calculate(), Answer()
local agent = pf.Flow{ start = decide,
  decide - "search" >> search,
  decide - "calculate" >> calc,
  decide - "answer" >> answer,
  search - "decide" >> decide,
  calc - "decide" >> decide,
}

local shared = { notes = {}, steps = {} }
agent:run(shared)
print("steps: " .. table.concat(shared.steps, ", "))

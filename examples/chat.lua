-- A chat loop as a self-looping node: each user line (stdin, or the
-- script's arguments) goes to the LLM with the history; the reply streams
-- to stdout. "exit" or the end of input ends the flow.
--   OPENAI_API_KEY=... pocketflow examples/chat.lua
--   pocketflow examples/chat.lua "hello" "how are you?"
package.path = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local pf = require "pocketflow"
local llm = require "llm"

local scripted = { ... }

local Chat = pf.Node:extend("Chat")

function Chat:prep(shared)
  local line
  if #scripted > 0 then
    line = table.remove(scripted, 1)
  else
    io.write("you> ")
    io.flush()
    line = io.read("l")   -- blocks the loop; nothing else runs meanwhile
  end
  if line == nil or line == "exit" then return nil end
  shared.messages[#shared.messages + 1] = { role = "user", content = line }
  return shared.messages
end

function Chat:exec(messages)
  if messages == nil then return nil end
  io.write("assistant> ")
  local reply = llm.call_llm(messages, { stream = function(delta)
    io.write(delta)
    io.flush()
  end })
  io.write("\n")
  return reply
end

function Chat:post(shared, _, reply)
  if reply == nil then return "done" end
  shared.messages[#shared.messages + 1] = { role = "assistant", content = reply }
  return "continue"
end

-- Every action Chat returns has a successor: a flow whose node returns an
-- action it has no successor for warns ("flow ends: ..."), since that is
-- usually a typo. Bye ends the walk: it has no successors at all.
local Bye = pf.Node:extend("Bye")
function Bye:post() print("bye") end

local chat = Chat{ max_retries = 2, wait = 1 }
chat:next(chat, "continue")
chat:next(Bye(), "done")

local shared = { messages = { { role = "system", content = "You are a helpful assistant." } } }
pf.Flow{ start = chat }:run(shared)

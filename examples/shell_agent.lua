-- A tool-using agent: the LLM answers each turn with a JSON action,
-- either {"action": "run", "command": "..."} (run through sh with
-- pf.exec, the output fed back) or {"action": "finish", "answer": "..."}.
--   pocketflow examples/shell_agent.lua "how many lua files are here?"
package.path = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local pf = require "pocketflow"
local llm = require "llm"

local MAX_STEPS = 8

local SYSTEM = [[You can run shell commands to answer the user's question.
Reply with exactly one JSON object and nothing else:
{"action": "run", "command": "<a shell command>"} to run a command, or
{"action": "finish", "answer": "<the answer>"} when you know the answer.]]

local Decide = pf.Node:extend("Decide")

function Decide:prep(shared) return shared.messages end

function Decide:exec(messages)
  local reply = llm.call_llm(messages)
  local ok, action = pcall(pf.json.decode, reply:match("%b{}") or "")
  if not ok or type(action) ~= "table" then
    error("the model did not reply with a JSON action: " .. reply)
  end
  return { reply = reply, action = action }
end

function Decide:post(shared, _, res)
  shared.messages[#shared.messages + 1] = { role = "assistant", content = res.reply }
  shared.steps = shared.steps + 1
  local a = res.action
  if a.action == "run" and shared.steps < MAX_STEPS then
    shared.command = a.command
    return "run"
  end
  shared.answer = a.answer or "(no answer within " .. MAX_STEPS .. " steps)"
  return "finish"
end

local Run = pf.Node:extend("Run")

function Run:prep(shared) return shared.command end

function Run:exec(command)
  print("$ " .. command)
  local r = pf.exec({ "sh", "-c", command }, { timeout = 30 })
  return ("exit code %d\nstdout:\n%s\nstderr:\n%s"):format(r.code, r.stdout, r.stderr)
end

function Run:exec_fallback(_, err)
  return "the command failed: " .. tostring(err)
end

function Run:post(shared, _, output)
  io.write(output)
  shared.messages[#shared.messages + 1] = { role = "user", content = "Command output:\n" .. output }
end

local Answer = pf.Node:extend("Answer")

function Answer:prep(shared) return shared.answer end
function Answer:post(_, answer) print("answer: " .. answer) end

local question = table.concat({ ... }, " ")
if question == "" then question = "What is the name of the current directory?" end

local decide, run, answer = Decide{ max_retries = 2 }, Run(), Answer()
local agent = pf.Flow{ start = decide,
  decide - "run" >> run >> decide,
  decide - "finish" >> answer }

agent:run({ steps = 0, messages = {
  { role = "system", content = SYSTEM },
  { role = "user", content = question },
} })

-- A flow that drafts a reply, asks a person to approve it through
-- pf.interrupt, and stops: the run waits in a SQLite file, for days if
-- need be, until it is resumed with the answer from the command line.
--
--   pocketflow examples/approve.lua [--db FILE] [MESSAGE]
--       drafts a reply to MESSAGE, prints the run id and the question
--   pocketflow examples/approve.lua [--db FILE] --resume ID yes|no
--       answers: "yes" sends the draft, anything else drops it
--
-- The file is approve.db in the current directory unless --db is given.
-- Look into it with: pocketflow tools/runs.lua approve.db
local pf = require "pocketflow"

local Draft = pf.Node:extend("Draft")
function Draft:prep(shared) return shared.message end
function Draft:exec(message)
  -- an LLM call in a real program (examples/llm.lua)
  return ("Dear customer, thank you for your message (%q). We are on it."):format(message)
end
function Draft:post(shared, _, draft) shared.draft = draft end

local Approve = pf.Node:extend("Approve")
function Approve:prep(shared) return shared.draft end
function Approve:exec(draft)
  return pf.interrupt({ question = "Send this reply? (yes/no)", draft = draft })
end
function Approve:post(shared, _, answer)
  shared.answer = answer
  return answer == "yes" and "send" or "drop"
end

local Send = pf.Node:extend("Send")
function Send:post(shared) print("sent: " .. shared.draft) end

local Drop = pf.Node:extend("Drop")
function Drop:post(shared) print(("dropped (answer: %s)"):format(shared.answer)) end

local draft, approve = Draft(), Approve()
local _ = draft >> approve
_ = approve - "send" >> Send()
_ = approve - "drop" >> Drop()
local flow = pf.Flow{ name = "Reply", start = draft }

-- the command line
local usage = "usage: pocketflow examples/approve.lua [--db FILE] [MESSAGE | --resume ID ANSWER]\n"
local db, resume, words = "approve.db", nil, {}
local i = 1
while arg[i] do
  local a = arg[i]
  if a == "--db" or a == "--resume" then
    if arg[i + 1] == nil then
      io.stderr:write(usage)
      os.exit(2)
    end
    if a == "--db" then db = arg[i + 1] else resume = arg[i + 1] end
    i = i + 1
  else
    words[#words + 1] = a
  end
  i = i + 1
end
if resume and #words ~= 1 then
  io.stderr:write("approve: --resume ID needs one answer, yes or no\n")
  os.exit(2)
end

local store = pf.sqlite(db)
local ok, _, run = pcall(function()
  if resume then return flow:resume(store, resume, { answer = words[1] }) end
  local message = #words > 0 and table.concat(words, " ") or "Where is my refund?"
  return flow:run({ message = message }, { store = store })
end)
if not ok then   -- an unknown or finished run: the message without the traceback
  io.stderr:write("approve: ", (tostring(_):match("^[^\n]*"):gsub("^.-:%d+: ", "")), "\n")
  os.exit(1)
end

if run.status == "interrupted" then
  local q = run.interrupts[1]
  print(("run %s waits for an answer"):format(run.id))
  print(("%s: %s"):format(q.id, q.payload.question))
  print("  " .. q.payload.draft)
  print(("answer with: pocketflow examples/approve.lua%s --resume %s yes"):format(
    db == "approve.db" and "" or " --db " .. db, run.id))
else
  print(("run %s is %s"):format(run.id, run.status))
end
store:close()

-- The last program of docs/guide.md: a parallel batch flow that summarises
-- documents with an LLM (at most 2 calls at once), gives each a topic,
-- then prints one report. Point it at an OpenAI-compatible API:
--   OPENAI_BASE_URL=... OPENAI_API_KEY=... pocketflow examples/guide.lua
package.path = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local pf = require "pocketflow"
local llm = require "llm"

-- one document's walk: Summarize, then Topic; self.params.doc says which
local Summarize = pf.Node:extend("Summarize")

function Summarize:prep(shared)
  return shared.docs[self.params.doc]
end

function Summarize:exec(doc)
  return llm.call_llm("Summarize in one sentence:\n\n" .. doc.text)
end

function Summarize:exec_fallback(doc, err)
  return "(no summary: " .. tostring(err):match("[^\n]*") .. ")"
end

function Summarize:post(shared, doc, summary)
  shared.summaries[self.params.doc] = summary
end

local Topic = pf.Node:extend("Topic")

function Topic:prep(shared)
  return shared.summaries[self.params.doc]
end

function Topic:exec(summary)
  local answer = llm.call_llm("Give a one-word topic for:\n\n" .. summary)
  return (answer:match("%w+") or "misc"):lower()
end

function Topic:post(shared, _, topic)
  shared.topics[self.params.doc] = topic
end

local summarize = Summarize{ max_retries = 3, wait = 1 }
local topic = Topic{ max_retries = 3, wait = 1 }
local per_doc = pf.Flow{ start = summarize, summarize >> topic }

-- the batch: one walk of per_doc for each document, 2 at a time
local AllDocs = pf.ParallelBatchFlow:extend("AllDocs")

function AllDocs:prep(shared)
  local params = {}
  for i = 1, #shared.docs do params[i] = { doc = i } end
  return params
end

local Report = pf.Node:extend("Report")

function Report:post(shared)
  for i, doc in ipairs(shared.docs) do
    print(("%s [%s]: %s"):format(doc.title, shared.topics[i], shared.summaries[i]))
  end
end

local all = AllDocs{ start = per_doc, max_concurrency = 2 }
local flow = pf.Flow{ start = all, all >> Report() }

flow:run({
  docs = {
    { title = "Coroutines", text = "A coroutine is a function that can suspend "
      .. "itself and be resumed later, keeping its local variables." },
    { title = "Event loops", text = "An event loop waits for I/O and runs the "
      .. "tasks that were waiting for it." },
    { title = "Retries", text = "Calls over a network fail now and then; trying "
      .. "again after a short wait often works." },
  },
  summaries = {},
  topics = {},
})

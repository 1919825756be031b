-- A batch spread over worker processes through Redis (docs/distributed.md).
-- Without REDIS_URL everything runs here; no server is needed:
--
--   pocketflow examples/distributed.lua
--
-- With Redis, start workers (the same script, on any machine that reaches
-- the server), then the flow; both print the same:
--
--   REDIS_URL=redis://127.0.0.1:6379 pocketflow examples/distributed.lua worker
--   REDIS_URL=redis://127.0.0.1:6379 pocketflow examples/distributed.lua
local pf = require "pocketflow"

local url = os.getenv("REDIS_URL")
local q = url and pf.queue{ redis = url, name = "wordcount", lease = 10 }

local DOCS = {
  "the quick brown fox jumps over the lazy dog",
  "a lazy afternoon by the river",
  "the river runs quick and brown",
  "over the hills and far away",
  "a fox a dog and a river",
  "far away the quick fox sleeps",
}

-- map: each document's words counted, one item per document
local Count = pf.ParallelBatchNode:extend("Count")

function Count:prep(shared) return shared.docs end

function Count:exec(doc)
  pf.sleep(0.05)                       -- stands for real work: an LLM call, a parse
  local counts = {}
  for w in doc:gmatch("%a+") do counts[w] = (counts[w] or 0) + 1 end
  return counts
end

-- reduce: the counts of every document, in document order, summed
function Count:post(shared, _, per_doc)
  local total = {}
  for _, counts in ipairs(per_doc) do
    for w, n in pairs(counts) do total[w] = (total[w] or 0) + n end
  end
  shared.total = total
end

local Report = pf.Node:extend("Report")

function Report:post(shared)
  local words = {}
  for w in pairs(shared.total) do words[#words + 1] = w end
  table.sort(words, function(a, b)
    local x, y = shared.total[a], shared.total[b]
    if x ~= y then return x > y end
    return a < b
  end)
  for i = 1, 5 do print(("%-6s %d"):format(words[i], shared.total[words[i]])) end
  print(("%d documents, %d distinct words"):format(#shared.docs, #words))
end

local count = Count{ distribute = q, max_concurrency = 100 }
count:next(Report())
local flow = pf.Flow{ start = count, name = "WordCount" }

if arg[1] == "worker" then
  assert(q, "a worker needs REDIS_URL")
  print("worker: waiting for items on " .. url)
  pf.work(q, flow, { concurrency = 16 })
else
  flow:run({ docs = DOCS })
end

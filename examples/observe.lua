-- Observing a run: a parallel batch flow with a progress bar, a trace of
-- its spans as JSON lines, and its diagram.
--
--   pocketflow examples/observe.lua [trace.jsonl]
--
-- Three documents are summarised in parallel (a batch flow of two nodes
-- per document, at most two documents at once), then a report is
-- written. The progress bar goes to stderr (redrawn on a terminal, a
-- summary line otherwise); the trace goes to the file named (default:
-- observe-trace.jsonl); the diagram (Mermaid) and a per-node summary of
-- the trace go to stdout.
local pf = require "pocketflow"

local trace_path = arg and arg[1] or "observe-trace.jsonl"

-- one document: load it, then summarise it (retried once when flaky)
local Load = pf.Node:extend("Load")
function Load:prep() return self.params.doc end
function Load:exec(doc)
  pf.sleep(0.02 * #doc)          -- stands for reading a file or a URL
  return ("text of %s"):format(doc)
end
function Load:post(shared, doc, text) shared.texts[doc] = text end

local Summarise = pf.Node:extend("Summarise")
Summarise.max_retries = 2
function Summarise:prep(shared) return shared.texts[self.params.doc] end
function Summarise:exec(text)
  pf.sleep(0.03)                 -- stands for an LLM call
  if self.cur_retry == 0 and text:find("beta") then error("rate limited") end
  return text:upper()
end
function Summarise:post(shared, _, summary) shared.summaries[self.params.doc] = summary end

local load = Load()
local _ = load >> Summarise()

-- the batch flow: one walk of Load >> Summarise per document, two at once
local PerDoc = pf.ParallelBatchFlow:extend("PerDoc")
function PerDoc:prep(shared)
  local sets = {}
  for i, doc in ipairs(shared.docs) do sets[i] = { doc = doc } end
  return sets
end
local per_doc = PerDoc{ start = load, max_concurrency = 2, progress = true }

local Report = pf.Node:extend("Report")
function Report:prep(shared) return shared end
function Report:exec(shared)
  local lines = {}
  for _, doc in ipairs(shared.docs) do lines[#lines + 1] = shared.summaries[doc] end
  return table.concat(lines, "\n")
end
function Report:post(shared, _, report) shared.report = report end

_ = per_doc >> Report()
local flow = pf.Flow{ name = "Digest", start = per_doc }

-- the picture of the flow, before it runs
print(flow:to_mermaid{ direction = "LR" })

local shared = { docs = { "alpha", "beta", "gamma" }, texts = {}, summaries = {} }
os.remove(trace_path)
flow:run(shared, { trace = trace_path })
print(shared.report)

-- the trace as a tree: each span under its parent, items in order
local spans, children = {}, {}
for line in io.lines(trace_path) do
  local span = pf.json.decode(line)
  spans[#spans + 1] = span
  local up = span.parent_span_id
  children[up] = children[up] or {}
  table.insert(children[up], span)
end
local function before(a, b)
  local ia, ib = a.attributes["pf.item"], b.attributes["pf.item"]
  if ia and ib then return ia < ib end
  return a.start_time_unix_nano < b.start_time_unix_nano
end
local function show(span, depth)
  local at = span.attributes
  local label = ("%s%s %s"):format(("  "):rep(depth), span.name, at["pf.kind"])
  if at["pf.item"] then label = label .. " " .. at["pf.item"] end
  if at["pf.retries"] then label = label .. (" (retried %d)"):format(at["pf.retries"]) end
  print(label .. " " .. span.status.code)
  local kids = children[span.span_id] or {}
  table.sort(kids, before)
  for _, kid in ipairs(kids) do show(kid, depth + 1) end
end
print(("trace: %d spans in %s"):format(#spans, trace_path))
for _, root in ipairs(children[""]) do show(root, 1) end

-- Draws a research agent's flow as Graphviz DOT or as Mermaid, with the
-- marks of a run halfway through (`marks` as a second argument):
--   pocketflow examples/diagram.lua dot | dot -Tsvg -o flow.svg
--   pocketflow examples/diagram.lua mermaid marks
-- With no argument it prints the Mermaid text.
-- Only the graph matters here, so the classes have no methods; a class
-- made with extend("Name") gives its nodes that name in the diagram.
local pf = require "pocketflow"

local format, with_marks = arg[1] or "mermaid", arg[2] == "marks"
if (format ~= "dot" and format ~= "mermaid") or (arg[2] ~= nil and not with_marks) then
  io.stderr:write("usage: pocketflow examples/diagram.lua [dot|mermaid [marks]]\n")
  os.exit(2)
end

local Decide = pf.Node:extend("Decide")              -- an LLM picks the next action
local Search = pf.BatchNode:extend("Search")         -- one web search per query, in turn
local Fetch = pf.Node:extend("Fetch")                -- downloads one page
local Embed = pf.ParallelBatchNode:extend("Embed")   -- embeds a page's chunks, 8 at once
local Store = pf.Node:extend("Store")                -- saves the vectors
local Skip = pf.Node:extend("Skip")                  -- notes a page it may not read
local Answer = pf.Node:extend("Answer")              -- writes the answer

-- one page: the parallel batch flow runs this for every URL found
local fetch, embed, store, skip = Fetch(), Embed{ max_concurrency = 8 }, Store(), Skip()
local read = pf.ParallelBatchFlow{ name = "Read pages", start = fetch, max_concurrency = 4 }
local _ = fetch >> embed >> store
_ = fetch - "blocked" >> skip

local decide, search, answer = Decide(), Search(), Answer()
_ = decide - "search" >> search
_ = decide - "read" >> read
_ = decide - "answer" >> answer
_ = search >> decide
_ = read >> decide

local agent = pf.Flow{ name = "Research agent", start = decide }

local marks = with_marks and {
  [decide] = "done", [search] = "done", [read] = "current",
  [fetch] = "done", [embed] = "current", [skip] = "failed",
} or nil

if format == "dot" then
  io.write(agent:to_dot{ direction = "LR", marks = marks })
else
  io.write(agent:to_mermaid{ direction = "LR", marks = marks })
end

-- Map-reduce summary of many files: a ParallelBatchFlow summarizes each
-- file (at most max_concurrency LLM calls at once), then one node
-- combines the summaries.
--   pocketflow examples/map_reduce.lua DIR [max_concurrency]
package.path = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local pf = require "pocketflow"
local llm = require "llm"

local dir, maxc = ...
if not dir then
  io.stderr:write("usage: pocketflow map_reduce.lua DIR [max_concurrency]\n")
  os.exit(2)
end

-- the map step: one file's summary
local SummarizeFile = pf.Node:extend("SummarizeFile")

function SummarizeFile:prep()
  local path = self.params.file
  return { path = path, text = pf.read_file(path) }
end

function SummarizeFile:exec(f)
  return llm.call_llm("Summarize this file in one sentence:\n\n" .. f.text)
end

function SummarizeFile:post(shared, f, summary)
  shared.summaries[f.path] = summary
end

local MapFiles = pf.ParallelBatchFlow:extend("MapFiles")

function MapFiles:prep(shared)
  local params = {}
  for _, file in ipairs(shared.files) do params[#params + 1] = { file = file } end
  return params
end

-- the reduce step
local Combine = pf.Node:extend("Combine")

function Combine:prep(shared)
  local lines = {}
  for _, file in ipairs(shared.files) do
    lines[#lines + 1] = ("- %s: %s"):format(file:match("[^/]+$"), shared.summaries[file])
  end
  return table.concat(lines, "\n")
end

function Combine:exec(list)
  return llm.call_llm("Combine these file summaries into one paragraph:\n\n" .. list)
end

function Combine:post(shared, list, summary)
  shared.summary = summary
  print("file summaries:\n" .. list)
  print("overall: " .. summary)
end

-- the regular files of dir, in name order; subfolders and the like are
-- skipped, and a folder that cannot be read is an error
local ok, names = pcall(pf.list_dir, dir)
if not ok then
  io.stderr:write("map_reduce: ", names, "\n")
  os.exit(1)
end
local files = {}
for _, name in ipairs(names) do
  local path = dir .. "/" .. name
  if pf.stat(path).type == "file" then files[#files + 1] = path end
end
if #files == 0 then
  io.stderr:write("map_reduce: no files to summarize in ", dir, "\n")
  os.exit(1)
end

local map = MapFiles{ start = SummarizeFile{ max_retries = 3, wait = 0.5 },
                      max_concurrency = tonumber(maxc) or 4 }
local flow = pf.Flow{ start = map, map >> Combine() }
flow:run({ files = files, summaries = {} })

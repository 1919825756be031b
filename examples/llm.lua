-- call_llm(messages, opts) for any OpenAI-compatible chat-completions API.
--
--   OPENAI_BASE_URL  default https://api.openai.com/v1
--   OPENAI_API_KEY   sent as "Authorization: Bearer ..."
--   OPENAI_MODEL     default gpt-4o-mini
--
-- messages: an array of { role =, content = } (a string is taken as one
-- user message). opts: model, temperature, timeout (seconds, default 120),
-- stream = function(delta) ... end to get the reply as it is generated
-- (runs in the task: it may wait), check = a function given the response
-- first (pf.http.check raises a non-2xx one as a table error with status
-- and retry_after). Returns the whole reply text.
local pf = require "pocketflow"

local llm = {}

local function config(opts)
  local base = opts.base_url or os.getenv("OPENAI_BASE_URL") or "https://api.openai.com/v1"
  return base:gsub("/+$", ""), opts.api_key or os.getenv("OPENAI_API_KEY"),
    opts.model or os.getenv("OPENAI_MODEL") or "gpt-4o-mini"
end

local function fail(res)
  local msg = res.body
  local ok, v = pcall(pf.json.decode, res.body)
  if ok and type(v) == "table" and type(v.error) == "table" then msg = v.error.message end
  error(("call_llm: HTTP %d: %s"):format(res.status, tostring(msg)), 0)
end

function llm.call_llm(messages, opts)
  opts = opts or {}
  if type(messages) == "string" then messages = { { role = "user", content = messages } } end
  local base, key, model = config(opts)
  local headers = { ["Content-Type"] = "application/json" }
  if key then headers.Authorization = "Bearer " .. key end
  local req = { model = model, messages = messages, temperature = opts.temperature }
  local on_delta = opts.stream
  local parts = {}
  local stream
  if on_delta then
    req.stream = true
    stream = pf.http.sse(function(ev)
      if ev.data == "[DONE]" then return end
      local chunk = pf.json.decode(ev.data)
      local choice = chunk.choices and chunk.choices[1]
      local text = choice and choice.delta and choice.delta.content
      if type(text) == "string" and text ~= "" then
        parts[#parts + 1] = text
        on_delta(text)
      end
    end)
  end
  local res = pf.http.request{ method = "POST", url = base .. "/chat/completions",
    headers = headers, body = pf.json.encode(req), timeout = opts.timeout or 120,
    stream = stream }
  if opts.check then opts.check(res) end
  if res.status ~= 200 then fail(res) end
  if on_delta then return table.concat(parts) end
  local reply = pf.json.decode(res.body)
  return reply.choices[1].message.content
end

return llm

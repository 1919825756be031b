-- An OpenAI-compatible chat-completions endpoint for the specs, on the
-- spec HTTP server: POST /v1/chat/completions answers with
-- reply(messages, request) as one JSON completion, or, with "stream":
-- true, as Server-Sent Events of word-sized deltas ending in [DONE].
local httpd = require "support.httpd"
local json = require "pocketflow.json"

local fake = {}

local function completion(text, model)
  return json.encode{ id = "chatcmpl-fake", object = "chat.completion", model = model,
    choices = { { index = 0, finish_reason = "stop",
      message = { role = "assistant", content = text } } } }
end

local function delta(text, model)
  return json.encode{ id = "chatcmpl-fake", object = "chat.completion.chunk", model = model,
    choices = { { index = 0, delta = { content = text } } } }
end

-- fake.start(reply[, opts]) -> server; server.calls lists the decoded
-- requests. reply(messages, body) returns the assistant's text. With
-- opts.delay a plain answer waits that long, and server.peak counts the
-- most requests answered at once.
function fake.start(reply, opts)
  local delay = opts and opts.delay
  local srv
  srv = httpd.start{ routes = {
    ["/v1/chat/completions"] = function(req, res)
      if req.method ~= "POST" then return res:send(405, "POST only") end
      if req.headers.authorization ~= "Bearer test-key" then
        return res:send(401, json.encode{ error = { message = "bad key" } })
      end
      local body = json.decode(req.body)
      srv.calls[#srv.calls + 1] = body
      local text = reply(body.messages, body)
      if not body.stream then
        local function answer()
          srv.in_flight = srv.in_flight - 1
          res:send(200, completion(text, body.model), { ["Content-Type"] = "application/json" })
        end
        srv.in_flight = srv.in_flight + 1
        srv.peak = math.max(srv.peak, srv.in_flight)
        if delay then return res:after(delay, answer) end
        return answer()
      end
      res:start(200, { ["Content-Type"] = "text/event-stream" })
      res:chunk(": keep-alive comment\n\n")
      local parts = {}
      for piece in text:gmatch("%S+%s*") do parts[#parts + 1] = piece end
      if #parts == 0 then parts[1] = text end
      local i = 0
      local function step()
        i = i + 1
        if i > #parts then
          res:chunk("data: [DONE]\n\n")
          return res:finish()
        end
        res:chunk("data: " .. delta(parts[i], body.model) .. "\n\n")
        res:after(0.001, step)
      end
      step()
    end,
  } }
  srv.calls, srv.in_flight, srv.peak = {}, 0, 0
  srv.base_url = srv.url .. "/v1"
  return srv
end

-- the last user message of a chat request
function fake.last_user(messages)
  for i = #messages, 1, -1 do
    if messages[i].role == "user" then return messages[i].content end
  end
end

-- the guide's model (docs/guide.md, examples/guide.lua): a summary names
-- the text's second word; a topic is the summary's last word; anything
-- else is echoed
function fake.guide_reply(messages)
  local text = fake.last_user(messages)
  local body = text:match("\n\n(.*)$")
  if text:find("^Summarize") then
    return "One sentence about " .. body:match("^%S+ (%w+)") .. "s."
  elseif text:find("^Give a one%-word topic") then
    local word = body:match("(%w+)%p*$")
    return word:sub(1, 1):upper() .. word:sub(2) .. "."
  end
  return "A reply to: " .. text:match("[^\n]*")
end

return fake

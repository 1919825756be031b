-- An OpenAI-compatible chat-completions endpoint that fails the way real
-- ones do, for the resilient example's spec: POST /v1/chat/completions
-- follows a script, one step per request, then answers every request
-- after it. Steps:
--   "limit"  429 with Retry-After (opts.retry_after, default "1")
--   "hang"   reads the request and does not answer; the connection stays
--            open until the client closes it, the server stops, or
--            opts.hang_for seconds (default 60) pass
--   "fail"   503 without Retry-After
--   "unauthorized"  401, as for a wrong API key
-- The default script is { "limit", "hang" }: 429, hang, then answers.
local httpd = require "support.httpd"
local json = require "pocketflow.json"

local flaky = {}

local function completion(text, model)
  return json.encode{ id = "chatcmpl-flaky", object = "chat.completion", model = model,
    choices = { { index = 0, finish_reason = "stop",
      message = { role = "assistant", content = text } } } }
end

-- flaky.start(reply[, opts]) -> server with .base_url, .calls (the
-- decoded requests, in order), .steps (the step each request got) and
-- :hung_open() (how many hung requests still hold their connection).
function flaky.start(reply, opts)
  opts = opts or {}
  local script = opts.script or { "limit", "hang" }
  local srv
  srv = httpd.start{ routes = {
    ["/v1/chat/completions"] = function(req, res)
      if req.method ~= "POST" then return res:send(405, "POST only") end
      local ok, body = pcall(json.decode, req.body)
      if not ok or type(body) ~= "table" then return res:send(400, "bad json") end
      srv.calls[#srv.calls + 1] = body
      local step = script[#srv.calls] or "answer"
      srv.steps[#srv.steps + 1] = step
      if step == "limit" then
        return res:send(429, json.encode{ error = { message = "rate limited" } },
          { ["Retry-After"] = opts.retry_after or "1", ["Content-Type"] = "application/json" })
      elseif step == "hang" then
        srv.hung[#srv.hung + 1] = res.conn
        return res:after(opts.hang_for or 60, function() res:close() end)   -- bounded
      elseif step == "fail" then
        return res:send(503, "unavailable")
      elseif step == "unauthorized" then
        return res:send(401, json.encode{ error = { message = "bad key" } })
      end
      res:send(200, completion(reply(body.messages, body), body.model),
        { ["Content-Type"] = "application/json" })
    end,
  } }
  srv.calls, srv.steps, srv.hung = {}, {}, {}
  srv.base_url = srv.url .. "/v1"
  function srv:hung_open()
    local n = 0
    for _, conn in ipairs(self.hung) do if not conn.closed then n = n + 1 end end
    return n
  end
  return srv
end

return flaky

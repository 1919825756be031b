-- An LLM call that holds up in production: a rate limit (429) is retried
-- when the server says (Retry-After), an attempt that hangs is ended
-- after 5 s, other failures are retried with exponential backoff and
-- jitter, all within one minute; after that, a fallback answer.
--   OPENAI_BASE_URL=... OPENAI_API_KEY=... pocketflow examples/resilient.lua "question"
package.path = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local pf = require "pocketflow"
local llm = require "llm"

local Ask = pf.Node:extend("Ask")

function Ask:prep(shared)
  return shared.question
end

-- pf.http.check raises a non-2xx response as a table error:
-- { status =, headers =, body =, url =, retry_after = }
function Ask:exec(question)
  return llm.call_llm(question, { check = pf.http.check })
end

-- asked after each failed attempt that has attempts left
local function retry_on(err)
  if type(err) == "table" and err.status then
    if err.status == 429 or err.status >= 500 then
      return err.retry_after or true   -- the server's wait, else the backoff
    end
    return false                       -- another 4xx: retrying will not help
  end
  return true                          -- a timeout, a network error
end

function Ask:exec_fallback(_, err)
  io.stderr:write("resilient: no answer: ", tostring(err), "\n")
  return "Sorry, the model is not available right now."
end

function Ask:post(shared, _, answer)
  shared.answer = answer
end

local ask = Ask{
  max_retries = 4,                  -- attempts in all
  timeout = 5,                      -- seconds, each attempt
  wait = 0.5, backoff = 2, max_wait = 10, jitter = 0.5,
  deadline = 60,                    -- all attempts and waits
  retry_on = retry_on,
}

local shared = { question = arg[1] or "In one sentence: why do retries need jitter?" }
pf.Flow{ start = ask }:run(shared)
print(shared.answer)

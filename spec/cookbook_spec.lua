-- The cookbook examples, run by the pocketflow binary against a fake
-- OpenAI-compatible server in this process (spec/support/fake_llm.lua):
-- the server serves while pf.exec waits for the child.
local pf = require "pocketflow"
local fake_llm = require "support.fake_llm"
local uv = require "luv"

local BIN, SRC = os.getenv("PF_BIN"), os.getenv("PF_SRC")

local function run_example(srv, args, opts)
  local argv = { BIN, SRC .. "/examples/" .. args[1] }
  for i = 2, #args do argv[#argv + 1] = args[i] end
  return pf.exec(argv, { stdin = opts and opts.stdin, timeout = 60, env = {
    PATH = os.getenv("PATH"), OPENAI_BASE_URL = srv.base_url,
    OPENAI_API_KEY = "test-key", OPENAI_MODEL = "fake-model",
    -- a sanitizer build's binary needs its runtime options too
    ASAN_OPTIONS = os.getenv("ASAN_OPTIONS"), LSAN_OPTIONS = os.getenv("LSAN_OPTIONS"),
    UBSAN_OPTIONS = os.getenv("UBSAN_OPTIONS"),
  } })
end

local function last_user(messages)
  for i = #messages, 1, -1 do
    if messages[i].role == "user" then return messages[i].content end
  end
end

describe("cookbook", function()
  local srv
  after_each(function() if srv then srv:close() end end)

  it("llm.lua calls the API, plain and streamed", function()
    srv = fake_llm.start(function(messages) return "hi " .. last_user(messages) end)
    package.path = SRC .. "/examples/?.lua;" .. package.path
    local llm = require "llm"
    local opts = { base_url = srv.base_url, api_key = "test-key", model = "m" }
    assert.equal("hi there", llm.call_llm("there", opts))
    local deltas = {}
    opts.stream = function(d) deltas[#deltas + 1] = d end
    assert.equal("hi there you", llm.call_llm("there you", opts))
    assert.same({ "hi ", "there ", "you" }, deltas)
    assert.is_true(srv.calls[2].stream)
    opts.api_key = "wrong"
    local ok, err = pcall(llm.call_llm, "x", opts)
    assert.is_false(ok)
    assert.truthy(err:find("HTTP 401"))
  end)

  it("chat.lua holds a conversation read from stdin", function()
    srv = fake_llm.start(function(messages)
      return ("you said %s (turn %d)"):format(last_user(messages), (#messages) // 2)
    end)
    local r = run_example(srv, { "chat.lua" }, { stdin = "hello\nhow are you\n" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("", r.stderr)  -- no warning: the walk ends on purpose
    assert.truthy(r.stdout:find("assistant> you said hello (turn 1)", 1, true))
    assert.truthy(r.stdout:find("assistant> you said how are you (turn 2)", 1, true))
    assert.truthy(r.stdout:find("bye", 1, true))
    assert.equal(2, #srv.calls)
    assert.equal(4, #srv.calls[2].messages)  -- system, user, assistant, user
  end)

  it("map_reduce.lua summarizes files with bounded concurrency", function()
    srv = fake_llm.start(function(messages)
      local text = last_user(messages)
      if text:find("^Summarize") then
        return "about " .. text:match("\n\n(%w+)")
      end
      local n = 0
      for _ in text:gmatch("\n?%- ") do n = n + 1 end
      return "combined " .. n .. " summaries"
    end, { delay = 0.05 })
    local dir = assert(uv.fs_mkdtemp("/tmp/pf_mr_XXXXXX"))
    for i = 1, 6 do pf.write_file(("%s/f%d.txt"):format(dir, i), "topic" .. i .. " and more text") end
    local r = run_example(srv, { "map_reduce.lua", dir, "2" })
    for i = 1, 6 do os.remove(("%s/f%d.txt"):format(dir, i)) end
    uv.fs_rmdir(dir)
    assert.equal(0, r.code, r.stderr)
    for i = 1, 6 do assert.truthy(r.stdout:find("f" .. i .. ".txt: about topic" .. i, 1, true)) end
    assert.truthy(r.stdout:find("overall: combined 6 summaries", 1, true))
    assert.equal(7, #srv.calls)
    assert.equal(2, srv.peak)   -- max_concurrency 2: never more at once
  end)

  it("shell_agent.lua runs a command and answers from its output", function()
    srv = fake_llm.start(function(messages)
      local text = last_user(messages)
      local out = text:match("^Command output:\n.-stdout:\n(.-)\n")
      if out then return ('{"action": "finish", "answer": "the command said %s"}'):format(out) end
      return 'Sure. {"action": "run", "command": "echo agent-was-here"}'
    end)
    local r = run_example(srv, { "shell_agent.lua", "say", "something" })
    assert.equal(0, r.code, r.stderr)
    assert.equal("", r.stderr)
    assert.truthy(r.stdout:find("$ echo agent-was-here", 1, true))
    assert.truthy(r.stdout:find("answer: the command said agent-was-here", 1, true))
    assert.equal(2, #srv.calls)
    assert.equal("say something", srv.calls[1].messages[2].content)
  end)
end)

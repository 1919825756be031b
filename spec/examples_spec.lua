-- Every program in examples/, run as a user runs it: by the pocketflow
-- binary (hello.lua by plain lua5.4 too), the LLM ones against a fake
-- OpenAI-compatible server in this process (spec/support/fake_llm.lua),
-- which serves while pf.exec waits for the child. EXAMPLES lists each
-- file with its checks; the last spec fails if a file of examples/ is not
-- listed. (docs_spec checks that the guide ends with examples/guide.lua;
-- diagram_spec that docs/img/flow.svg is diagram.lua's drawing.)
local pf = require "pocketflow"
local fake_llm = require "support.fake_llm"
local uv = require "luv"

local BIN, SRC = os.getenv("PF_BIN"), os.getenv("PF_SRC")

local srv   -- the fake LLM server of the running spec, closed after it

-- runs examples/<args[1]> with the other args under the binary; the
-- environment only names the fake server (when opts.llm) and what the
-- binary needs, and opts.env's; opts.stdin, opts.cwd as pf.exec's
local function run(args, opts)
  opts = opts or {}
  local argv = { BIN, SRC .. "/examples/" .. args[1] }
  for i = 2, #args do argv[#argv + 1] = args[i] end
  local env = {
    PATH = os.getenv("PATH"),
    OPENAI_BASE_URL = opts.llm and opts.llm.base_url or "http://127.0.0.1:9",
    OPENAI_API_KEY = opts.key or "test-key", OPENAI_MODEL = "fake-model",
    -- a sanitizer build's binary needs its runtime options too
    ASAN_OPTIONS = os.getenv("ASAN_OPTIONS"), LSAN_OPTIONS = os.getenv("LSAN_OPTIONS"),
    UBSAN_OPTIONS = os.getenv("UBSAN_OPTIONS"),
  }
  for k, v in pairs(opts.env or {}) do env[k] = v end
  return pf.exec(argv, { stdin = opts.stdin, cwd = opts.cwd, timeout = 60, env = env })
end

local last_user, guide_reply = fake_llm.last_user, fake_llm.guide_reply

local rm_tree = require("support.leftovers").rm_tree

local HELLO = table.concat({
  "Starting weather flow...",
  "WeatherFetcherNode: Preparing to fetch weather for London.",
  "WeatherFetcherNode: Calling weather API for London...",
  "WeatherFetcherNode: Got weather: Sunny in London",
  "WeatherFetcherNode: Weather report stored in shared.",
  "Weather flow finished.",
  'Final shared data: {city_name = "London", weather_report = "Sunny in London"}',
}, "\n") .. "\n"

-- file of examples/ -> { { what it does, check }, ... }
local EXAMPLES = {
  ["hello.lua"] = {
    { "runs the seed's weather flow", function()
      local r = run{ "hello.lua" }
      assert.equal(0, r.code, r.stderr)
      assert.equal(HELLO, r.stdout)
    end },
    { "also runs from plain lua5.4 with the module", function()
      -- the environment as it is: LUA_PATH, LUA_CPATH (and a sanitizer
      -- build's LD_PRELOAD) find the module under test
      local r = pf.exec({ "lua5.4", SRC .. "/examples/hello.lua" }, { timeout = 60 })
      assert.equal(0, r.code, r.stderr)
      assert.equal(HELLO, r.stdout)
    end },
  },

  ["parallel.lua"] = {
    { "overlaps its calls", function()
      local r = run{ "parallel.lua" }
      assert.equal(0, r.code, r.stderr)
      assert.matches("fetched 20 items: item%-01 %.%.%. item%-20", r.stdout)
      local elapsed = tonumber(r.stdout:match("elapsed ([%d.]+) s"))
      assert.is_true(elapsed >= 0.39 and elapsed < 1.5, "elapsed " .. tostring(elapsed))
    end },
  },

  ["agent.lua"] = {
    { "loops decide/act until it answers", function()
      local r = run{ "agent.lua" }
      assert.equal(0, r.code, r.stderr)
      assert.matches("answer: Lua 5%.4 is 6 years old%.", r.stdout)
      assert.matches("steps: search, calculate, answer\n$", r.stdout)
    end },
  },

  ["llm.lua"] = {
    { "calls the API, plain and streamed (required in this process)", function()
      srv = fake_llm.start(function(messages) return "hi " .. last_user(messages) end)
      local path = package.path
      package.path = SRC .. "/examples/?.lua;" .. package.path
      local llm = require "llm"
      package.path = path
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
    end },
  },

  ["chat.lua"] = {
    { "holds a conversation read from stdin", function()
      srv = fake_llm.start(function(messages)
        return ("you said %s (turn %d)"):format(last_user(messages), (#messages) // 2)
      end)
      local r = run({ "chat.lua" }, { llm = srv, stdin = "hello\nhow are you\n" })
      assert.equal(0, r.code, r.stderr)
      assert.equal("", r.stderr)  -- no warning: the walk ends on purpose
      assert.truthy(r.stdout:find("assistant> you said hello (turn 1)", 1, true))
      assert.truthy(r.stdout:find("assistant> you said how are you (turn 2)", 1, true))
      assert.truthy(r.stdout:find("bye", 1, true))
      assert.equal(2, #srv.calls)
      assert.equal(4, #srv.calls[2].messages)  -- system, user, assistant, user
    end },
  },

  ["map_reduce.lua"] = {
    { "summarizes files with bounded concurrency", function()
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
      local r = run({ "map_reduce.lua", dir, "2" }, { llm = srv })
      rm_tree(dir)
      assert.equal(0, r.code, r.stderr)
      for i = 1, 6 do assert.truthy(r.stdout:find("f" .. i .. ".txt: about topic" .. i, 1, true)) end
      assert.truthy(r.stdout:find("overall: combined 6 summaries", 1, true))
      assert.equal(7, #srv.calls)
      assert.equal(2, srv.peak)   -- max_concurrency 2: never more at once
    end },
    { "errors clearly on a missing folder", function()
      local r = run{ "map_reduce.lua", "/no/such/folder", "2" }
      assert.equal(1, r.code)
      assert.truthy(r.stderr:find("map_reduce: pf.list_dir: /no/such/folder: "
                                  .. "no such file or directory", 1, true), r.stderr)
    end },
    { "skips subfolders (pf.list_dir)", function()
      srv = fake_llm.start(function(messages)
        local text = messages[#messages].content
        if text:find("^Summarize") then return "about " .. text:match("\n\n(%w+)") end
        return "combined"
      end)
      local dir = assert(uv.fs_mkdtemp("/tmp/pf_mr_XXXXXX"))
      pf.write_file(dir .. "/a.txt", "alpha text")
      pf.mkdir(dir .. "/sub")
      pf.write_file(dir .. "/sub/inner.txt", "inner")
      local r = run({ "map_reduce.lua", dir, "2" }, { llm = srv })
      rm_tree(dir)
      assert.equal(0, r.code, r.stderr)
      assert.truthy(r.stdout:find("a.txt: about alpha", 1, true), r.stdout)
      assert.falsy(r.stdout:find("sub", 1, true))
      assert.equal(2, #srv.calls)
    end },
  },

  ["shell_agent.lua"] = {
    { "runs a command and answers from its output", function()
      srv = fake_llm.start(function(messages)
        local text = last_user(messages)
        local out = text:match("^Command output:\n.-stdout:\n(.-)\n")
        if out then return ('{"action": "finish", "answer": "the command said %s"}'):format(out) end
        return 'Sure. {"action": "run", "command": "echo agent-was-here"}'
      end)
      local r = run({ "shell_agent.lua", "say", "something" }, { llm = srv })
      assert.equal(0, r.code, r.stderr)
      assert.equal("", r.stderr)
      assert.truthy(r.stdout:find("$ echo agent-was-here", 1, true))
      assert.truthy(r.stdout:find("answer: the command said agent-was-here", 1, true))
      assert.equal(2, #srv.calls)
      assert.equal("say something", srv.calls[1].messages[2].content)
    end },
  },

  ["guide.lua"] = {
    { "summarises the documents, two LLM calls at most at once", function()
      srv = fake_llm.start(guide_reply, { delay = 0.2 })
      -- from another folder: the example finds llm.lua beside itself
      local r = run({ "guide.lua" }, { llm = srv, cwd = "/" })
      assert.equal(0, r.code, r.stderr)
      assert.equal("", r.stderr)
      assert.equal(table.concat({
        "Coroutines [coroutines]: One sentence about coroutines.",
        "Event loops [events]: One sentence about events.",
        "Retries [overs]: One sentence about overs.",
      }, "\n") .. "\n", r.stdout)
      assert.equal(6, #srv.calls)     -- a summary and a topic per document
      assert.equal(2, srv.peak)       -- max_concurrency = 2
    end },
    { "falls back per document when the API fails", function()
      srv = fake_llm.start(guide_reply)
      local r = run({ "guide.lua" }, { llm = srv, key = "wrong-key" })
      -- the summaries fall back; the topics of the fallbacks fail for good
      assert.equal(1, r.code)
      assert.truthy(r.stderr:find("call_llm: HTTP 401: bad key", 1, true), r.stderr)
    end },
  },

  -- its runs need the flaky API of spec/support/flaky_llm.lua and the
  -- attempt options beside it: spec/attempts_spec.lua runs it
  ["resilient.lua"] = {
    { "is run by spec/attempts_spec.lua against a flaky API", function()
      local f = assert(io.open(SRC .. "/spec/attempts_spec.lua"))
      local text = f:read("a")
      f:close()
      assert.truthy(text:find('describe("examples/resilient.lua"', 1, true))
      assert.truthy(text:find('"/examples/resilient.lua"', 1, true))
    end },
  },

  ["observe.lua"] = {
    { "prints its diagram, draws progress and writes the trace it then shows", function()
      local dir = os.tmpname()
      os.remove(dir)
      assert(uv.fs_mkdir(dir, 448))
      local r = run({ "observe.lua", "t.jsonl" }, { cwd = dir })
      local spans = {}
      local f = io.open(dir .. "/t.jsonl")
      if f then
        for line in f:lines() do spans[#spans + 1] = pf.json.decode(line) end
        f:close()
      end
      rm_tree(dir)
      assert.equal(0, r.code, r.stderr)
      assert.equal(table.concat({
        "flowchart LR", '  subgraph n1["PerDoc (parallel batch)"]', '    n2["Load"]',
        '    n3["Summarise"]', "  end", '  n4["Report"]', "  n1 --> n4", "  n2 --> n3", "",
        "TEXT OF ALPHA", "TEXT OF BETA", "TEXT OF GAMMA", "trace: 13 spans in t.jsonl",
        "  Digest run OK", "    Digest node OK", "      PerDoc node OK",
        "        PerDoc item 1 OK", "          Load node OK", "          Summarise node OK",
        "        PerDoc item 2 OK", "          Load node OK", "          Summarise node (retried 1) OK",
        "        PerDoc item 3 OK", "          Load node OK", "          Summarise node OK",
        "      Report node OK", "" }, "\n"), r.stdout)
      -- stderr is not a terminal: the summary line only, no control codes
      assert.matches("^PerDoc 3/3 100%% [%d.]+/s %d:%d%d\n$", r.stderr)
      assert.equal(13, #spans)
      local ids = {}
      for _, s in ipairs(spans) do ids[s.span_id] = s end
      for _, s in ipairs(spans) do
        assert.equal(spans[1].trace_id, s.trace_id)
        if s.parent_span_id ~= "" then assert.is_not_nil(ids[s.parent_span_id]) end
      end
    end },
  },

  ["distributed.lua"] = {
    { "counts words here, without Redis", function()
      local r = run{ "distributed.lua" }
      assert.equal(0, r.code, r.stderr)
      assert.equal("the    6\na      4\nand    3\nfox    3\nquick  3\n"
        .. "6 documents, 18 distinct words\n", r.stdout)
    end },
    { "prints the same with its items on two worker processes through Redis", function()
      local rs = require("support.redisd").start()
      local ok, err = pcall(pf.run, function()
        local env = { REDIS_URL = rs.url }
        local workers = {
          pf.spawn(run, { "distributed.lua", "worker" }, { env = env }),
          pf.spawn(run, { "distributed.lua", "worker" }, { env = env }),
        }
        -- with REDIS_URL the flow cannot run its items itself
        local r = run({ "distributed.lua" }, { env = env })
        for _, w in ipairs(workers) do w:cancel() end
        assert.equal(0, r.code, r.stderr)
        assert.equal(run{ "distributed.lua" }.stdout, r.stdout)
      end)
      rs:kill()
      assert(ok, err)
    end },
  },

  ["approve.lua"] = {
    { "drafts, stops at the question, and finishes when resumed with the answer", function()
      local dir = assert(uv.fs_mkdtemp("/tmp/pf_approve_XXXXXX"))
      local first = run({ "approve.lua", "Where", "is", "my", "parcel?" }, { cwd = dir })
      assert.equal(0, first.code, first.stderr)
      local id = first.stdout:match("^run (%S+) waits for an answer\n")
      assert.truthy(id, first.stdout)
      assert.matches("\nReply/Approve#1: Send this reply%? %(yes/no%)\n" ..
                     '  Dear customer, thank you for your message %("Where is my parcel%?"%)', first.stdout)
      assert.matches("\nanswer with: pocketflow examples/approve.lua %-%-resume " ..
                     id:gsub("%p", "%%%0") .. " yes\n$", first.stdout)
      -- the answer, in another process on the same file
      local second = run({ "approve.lua", "--resume", id, "yes" }, { cwd = dir })
      assert.equal(0, second.code, second.stderr)
      assert.equal('sent: Dear customer, thank you for your message ("Where is my parcel?"). ' ..
                   "We are on it.\nrun " .. id .. " is done\n", second.stdout)
      local again = run({ "approve.lua", "--resume", id, "yes" }, { cwd = dir })
      assert.same({ 1, "approve: run '" .. id .. "' is done\n" }, { again.code, again.stderr })
      -- "no", with --db
      local db = dir .. "/other.db"
      local third = run({ "approve.lua", "--db", db }, { cwd = dir })
      id = third.stdout:match("^run (%S+) waits")
      assert.matches("approve.lua %-%-db " .. db:gsub("%p", "%%%0") .. " %-%-resume", third.stdout)
      local fourth = run({ "approve.lua", "--db", db, "--resume", id, "no" }, { cwd = dir })
      assert.equal("dropped (answer: no)\nrun " .. id .. " is done\n", fourth.stdout)
      rm_tree(dir)
    end },
  },

  ["diagram.lua"] = {
    { "prints its flow as Mermaid (the default) or Graphviz, or says how to call it", function()
      local m = run{ "diagram.lua", "mermaid" }
      assert.equal(0, m.code, m.stderr)
      assert.matches("^flowchart LR\n", m.stdout)
      assert.equal(m.stdout, run{ "diagram.lua" }.stdout)
      local d = run{ "diagram.lua", "dot" }
      assert.equal(0, d.code, d.stderr)
      assert.matches('^digraph "Research agent" {\n', d.stdout)
      local bad = run{ "diagram.lua", "svg" }
      assert.are_not.equal(0, bad.code)
      assert.matches("usage", bad.stderr)
    end },
    { "prints the same from plain lua5.4 with the module", function()
      local r = pf.exec({ "lua5.4", SRC .. "/examples/diagram.lua", "mermaid" }, { timeout = 60 })
      assert.equal(0, r.code, r.stderr)
      assert.equal(run{ "diagram.lua", "mermaid" }.stdout, r.stdout)
    end },
  },
}

describe("examples/", function()
  after_each(function()
    if srv then srv:close() end
    srv = nil
  end)

  local names = {}
  for name in pairs(EXAMPLES) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    for _, case in ipairs(EXAMPLES[name]) do
      it(name .. " " .. case[1], case[2])
    end
  end

  it("has no file the table above leaves out, and the table no file it lacks", function()
    local files, req = {}, assert(uv.fs_scandir(SRC .. "/examples"))
    while true do
      local name = uv.fs_scandir_next(req)
      if not name then break end
      files[name] = true
      assert(EXAMPLES[name], "examples/" .. name .. " is not in examples_spec's table")
    end
    for name in pairs(EXAMPLES) do
      assert(files[name], "examples_spec lists " .. name .. ", not in examples/")
    end
    assert.is_true(#names >= 9, "examples: " .. #names)
  end)
end)

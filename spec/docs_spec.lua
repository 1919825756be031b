-- The docs cannot rot: every ```lua block of docs/guide.md runs with the
-- pocketflow binary (LLM calls go to a fake OpenAI-compatible server in
-- this process, spec/support/fake_llm.lua) and prints what the guide says
-- it prints; the guide's last program is examples/guide.lua, byte for
-- byte (examples_spec runs it); every ```lua block of README.md and docs/ compiles, and those that
-- are whole programs run; links inside the repo lead to files that exist.
local pf = require "pocketflow"
local fake_llm = require "support.fake_llm"

local BIN, SRC = os.getenv("PF_BIN"), os.getenv("PF_SRC")

local function read(path)
  local f = assert(io.open(SRC .. "/" .. path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function lines_of(text)
  local out = {}
  for line in (text .. "\n"):gmatch("(.-)\n") do out[#out + 1] = line end
  return out
end

-- The fenced blocks of a markdown text: { lang =, code =, line =, output = }.
-- A block's output is the ```text block that follows it when the only
-- line between them (blank lines aside) is exactly "It prints:".
local function blocks(text)
  local lines, out, i = lines_of(text), {}, 1
  while i <= #lines do
    local lang = lines[i]:match("^```(%S*)")
    if lang then
      local start, body = i, {}
      i = i + 1
      while i <= #lines and not lines[i]:match("^```%s*$") do
        body[#body + 1] = lines[i]
        i = i + 1
      end
      assert(i <= #lines, "unclosed code block at line " .. start)
      out[#out + 1] = { lang = lang, code = table.concat(body, "\n") .. "\n", line = start }
    end
    i = i + 1
  end
  -- attach outputs
  local pos = {}
  for n, b in ipairs(out) do pos[b.line] = n end
  for _, b in ipairs(out) do
    if b.lang == "lua" then
      local j = b.line + 1
      while lines[j] and not lines[j]:match("^```%s*$") do j = j + 1 end
      j = j + 1
      while lines[j] == "" do j = j + 1 end
      if lines[j] == "It prints:" then
        j = j + 1
        while lines[j] == "" do j = j + 1 end
        local nxt = out[pos[j]]
        assert(nxt and nxt.lang == "text",
          "line " .. j .. ": \"It prints:\" must be followed by a ```text block")
        b.output = nxt.code
      end
    end
  end
  return out
end

-- a whole program, not a fragment: it loads the module itself
local function is_program(code)
  return ("\n" .. code):find('\nlocal pf = require "pocketflow"\n') ~= nil
end

local function child_env(srv)
  return {
    PATH = os.getenv("PATH"),
    LUA_PATH = SRC .. "/examples/?.lua;;",   -- the guide's require "llm"
    OPENAI_BASE_URL = srv.base_url, OPENAI_API_KEY = "test-key",
    OPENAI_MODEL = "fake-model",
    -- a sanitizer build's binary needs its runtime options too
    ASAN_OPTIONS = os.getenv("ASAN_OPTIONS"), LSAN_OPTIONS = os.getenv("LSAN_OPTIONS"),
    UBSAN_OPTIONS = os.getenv("UBSAN_OPTIONS"),
  }
end

-- runs a program text with the binary, from a temporary file
local function run_program(srv, code, args)
  local path = os.tmpname()
  pf.write_file(path, code)
  local argv = { BIN, path }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  local ok, r = pcall(pf.exec, argv, { timeout = 60, env = child_env(srv) })
  os.remove(path)
  assert(ok, r)
  return r
end

local reply = fake_llm.guide_reply

local GUIDE = blocks(read("docs/guide.md"))

describe("docs/guide.md", function()
  local srv
  before_each(function() srv = fake_llm.start(reply) end)
  after_each(function() srv:close() end)

  local n = 0
  for _, b in ipairs(GUIDE) do
    if b.lang == "lua" then
      n = n + 1
      it(("runs its lua block at line %d%s"):format(b.line,
          b.output and ", printing what it says" or ""), function()
        assert.truthy(is_program(b.code),
          "a guide block is a whole program: local pf = require \"pocketflow\"")
        local r = run_program(srv, b.code)
        assert.equal(0, r.code, r.stderr)
        assert.equal("", r.stderr)    -- no warning, no error
        if b.output then assert.equal(b.output, r.stdout) end
      end)
    end
  end

  it("has lua blocks, and outputs to check", function()
    local outputs = 0
    for _, b in ipairs(GUIDE) do if b.output then outputs = outputs + 1 end end
    assert.is_true(n >= 8, "lua blocks: " .. n)
    assert.is_true(outputs >= 5, "checked outputs: " .. outputs)
  end)

  it("ends with examples/guide.lua, byte for byte", function()
    local last
    for _, b in ipairs(GUIDE) do if b.lang == "lua" then last = b end end
    assert.equal(read("examples/guide.lua"), last.code)
  end)
end)

-- every doc the user has: README.md and docs/*.md (drafts aside)
local function doc_files()
  local files = { "README.md" }
  local ls = io.popen("cd '" .. SRC .. "' && ls docs/*.md")
  for name in ls:lines() do files[#files + 1] = name end
  ls:close()
  return files
end

describe("README.md and docs/", function()
  local files = doc_files()

  it("exist", function()
    local have = {}
    for _, f in ipairs(files) do have[f] = true end
    for _, f in ipairs{ "docs/README.md", "docs/guide.md", "docs/nodes-and-flows.md",
        "docs/runtime.md", "docs/io.md", "docs/cli.md", "docs/errors.md" } do
      assert.truthy(have[f], f)
    end
  end)

  it("have lua blocks that compile", function()
    local count = 0
    for _, f in ipairs(files) do
      for _, b in ipairs(blocks(read(f))) do
        if b.lang == "lua" then
          count = count + 1
          local fn, err = load(b.code, "=" .. f .. ":" .. b.line)
          assert(fn, err)
        end
      end
    end
    assert.is_true(count >= 20, "lua blocks: " .. count)
  end)

  it("run the whole programs they show, printing what they say", function()
    local srv = fake_llm.start(reply)
    local ran = 0
    local ok, err = pcall(function()
      for _, f in ipairs(files) do
        if f ~= "docs/guide.md" then
          for _, b in ipairs(blocks(read(f))) do
            if b.lang == "lua" and is_program(b.code) then
              ran = ran + 1
              local r = run_program(srv, b.code)
              assert(r.code == 0, f .. ":" .. b.line .. ": " .. r.stderr)
              if b.output then
                assert(b.output == r.stdout, f .. ":" .. b.line .. ": printed\n" .. r.stdout)
              end
            end
          end
        end
      end
    end)
    srv:close()
    assert(ok, err)
    assert.is_true(ran >= 3, "programs run: " .. ran)
  end)

  it("README's layout table names every file of the top level, src/, lua/, docs/, tools/, spec/c/, spec/support/", function()
    local readme = read("README.md"):gsub("<!%-%-.-%-%->", "")   -- not in comments
    local function named(path)
      return readme:find("`" .. path .. "`", 1, true) or readme:find("`" .. path .. "/", 1, true)
    end
    -- the repo's files (git's list: no build trees or stray local files)
    local git = io.popen("git -C '" .. SRC .. "' ls-files")
    local want, n = {}, 0
    for path in git:lines() do
      local top = path:match("^[^/]+")
      local dir = path:match("^(.*)/[^/]+$")
      want[top] = true
      for _, d in ipairs{ "src", "lua/pocketflow", "docs", "tools", "spec/c", "spec/support" } do
        if dir == d then want[path] = true end
      end
    end
    git:close()
    for path in pairs(want) do
      n = n + 1
      assert(named(path), "README.md's layout table does not name " .. path)
    end
    assert.is_true(n >= 40, "files: " .. n)
  end)

  -- GitHub's anchors: headings lower-cased, punctuation dropped, spaces as -
  local function anchors(text)
    local set = {}
    for _, line in ipairs(lines_of(text)) do
      local h = line:match("^#+%s+(.-)%s*$")
      if h then set[(h:lower():gsub("[^%w%s_-]", ""):gsub("%s", "-"))] = true end
    end
    return set
  end

  it("link only to files in the repo, and to headings that exist", function()
    local links = 0
    for _, f in ipairs(files) do
      local dir = f:match("^(.*)/") or "."
      for target in read(f):gmatch("%]%(([^)%s]+)%)") do
        if not target:find("^%a[%w+.-]*:") then
          links = links + 1
          local path, anchor = target:match("^([^#]*)#?(.*)$")
          local rel = path == "" and f or (dir == "." and path or dir .. "/" .. path)
          local h = io.open(SRC .. "/" .. rel, "rb")
          assert(h, f .. " links to " .. target .. ", which does not exist")
          h:close()
          -- inside the repo: no way out through ..
          local depth = dir == "." and 0 or select(2, (dir .. "/"):gsub("/", ""))
          local ups = select(2, path:gsub("%.%./", ""))
          assert(ups <= depth, f .. " links outside the repo: " .. target)
          if anchor ~= "" then
            assert(anchors(read(rel))[anchor], f .. " links to " .. target
              .. ": no such heading in " .. rel)
          end
        end
      end
    end
    assert.is_true(links >= 30, "links: " .. links)
  end)
end)

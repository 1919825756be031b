-- Trace sinks (API.md §7, traces): spans as JSON lines with
-- OpenTelemetry's field names, PF_TRACE, capture, and OTLP/HTTP JSON sent
-- in batches from tasks of their own to a local collector, which never
-- holds the run back and only warns when it is down. The events go
-- through the real paths: core.event (C pf_emit, the walk's) and pf.emit.
local pf = require "pocketflow"
local core = require "pocketflow.core"
local events = require "pocketflow.events"
local trace = require "pocketflow.trace"
local httpd = require "support.httpd"
local warnings = require "support.warnings"
local fdcount = require "support.fdcount"

local function slurp(p)
  local f = assert(io.open(p, "rb")); local s = f:read("a"); f:close(); return s
end

local function lines_of(path)
  local out = {}
  for line in slurp(path):gmatch("[^\n]+") do out[#out + 1] = pf.json.decode(line) end
  return out
end

-- a run with a node of two concurrent items, the second failing
local function a_run(extra)
  pf.run(function()
    core.event{ type = "run_start", node = "Flow", path = "Flow" }
    core.event{ type = "node_start", node = "Translate", path = "Flow/Translate", attempt = 1 }
    local tasks, second_done = {}, false
    for i = 1, 2 do
      tasks[i] = pf.spawn(function()
        core.event{ type = "item_start", node = "Translate", item = i }
        pf.sleep(0.01)
        -- item 1 ends after item 2, however slow the machine
        while i == 1 and not second_done do pf.sleep(0.005) end
        if i == 2 then core.event{ type = "retry", delay = 0, attempt = 1 } end
        core.event{ type = "item_end", status = i == 2 and "error" or "ok",
                    error = i == 2 and "bad \"item\"\n" or nil }
        if i == 2 then second_done = true end
      end)
    end
    for i = 1, 2 do tasks[i]:wait() end
    if extra then extra() end
    core.event{ type = "node_end", status = "ok", prep_res = { 1, 2 }, exec_res = "x" }
    core.event{ type = "run_end", status = "ok" }
  end)
end

-- path: a fresh file for each spec of the describe block that calls
-- each_path, removed after it, and no event subscriber left behind
local path
local function each_path()
  before_each(function() path = os.tmpname() end)
  after_each(function()
    os.remove(path)
    assert.equal(0, events.count())
  end)
end

describe("trace to a file", function()
  each_path()

  it("writes one JSON object per finished span with OpenTelemetry's names", function()
    local before = core.wall()
    local sink = trace.open(path)
    a_run()
    sink:close()
    local after = core.wall() + 1
    local spans = lines_of(path)
    assert.equal(4, #spans)
    local by = {}
    for _, s in ipairs(spans) do
      by[s.name .. (s.attributes["pf.item"] or "")] = s
      assert.matches("^%x+$", s.trace_id); assert.equal(32, #s.trace_id)
      assert.matches("^%x+$", s.span_id); assert.equal(16, #s.span_id)
      assert.equal(spans[1].trace_id, s.trace_id)
      assert.is_true(math.type(s.start_time_unix_nano) == "integer")
      assert.is_true(s.start_time_unix_nano <= s.end_time_unix_nano)
      assert.is_true(s.start_time_unix_nano >= before * 1000000000)
      assert.is_true(s.end_time_unix_nano <= after * 1000000000)
    end
    local run, node, i1, i2 = by.Flow, by.Translate, by.Translate1, by.Translate2
    assert.equal("", run.parent_span_id)
    assert.equal(run.span_id, node.parent_span_id)
    assert.equal(node.span_id, i1.parent_span_id)
    assert.equal(node.span_id, i2.parent_span_id)
    assert.same({ code = "OK" }, i1.status)
    assert.same({ code = "ERROR", message = "bad \"item\"\n" }, i2.status)
    assert.equal(1, i2.attributes["pf.retries"])
    assert.equal("error", i2.attributes["pf.status"])
    assert.equal("Flow/Translate", node.attributes["pf.path"])
    assert.equal("node", node.attributes["pf.kind"])
    -- ends come in order: item 2 ends before item 1
    assert.equal(2, spans[1].attributes["pf.item"])
    assert.equal("Flow", spans[4].name)
    -- nothing is captured by default
    assert.is_nil(node.attributes["pf.prep_res"])
    assert.is_nil(node.attributes["pf.exec_res"])
  end)

  it("records prep and exec results with capture = true, cut to the limit", function()
    local sink = trace.open(path, { capture = true })
    a_run()
    sink:close()
    local node
    for _, s in ipairs(lines_of(path)) do if s.name == "Translate" and not s.attributes["pf.item"] then node = s end end
    assert.equal("[1,2]", node.attributes["pf.prep_res"])
    assert.equal('"x"', node.attributes["pf.exec_res"])
    os.remove(path)
    sink = trace.open(path, { capture = true })
    pf.run(function()
      core.event{ type = "node_start", node = "Big" }
      core.event{ type = "node_end", status = "ok", exec_res = string.rep("a", 10000),
                  prep_res = function() end }
    end)
    sink:close()
    local s = lines_of(path)[1]
    assert.equal(trace.capture_limit + #"...(truncated)", #s.attributes["pf.exec_res"])
    assert.matches("%.%.%.%(truncated%)$", s.attributes["pf.exec_res"])
    assert.matches('^"function: ', s.attributes["pf.prep_res"])
  end)

  it("appends and keeps runs apart by trace_id; events of other runs stay out", function()
    local sink = trace.open(path, { run_id = "00000000000000000000000000000abc" })
    pf.run(function()
      core.event{ type = "run_start", node = "A", run_id = "00000000000000000000000000000abc" }
      core.event{ type = "run_end" }
      core.event{ type = "run_start", node = "B" }
      core.event{ type = "run_end" }
    end)
    sink:close()
    local sink2 = trace.open(path)
    a_run()
    sink2:close()
    local spans = lines_of(path)
    assert.equal(5, #spans)
    assert.equal("A", spans[1].name)
    assert.equal("00000000000000000000000000000abc", spans[1].trace_id)
    assert.are_not.equal(spans[1].trace_id, spans[2].trace_id)
  end)

  it("is the sink of PF_TRACE for a run (run_sinks)", function()
    local bin = assert(os.getenv("PF_BIN"))
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write([[
      local pf = require "pocketflow"
      local core = require "pocketflow.core"
      local events = require "pocketflow.events"
      local id = events.new_run_id()
      local close = events.run_sinks({}, id)
      pf.run(function()
        core.event{ type = "run_start", node = "EnvRun", run_id = id }
        pf.emit("x")
        core.event{ type = "run_end", status = "ok" }
      end)
      close()
      print(id)
    ]])
    f:close()
    local p = io.popen("env -u LD_PRELOAD PF_TRACE=" .. path .. " " .. bin .. " " .. script)
    local id = p:read("l")
    assert.is_true(p:close())
    os.remove(script)
    local spans = lines_of(path)
    assert.equal(1, #spans)
    assert.equal("EnvRun", spans[1].name)
    assert.equal(id, spans[1].trace_id)
  end)

  it("leaves no descriptor open and survives odd values", function()
    -- descriptors of this process open on the trace file
    local function open_on_path()
      local p = assert(io.popen("unset LD_PRELOAD; ls -l /proc/" .. fdcount.pid() .. "/fd"))
      local n = 0
      for line in p:lines() do
        if line:sub(-#path - 4) == " -> " .. path then n = n + 1 end
      end
      p:close()
      return n
    end
    local keep = {}
    for round = 1, 3 do
      local sink = trace.open(path, { capture = true })
      assert.equal(1, open_on_path())
      local cyc = {}; cyc.self = cyc
      pf.run(function()
        core.event{ type = "node_start", node = "\0weird\255name", path = { "not", "a", "string" } }
        core.event{ type = "retry", attempt = 1, delay = 0.1, error = "e" }
        core.event{ type = "fallback", attempt = 2, error = "e" }
        core.event{ type = "node_end", status = "cancelled", exec_res = cyc, prep_res = 0 / 0,
                    error = setmetatable({}, { __tostring = function() return "an error object" end }) }
      end)
      sink:close()
      sink:close()   -- twice is harmless
      keep[round] = sink   -- so that no collection closes what close() left
      assert.equal(0, open_on_path())
    end
    local spans = lines_of(path)
    assert.equal(3, #spans)
    local s = spans[1]
    assert.same({ code = "UNSET", message = "an error object" }, s.status)
    assert.equal("cancelled", s.attributes["pf.status"])
    assert.equal(1, s.attributes["pf.retries"])
    assert.is_true(s.attributes["pf.fallback"])
    assert.equal(2, s.attributes["pf.attempt"])
    assert.equal("not > a > string", s.attributes["pf.path"])   -- an array of names
    assert.equal("\0weird\u{FFFD}name", s.name)
    assert.matches('^"table: ', s.attributes["pf.exec_res"])
  end)

  -- one span per name, each line read back as raw text and as JSON
  local function spans_named(names, capture, exec_res)
    local sink = trace.open(path, { capture = capture })
    pf.run(function()
      for i = 1, #names do
        core.event{ type = "node_start", node = names[i], path = "Flow/" .. names[i] }
        core.event{ type = "node_end", status = "ok", exec_res = exec_res }
      end
    end)
    sink:close()
    local raw = {}
    for line in slurp(path):gmatch("[^\n]+") do raw[#raw + 1] = line end
    return lines_of(path), raw
  end

  it("escapes hostile names exactly as JSON's encoder does; bad UTF-8 becomes U+FFFD", function()
    local cjson = require "cjson"
    local names = { "plain ASCII name", 'quo"te', "back\\slash", "a/b", "tab\tnew\nline",
                    "\0nul", "del\127", "é and 漢字 and 😀", "\255\254", "bad \192\128 overlong",
                    "cut \226\130", "surrogate \237\160\128", "\128lead", string.rep("long é ", 100) }
    local spans, raw = spans_named(names)
    assert.equal(#names, #spans)
    for i, name in ipairs(names) do
      local valid = utf8.len(name) ~= nil
      if valid then
        -- byte for byte what cjson writes (the ASCII fast path included)
        assert.truthy(raw[i]:find('"name":' .. cjson.encode(name) .. ',', 1, true), name)
        assert.equal(name, spans[i].name)
        assert.equal("Flow/" .. name, spans[i].attributes["pf.path"])
      else
        assert.is_truthy(utf8.len(spans[i].name), name)
        assert.truthy(spans[i].name:find("\u{FFFD}", 1, true), name)
      end
    end
    -- each bad byte is one U+FFFD, the good ones are kept
    assert.equal("\u{FFFD}\u{FFFD}", spans[9].name)
    assert.equal("bad \u{FFFD}\u{FFFD} overlong", spans[10].name)
    assert.equal("cut \u{FFFD}\u{FFFD}", spans[11].name)
    assert.equal("\u{FFFD}lead", spans[13].name)
  end)

  it("cleans a long string of bad UTF-8 in one pass (it took minutes)", function()
    local n = 200000
    local bad = string.rep("\255", n)
    local c0 = os.clock()
    local spans = spans_named({ "x" .. bad })
    local cpu = os.clock() - c0
    assert.equal("x" .. string.rep("\u{FFFD}", n), spans[1].name)
    -- linear: well under a second plain, a few under valgrind; the
    -- byte-by-byte rescan it replaced took ~3 minutes plain
    assert.is_true(cpu < 30, ("%.1f s of CPU"):format(cpu))
  end)

  it("writes huge names, messages and captures whole or cut, each line valid JSON", function()
    local huge = string.rep("n", 100000)
    local spans = spans_named({ huge }, true, string.rep("é", 5000))
    assert.equal(huge, spans[1].name)
    -- the capture is cut at capture_limit bytes of its JSON, here inside
    -- a two-byte character: that byte becomes U+FFFD, the line stays valid
    local cut = spans[1].attributes["pf.exec_res"]
    assert.equal('"' .. string.rep("é", (trace.capture_limit - 1) // 2) .. "\u{FFFD}...(truncated)", cut)
    os.remove(path)
    local msg = string.rep('m"\n', 50000)
    local sink = trace.open(path)
    pf.run(function()
      core.event{ type = "node_start", node = "Big", item = "k\"ey", attempt = 2.0 }
      core.event{ type = "node_end", status = "error", error = msg }
      core.event{ type = "node_start", node = "Odd", item = 1.5, attempt = 0 / 0 }
      core.event{ type = "node_end", status = "ok" }
    end)
    sink:close()
    local s = lines_of(path)
    assert.same({ code = "ERROR", message = msg }, s[1].status)
    assert.equal("k\"ey", s[1].attributes["pf.item"])
    assert.equal(2, s[1].attributes["pf.attempt"])
    assert.equal(1.5, s[2].attributes["pf.item"])
    assert.matches("nan", s[2].attributes["pf.attempt"])
  end)

  it("warns once when the file cannot be written (a full disk); the run is unaffected", function()
    local f = io.open("/dev/full", "w")
    if not f then error("this spec needs /dev/full") end
    f:close()
    local res
    local seen = warnings.of(function()
      local sink = trace.open("/dev/full")
      res = pf.run(function()
        a_run()
        return "fine"
      end)
      a_run()
      sink:close()
    end)
    assert.equal("fine", res)
    assert.equal(1, #seen)
    assert.equal("trace: cannot write spans to /dev/full: No space left on device", seen[1])
  end)

  it("has a span writer that checks its arguments and writes nothing on a bad call", function()
    assert.has_error(function() core.span_writer(42, tostring) end)
    local f = assert(io.open(path, "w"))
    assert.has_error(function() core.span_writer(f, 42) end)
    local w = core.span_writer(f, function(v) return '"' .. tostring(v) .. '"' end)
    local function args(over)
      local a = { "{h", "s", "p", '"n"', 0, 1.5, 2.5, "{}", 1, false, nil, "node", "", "", "}}\n" }
      for k, v in pairs(over) do a[k] = v end
      return table.unpack(a, 1, 15)
    end
    assert.has_error(function() w(args{ [2] = 7 }) end)        -- an id that is no string
    assert.has_error(function() w(args{ [6] = "soon" }) end)   -- a time that is no number
    assert.has_error(function() w(args{ [7] = math.huge }) end)
    local w2 = core.span_writer(f, function() return nil end)
    assert.has_error(function() w2(args{ [9] = 1.5 }) end, "trace: to_json gave no string")
    assert.is_true(w(args{ [9] = true, [11] = 3 }))
    f:close()
    assert.has_error(function() w(args{}) end, "attempt to use a closed file")
    assert.equal('{hs","parent_span_id":"p","name":"n","start_time_unix_nano":1500000000,' ..
                 '"end_time_unix_nano":2500000000,"status":{},"attributes":{"pf.attempt":"true",' ..
                 '"pf.item":3,"pf.kind":"node",}}\n', slurp(path))
  end)

  it("refuses a bad target with a clear error", function()
    assert.has_error(function() trace.open(42) end, "trace: must be a file path or an http:// URL (got number)")
    assert.has_error(function() trace.open("/nonexistent/dir/t.jsonl") end,
      "trace: cannot open /nonexistent/dir/t.jsonl: No such file or directory")
    assert.equal(0, events.count())
  end)
end)

describe("trace to an OTLP/HTTP collector", function()
  after_each(function() assert.equal(0, events.count()) end)

  local function collector(opts)
    local got = { requests = 0, spans = {}, bad = {} }
    local srv = httpd.start{ routes = { ["/v1/traces"] = function(req, res)
      got.requests = got.requests + 1
      got.first = got.first or pf.now()
      if req.method ~= "POST" then got.bad[#got.bad + 1] = "method " .. req.method end
      if req.headers["content-type"] ~= "application/json" then got.bad[#got.bad + 1] = "content-type" end
      local ok, body = pcall(pf.json.decode, req.body)
      if not ok then got.bad[#got.bad + 1] = body; return res:send(400, "bad") end
      local rs = body.resourceSpans[1]
      if rs.resource.attributes[1].key ~= "service.name" then got.bad[#got.bad + 1] = "resource" end
      local ss = rs.scopeSpans[1]
      if ss.scope.name ~= "pocketflow" then got.bad[#got.bad + 1] = "scope" end
      for _, s in ipairs(ss.spans) do got.spans[#got.spans + 1] = s end
      local function reply() res:send(200, "{}", { ["Content-Type"] = "application/json" }) end
      -- hold: the answer waits while hold() is true (polled every 50 ms;
      -- polls times at most, 600 unless said)
      local function held(n)
        if n > (opts.polls or 600) or not opts.hold() then return reply() end
        res:after(0.05, function() held(n + 1) end)
      end
      if opts and opts.hold then held(0) else reply() end
    end } }
    return srv, got
  end

  it("posts the spans in the OTLP JSON shape, batched, flushed at run end", function()
    local srv, got = collector()
    local sink = trace.open(srv.url)
    local n = 600   -- more than one batch of 512
    pf.run(function()
      core.event{ type = "run_start", node = "Flow" }
      for i = 1, n do
        core.event{ type = "node_start", node = "N", attempt = 1 }
        core.event{ type = "node_end", status = i == 7 and "error" or "ok", error = i == 7 and "boom" or nil }
      end
      core.event{ type = "run_end", status = "ok" }
    end)
    sink:close()
    srv:close()
    assert.same({}, got.bad)
    assert.equal(2, got.requests)
    assert.equal(n + 1, #got.spans)
    local ids, errors, run = {}, {}, nil
    for _, s in ipairs(got.spans) do
      assert.matches("^%x+$", s.traceId); assert.equal(32, #s.traceId)
      assert.equal(16, #s.spanId)
      assert.is_nil(ids[s.spanId]); ids[s.spanId] = true
      assert.matches("^%d+$", s.startTimeUnixNano)
      assert.matches("^%d+$", s.endTimeUnixNano)
      assert.equal(1, s.kind)
      if s.status.code == 2 then errors[#errors + 1] = s.status
      else assert.same({ code = 1 }, s.status) end
      if s.name == "Flow" then run = s end
    end
    -- the two posts may arrive in either order
    assert.same({ { code = 2, message = "boom" } }, errors)
    assert.equal("", run.parentSpanId)
    for _, s in ipairs(got.spans) do
      if s ~= run then assert.equal(run.spanId, s.parentSpanId) end
    end
  end)

  it("sends a partial batch after a second without a run end", function()
    local srv, got = collector()
    local sink = trace.open(srv.url)
    pf.run(function()
      core.event{ type = "node_start", node = "Lonely" }
      core.event{ type = "node_end", status = "ok" }
      local t0 = pf.now()
      while got.requests == 0 and pf.now() - t0 < 30 do pf.sleep(0.05) end
    end)
    sink:close()
    srv:close()
    assert.equal(1, got.requests)
    assert.equal("Lonely", got.spans[1].name)
  end)

  it("never holds a node back while the collector is slow", function()
    local emitted
    -- the collector answers nothing until the nodes are done: a node that
    -- waited for the export would wait for the request's timeout (10 s)
    local srv, got = collector({ hold = function() return emitted == nil end })
    local sink = trace.open(srv.url)
    local n = 0
    local function node()
      core.event{ type = "node_start", node = "N" }
      core.event{ type = "node_end", status = "ok" }
      n = n + 1
    end
    pf.run(function()
      core.event{ type = "run_start", node = "Flow" }
      for _ = 1, 600 do node(); pf.sleep(0) end
      -- nodes go on running while the first batch is on its way and after
      -- it arrived (the first request loads libcurl: slow under valgrind)
      local t0 = pf.now()
      while got.first == nil and pf.now() - t0 < 30 do node(); pf.sleep(0.01) end
      for _ = 1, 10 do node(); pf.sleep(0) end
      emitted = pf.now()
      core.event{ type = "run_end", status = "ok" }
    end)
    sink:close()
    srv:close()
    -- the first batch was posted mid-run, and the nodes ran on while the
    -- collector sat on it
    assert.is_not_nil(got.first)
    assert.is_true(got.first < emitted)
    assert.is_true(emitted < got.first + 8, "the nodes waited for the collector")
    assert.equal(n + 1, #got.spans)
  end)

  it("warns once per failure burst when the collector is down; the run is unaffected", function()
    local url = "http://127.0.0.1:" .. httpd.dead_port()
    local res
    local seen = warnings.of(function()
      local sink = trace.open(url)
      res = pf.run(function()
        core.event{ type = "run_start", node = "Flow" }
        for _ = 1, 1100 do     -- three batches, three failed posts
          core.event{ type = "node_start", node = "N" }
          core.event{ type = "node_end", status = "ok" }
        end
        core.event{ type = "run_end", status = "ok" }
        return "fine"
      end)
      sink:close()
    end)
    assert.equal("fine", res)
    assert.equal(1, #seen)
    assert.matches("^trace: cannot send spans to " .. url:gsub("%p", "%%%0") .. "/v1/traces: ", seen[1])
    assert.matches("spans dropped%)$", seen[1])
  end)

  it("warns once when the collector hangs up or answers garbage", function()
    local n = 0
    local srv = httpd.start{ routes = { ["/v1/traces"] = function(_, r)
      n = n + 1
      if n % 2 == 1 then r:close() else r:raw("garbage\r\n\r\n"); r:close() end
    end } }
    local seen = warnings.of(function()
      local sink = trace.open(srv.url)
      local res = pf.run(function()
        core.event{ type = "run_start", node = "Flow" }
        for _ = 1, 1100 do
          core.event{ type = "node_start", node = "N" }
          core.event{ type = "node_end", status = "ok" }
        end
        core.event{ type = "run_end", status = "ok" }
        return 7
      end)
      sink:close()
      assert.equal(7, res)
    end)
    srv:close()
    assert.equal(3, n)
    assert.equal(1, #seen)
    assert.matches("^trace: cannot send spans to ", seen[1])
  end)

  it("sends hostile names and odd values as valid OTLP JSON", function()
    local srv, got = collector()
    local sink = trace.open(srv.url, { capture = true })
    pf.run(function()
      core.event{ type = "node_start", node = 'q"uo\\te/\0\255', path = "P/\254", attempt = 0 / 0 }
      core.event{ type = "retry", attempt = 1, delay = 0 }
      core.event{ type = "fallback", attempt = math.huge }
      core.event{ type = "node_end", status = "error", error = "bad \255 \"x\"",
                  exec_res = string.rep("é", 5000), prep_res = true }
      core.event{ type = "item_start", node = "I", item = "k\"ey" }
      core.event{ type = "item_end", status = "cancelled" }
      core.event{ type = "item_start", node = "J", item = 2.5 }
      core.event{ type = "item_end", status = "ok" }
    end)
    sink:close()
    pf.run(function()
      local t0 = pf.now()
      while #got.spans < 3 and pf.now() - t0 < 30 do pf.sleep(0.02) end
    end)
    srv:close()
    assert.same({}, got.bad)
    assert.equal(3, #got.spans)
    local by = {}
    for _, s in ipairs(got.spans) do
      local attrs = {}
      for _, a in ipairs(s.attributes) do attrs[a.key] = a.value end
      by[s.name] = { span = s, attrs = attrs }
    end
    local n = by['q"uo\\te/\0\u{FFFD}']
    assert.is_table(n)
    assert.same({ code = 2, message = 'bad \u{FFFD} "x"' }, n.span.status)
    assert.same({ doubleValue = "Infinity" }, n.attrs["pf.attempt"])
    assert.same({ boolValue = true }, n.attrs["pf.fallback"])
    assert.same({ intValue = "1" }, n.attrs["pf.retries"])
    assert.same({ stringValue = "P/\u{FFFD}" }, n.attrs["pf.path"])
    assert.same({ stringValue = "true" }, n.attrs["pf.prep_res"])
    assert.equal('"' .. string.rep("é", (trace.capture_limit - 1) // 2) .. "\u{FFFD}...(truncated)",
                 n.attrs["pf.exec_res"].stringValue)
    assert.same({ stringValue = "error" }, n.attrs["pf.status"])
    assert.same({ stringValue = 'k"ey' }, by.I.attrs["pf.item"])
    assert.same({ code = 0 }, by.I.span.status)
    assert.same({ doubleValue = 2.5 }, by.J.attrs["pf.item"])
    assert.same({ stringValue = "item" }, by.J.attrs["pf.kind"])
  end)

  it("sends a batch whose task was cancelled (the sender is not that task's child)", function()
    local srv, got = collector()
    local sink = trace.open(srv.url)
    pf.run(function()
      local t = pf.spawn(function()
        for _ = 1, trace.batch_size do   -- the last span starts the batch's sender
          core.event{ type = "node_start", node = "N" }
          core.event{ type = "node_end", status = "ok" }
        end
        pf.sleep(30)
      end)
      pf.sleep(0)
      t:cancel()
    end)
    sink:close()
    srv:close()
    assert.equal(trace.batch_size, #got.spans)
    assert.equal(0, sink.in_flight)
  end)

  it("keeps at most max_in_flight requests and a bounded queue; drops past it, warning once", function()
    local saved = { trace.max_in_flight, trace.max_waiting, trace.http_timeout }
    -- (no request may time out while held, however slow the machine)
    trace.max_in_flight, trace.max_waiting, trace.http_timeout = 2, 1024, 600
    finally(function()
      trace.max_in_flight, trace.max_waiting, trace.http_timeout = saved[1], saved[2], saved[3]
    end)
    local open_now, most, release = 0, 0, false
    local srv, got = collector({ hold = function() return not release end, polls = 6000 })
    local routes = srv.routes["/v1/traces"]
    srv.routes["/v1/traces"] = function(req, res)
      open_now = open_now + 1
      if open_now > most then most = open_now end
      local send = res.send
      res.send = function(...) open_now = open_now - 1; return send(...) end
      return routes(req, res)
    end
    local done_at
    local seen = warnings.of(function()
      local sink = trace.open(srv.url)
      pf.run(function()
        core.event{ type = "run_start", node = "Flow" }
        for i = 1, 20 * 512 do   -- 20 batches: 2 in flight, 2 waiting, 16 dropped
          core.event{ type = "node_start", node = "N" }
          core.event{ type = "node_end", status = "ok" }
          if i % 512 == 0 then pf.sleep(0) end
        end
        done_at = pf.now()
        release = true
        core.event{ type = "run_end", status = "ok" }
      end)
      sink:close()
      pf.run(function()
        while sink.in_flight > 0 or #sink.batches > 0 do pf.sleep(0.02) end
      end)
      assert.equal(16 * 512 + 1, sink.dropped)
    end)
    srv:close()
    assert.is_not_nil(done_at)
    assert.equal(2, most)
    assert.equal(4 * 512, #got.spans)
    assert.equal(1, #seen)
    assert.matches("takes spans slower than the run makes them: 512 spans dropped", seen[1])
  end)

  it("warns on an error status too", function()
    local srv = httpd.start{ routes = { ["/v1/traces"] = function(_, r) r:send(503, "busy") end } }
    local seen = warnings.of(function()
      local sink = trace.open(srv.url .. "/")
      a_run()
      sink:close()
      pf.run(function() pf.sleep(0) end)
    end)
    srv:close()
    assert.equal(1, #seen)
    assert.matches("HTTP status 503 %(4 spans dropped%)$", seen[1])
  end)
end)

-- Traces of real runs: the walk's spans, through the run options and
-- PF_TRACE.
describe("trace of a real run", function()
  each_path()

  local function flow()
    local Fetch = pf.Node:extend("Fetch")
    Fetch.max_retries = 2
    function Fetch:prep(shared) return shared.url end
    function Fetch:exec(url)
      if self.cur_retry == 0 then error("flaky", 0) end
      return "page of " .. url
    end
    local Split = pf.ParallelBatchNode:extend("Split")
    function Split:prep() return { "a", "b", "c" } end
    function Split:exec(x) pf.sleep(0.001) return x:upper() end
    local f = Fetch()
    local _ = f >> Split()
    return pf.Flow{ name = "Main", start = f }
  end

  it("writes the run's spans as JSON lines, parents and names right", function()
    flow():run({ url = "u" }, { trace = path })
    local spans = lines_of(path)
    assert.equal(7, #spans)   -- run, Main, Fetch, Split and its 3 items
    local by_id, by_name = {}, {}
    for _, s in ipairs(spans) do
      by_id[s.span_id] = s
      by_name[s.name] = by_name[s.name] or {}
      table.insert(by_name[s.name], s)
      assert.equal(spans[1].trace_id, s.trace_id)
      assert.is_true(s.end_time_unix_nano >= s.start_time_unix_nano)
    end
    local run = spans[#spans]   -- the run's span ends last
    assert.equal("run", run.attributes["pf.kind"])
    assert.equal("", run.parent_span_id)
    assert.equal(2, #by_name.Main)   -- the run and the flow's node span
    local fetch = by_name.Fetch[1]
    assert.equal("Main > Fetch", fetch.attributes["pf.path"])
    assert.equal(1, fetch.attributes["pf.retries"])
    assert.equal(2, fetch.attributes["pf.attempt"])
    assert.equal("Main", by_id[fetch.parent_span_id].name)
    assert.is_nil(fetch.attributes["pf.exec_res"])   -- no capture
    local items = {}
    for _, s in ipairs(by_name.Split) do
      if s.attributes["pf.kind"] == "item" then
        items[s.attributes["pf.item"]] = true
        assert.equal("Split", by_id[s.parent_span_id].name)
        assert.equal("node", by_id[s.parent_span_id].attributes["pf.kind"])
      end
    end
    assert.same({ true, true, true }, items)
  end)

  it("captures prep and exec results with capture = true, and marks errors", function()
    local f = flow()
    f:run({ url = "u" }, { trace = path, capture = true })
    local Bad = pf.Node:extend("Bad")
    function Bad:exec() error("gone", 0) end
    assert.has_error(function() Bad():run({}, { trace = path }) end)
    local spans = lines_of(path)
    local fetch, bad
    for _, s in ipairs(spans) do
      if s.name == "Fetch" then fetch = s end
      if s.name == "Bad" and s.attributes["pf.kind"] == "node" then bad = s end
    end
    assert.equal('"u"', fetch.attributes["pf.prep_res"])
    assert.equal('"page of u"', fetch.attributes["pf.exec_res"])
    assert.equal("ERROR", bad.status.code)
    assert.matches("^gone", bad.status.message)
    assert.equal("error", bad.attributes["pf.status"])
    assert.is_not.equal(spans[1].trace_id, spans[#spans].trace_id)   -- two runs
  end)

  it("writes PF_TRACE's file from the binary, for every run", function()
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write([[
local pf = require "pocketflow"
local N = pf.Node:extend("Step")
function N:exec() return 1 end
N():run({})
pf.Flow{ name = "Twice", start = N() }:run({})
print("ran")
]])
    f:close()
    local bin = assert(os.getenv("PF_BIN"))
    local h = io.popen(("PF_TRACE=%s %s %s 2>&1"):format(path, bin, script))
    local out = h:read("a")
    h:close()
    os.remove(script)
    assert.equal("ran\n", out)
    local spans = lines_of(path)
    local names = {}
    for _, s in ipairs(spans) do names[#names + 1] = s.name .. "/" .. s.attributes["pf.kind"] end
    assert.same({ "Step/node", "Step/run", "Step/node", "Twice/node", "Twice/run" }, names)
  end)
end)

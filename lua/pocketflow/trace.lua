-- pocketflow.trace: a subscriber of the bus that turns span events
-- (run_start/run_end, node_start/node_end, item_start/item_end) into
-- OpenTelemetry spans, written as JSON lines to a file or sent as
-- OTLP/HTTP JSON (POST /v1/traces) in batches from tasks of their own.
local core = require "pocketflow.core"
local events = require "pocketflow.events"
local cjson = require("cjson").new()

local floor, format, concat, find = math.floor, string.format, table.concat, string.find
local tointeger, math_type = math.tointeger, math.type
local encode_string = cjson.encode

local M = {}

M.batch_size = 512      -- spans per OTLP request
M.batch_delay = 1       -- seconds a span waits at most before it is sent
M.capture_limit = 4096  -- bytes of a captured value's JSON, then cut
M.http_timeout = 10     -- seconds per OTLP request
M.max_in_flight = 4     -- OTLP requests at once
M.max_waiting = 65536   -- spans waiting for a sender (~30 MB), then batches are dropped

local span_types = { "run_start", "run_end", "node_start", "node_end",
                     "item_start", "item_end", "retry", "fallback" }
local kind_of = { run_start = "run", node_start = "node", item_start = "item" }

-- unix nanoseconds = offset + floor(pf.now() * 1e9) (and so in src/trace.c)
local function clock_offset()
  local s, us = core.wall()
  local t = core.now()
  return s * 1000000000 + us * 1000 - floor(t * 1e9)
end

-- capture: a value as JSON, cut to M.capture_limit bytes
local json
local function captured(v)
  json = json or require "pocketflow.json"
  local ok, s = pcall(json.encode, v)
  if not ok then s = encode_string(tostring(v)) end
  if #s > M.capture_limit then
    s = s:sub(1, M.capture_limit) .. "...(truncated)"
  end
  return s
end

-- bytes that are not UTF-8 become U+FFFD, each on its own: the output
-- stays valid JSON. One pass, so a long hostile string costs its length.
local function valid_utf8(s)
  local _, bad = utf8.len(s)
  if bad == nil then return s end
  local out, n, i = {}, 0, 1
  repeat
    out[n + 1], out[n + 2] = s:sub(i, bad - 1), "\u{FFFD}"
    n, i = n + 2, bad + 1
    _, bad = utf8.len(s, i)
  until bad == nil
  out[n + 1] = s:sub(i)
  return concat(out)
end

-- what cjson escapes: control bytes, '"', '/', '\\'; and bytes >= 128,
-- which may not be UTF-8. A string with none is its own JSON body.
local needs_escape = '[%c"/\\\128-\255]'

-- escaped names and paths are cached: a run has few distinct ones. The
-- caches are emptied when they grow past 1000 entries (a weak table does
-- not drop string keys).
local escaped, n_escaped = {}, 0
local function esc(s)
  if s == nil then return '""' end
  if type(s) ~= "string" then s = tostring(s) end
  local e = escaped[s]
  if e == nil then
    if find(s, needs_escape) then e = encode_string(valid_utf8(s))
    else e = '"' .. s .. '"' end
    if #s < 200 then
      if n_escaped >= 1000 then escaped, n_escaped = {}, 0 end
      escaped[s], n_escaped = e, n_escaped + 1
    end
  end
  return e
end

-- ----------------------------------------------------------- the spans

-- a path (the bus's array of names) as "Main > Fetch"
local function path_string(path)
  if type(path) == "table" then return concat(path, " > ") end
  return tostring(path)
end

-- A span being built is its start event (kept in sink.open by span_id)
-- and, once retried or fallen back, a note in sink.notes.

local function status_of(st)
  if st == "error" then return "ERROR" end
  if st == "ok" or st == nil then return "OK" end
  return "UNSET"   -- cancelled, interrupted: not an error of the span
end

-- A span's attributes, in this order ("the attribute order"): pf.attempt
-- (from the end event, a retry or fallback, or the start), pf.fallback
-- (true after a fallback), pf.item, pf.kind (run, node, item), pf.path,
-- pf.prep_res and pf.exec_res (capture = true), pf.retries (after a
-- retry), pf.status (the end's status, "ok" when none).

-- ----------------------------------------------------------- JSON lines

local function json_scalar(v)
  local tv = type(v)
  if tv == "string" then return esc(v) end
  if tv == "boolean" then return v and "true" or "false" end
  if tv == "number" then
    if tointeger(v) then return format("%d", v) end
    if v ~= v or v == math.huge or v == -math.huge then return esc(tostring(v)) end
    return format("%.17g", v)
  end
  return esc(tostring(v))
end

-- Keys in the attribute order.
local function opt(key, v)
  if v == nil then return "" end
  if math_type(v) == "integer" then return '"' .. key .. '":' .. v .. "," end
  return '"' .. key .. '":' .. json_scalar(v) .. ","
end

-- A path's "pf.path" attribute text as attr writes it, memoised: the memo
-- table for the callers' fast lookup, and the function for a miss. The
-- memo holds at most 1000 paths, then starts again.
local function path_memo(attr)
  local memo, n = {}, 0
  return memo, function(path)
    local a = memo[path]
    if a == nil then
      a = attr("pf.path", path_string(path))
      if type(path) == "table" or #path < 200 then   -- the bus interns path tables
        if n >= 1000 then
          for k in pairs(memo) do memo[k] = nil end
          n = 0
        end
        memo[path], n = a, n + 1
      end
    end
    return a
  end
end

local path_attrs, path_attr = path_memo(opt)

local function status_json(st, err)
  if err ~= nil then
    return '{"code":"' .. status_of(st) .. '","message":' .. esc(tostring(err)) .. "}"
  end
  if st == "ok" or st == nil then return '{"code":"OK"}' end
  return '{"code":"' .. status_of(st) .. '"}'
end

-- the captures and pf.retries, in the attribute order
local function tail_of(sink, note, ev)
  local tail = ""
  if sink.capture then
    tail = opt("pf.prep_res", ev.prep_res ~= nil and captured(ev.prep_res) or nil)
        .. opt("pf.exec_res", ev.exec_res ~= nil and captured(ev.exec_res) or nil)
  end
  if note and note.retries then tail = tail .. opt("pf.retries", note.retries) end
  return tail
end

-- ------------------------------------------------------------- OTLP JSON

-- A span becomes its OTLP JSON text when it ends, and a batch's body is
-- the texts joined: encoding tables at send time cost ~19 us a span on
-- the loop's thread (10 ms a batch, during which no node ran).

-- an AnyValue; doubles that are not finite as proto3's JSON spells them
local function otlp_value(v)
  local tv = type(v)
  if tv == "boolean" then return v and '{"boolValue":true}' or '{"boolValue":false}' end
  if tv == "number" then
    if tointeger(v) then return format('{"intValue":"%d"}', v) end
    if v ~= v then return '{"doubleValue":"NaN"}' end
    if v == math.huge then return '{"doubleValue":"Infinity"}' end
    if v == -math.huge then return '{"doubleValue":"-Infinity"}' end
    return format('{"doubleValue":%.17g}', v)
  end
  return '{"stringValue":' .. esc(tostring(v)) .. "}"
end

local otlp_codes = { OK = '{"code":1', ERROR = '{"code":2', UNSET = '{"code":0' }

-- '{"key":"<key>","value":<AnyValue>},': an attribute of an OTLP span
local function otlp_attr(key, v)
  if v == nil then return "" end
  if math_type(v) == "integer" then
    return '{"key":"' .. key .. '","value":{"intValue":"' .. v .. '"}},'
  end
  return '{"key":"' .. key .. '","value":' .. otlp_value(v) .. "},"
end

local otlp_kinds = {}
for ty, kind in pairs(kind_of) do otlp_kinds[ty] = otlp_attr("pf.kind", kind) end
local otlp_ok = '{"key":"pf.status","value":{"stringValue":"ok"}}'

local otlp_paths, otlp_path = path_memo(otlp_attr)

-- An OTLP span as JSON text, its attributes in the attribute order;
-- the common ones from caches, so that a span is one concatenation.
local function otlp_span(sink, r, ev, trace_id, note)
  local st = ev.status
  local attempt = ev.attempt or note and note.attempt or r.attempt
  local status = otlp_codes[status_of(st)]
  if ev.error ~= nil then status = status .. ',"message":' .. esc(tostring(ev.error)) end
  local tail = ""   -- captures and retries
  if sink.capture then
    if ev.prep_res ~= nil then tail = otlp_attr("pf.prep_res", captured(ev.prep_res)) end
    if ev.exec_res ~= nil then tail = tail .. otlp_attr("pf.exec_res", captured(ev.exec_res)) end
  end
  if note and note.retries then tail = tail .. otlp_attr("pf.retries", note.retries) end
  local path, name, offset = r.path, r.node or r.type, sink.offset
  return '{"traceId":"' .. trace_id .. '","spanId":"' .. ev.span_id .. '","parentSpanId":"'
    .. (r.parent_id or "") .. '","name":' .. (escaped[name] or esc(name))
    .. ',"kind":1,"startTimeUnixNano":"' .. (offset + floor((r.t or ev.t) * 1e9))  -- INTERNAL
    .. '","endTimeUnixNano":"' .. (offset + floor(ev.t * 1e9)) .. '","attributes":['
    .. otlp_attr("pf.attempt", attempt)
    .. (note and note.fallback and '{"key":"pf.fallback","value":{"boolValue":true}},' or "")
    .. otlp_attr("pf.item", r.item) .. otlp_kinds[r.type]
    .. (path == nil and "" or otlp_paths[path] or otlp_path(path)) .. tail
    .. (st == "ok" and otlp_ok or '{"key":"pf.status","value":' .. otlp_value(st or "ok") .. "}")
    .. '],"status":' .. status .. "}}"
end

-- the body of one POST /v1/traces, from spans as otlp_span makes them
function M.otlp_body(spans)
  return '{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name",'
    .. '"value":{"stringValue":"pocketflow"}}]},"scopeSpans":[{"scope":{"name":"pocketflow",'
    .. '"version":' .. esc(core.version) .. '},"spans":[' .. concat(spans, ",") .. "]}]}]}"
end

-- ------------------------------------------------------------ the sinks

local Sink = {}
Sink.__index = Sink

local function trace_id_of(sink, run_id)
  if run_id == sink.last_run then return run_id end
  if type(run_id) == "string" and #run_id == 32 and not run_id:find("[^0-9a-f]") then
    sink.last_run = run_id
    return run_id
  end
  sink.fallback_trace = sink.fallback_trace or events.new_run_id()
  return sink.fallback_trace
end

-- writes out the file's buffer: at each run's end and on close
-- (a failure burst ends when the lines reach the file)
function Sink:flush_file()
  local ok, err = self.file:flush()
  if ok then self.failing = false else self:failed(err) end
end

-- warns once per burst of failures
function Sink:failed(err)
  if self.failing then return end
  self.failing = true
  core.warn(("trace: cannot write spans to %s: %s"):format(self.target, tostring(err)))
end

local http
function Sink:send(spans)
  http = http or require "pocketflow.http"
  local ok, res = pcall(function()
    return http.request{
      method = "POST", url = self.url,
      headers = { ["Content-Type"] = "application/json" },
      body = M.otlp_body(spans), timeout = M.http_timeout,
    }
  end)
  if ok and res.status >= 200 and res.status < 300 then
    self.failing = false
    self.sent = self.sent + #spans
    return
  end
  local why = ok and ("HTTP status " .. res.status) or tostring(res)
  if self.failing then return end
  self.failing = true
  core.warn(("trace: cannot send spans to %s: %s (%d spans dropped)")
            :format(self.url, why, #spans))
end

-- Batches wait in self.batches for one of at most M.max_in_flight sender
-- tasks. Past M.max_waiting spans waiting (a collector slower than the
-- run makes spans), a new batch is dropped, with a warning once per
-- burst: memory stays bounded and no node ever waits for the collector.
-- (in_flight counts the sender tasks, busy those in a request: the
-- others are about to take a batch)
function Sink:pump()
  while self.in_flight < M.max_in_flight and self.in_flight - self.busy < #self.batches do
    self.in_flight = self.in_flight + 1
    core.spawn_detached(function()
      local sending = false
      -- (cancelled only with pf.run's own cancel: the counts stay right)
      local _ <close> = setmetatable({}, { __close = function()
        self.in_flight = self.in_flight - 1
        if sending then self.busy = self.busy - 1 end
      end })
      local b = self.batches
      while #b > 0 do
        local batch = table.remove(b, 1)
        self.waiting = self.waiting - #batch
        self.busy, sending = self.busy + 1, true
        self:send(batch)
        self.busy, sending = self.busy - 1, false
      end
    end)
  end
end

-- takes the queue and hands it to the senders
function Sink:flush_http()
  if self.timer then
    self.timer:cancel()
    self.timer = nil
  end
  local q = self.queue
  if #q == 0 then return self:pump() end
  self.queue = {}
  if self.waiting + #q > M.max_waiting then
    self.dropped = self.dropped + #q
    if not self.overrun then
      self.overrun = true
      core.warn(("trace: %s takes spans slower than the run makes them: %d spans dropped "
                 .. "(more are dropped until it catches up)"):format(self.url, #q))
    end
    return
  end
  self.overrun = false
  self.waiting = self.waiting + #q
  self.batches[#self.batches + 1] = q
  self:pump()
end

function Sink:queue_span(s)
  local q = self.queue
  q[#q + 1] = s
  if #q >= M.batch_size then
    self:flush_http()
  elseif self.timer == nil then
    self.timer = core.spawn_detached(function()
      core.sleep(M.batch_delay)
      self.timer = nil
      self:flush_http()
    end)
  end
end

function Sink:note(r, ev, ty)
  local note = self.notes[r] or {}
  self.notes[r] = note
  if ty == "retry" then note.retries = (note.retries or 0) + 1 else note.fallback = true end
  if ev.attempt ~= nil then note.attempt = ev.attempt end
end

-- the subscriber of trace = URL (file_handler is that of a file)
function Sink:handle(ev)
  local ty, sid, open = ev.type, ev.span_id, self.open
  if kind_of[ty] then
    open[sid] = ev
    return
  end
  local r = open[sid]
  if r == nil then return end        -- started before the sink
  if ty == "retry" or ty == "fallback" then return self:note(r, ev, ty) end
  open[sid] = nil
  local note = self.notes[r]
  if note then self.notes[r] = nil end
  local run = r.run_id or ev.run_id
  self:queue_span(otlp_span(self, r, ev, trace_id_of(self, run), note))
  if ty == "run_end" then self:flush_http() end
end

-- The subscriber of trace = file: Sink.handle with a JSON line written
-- by core.span_writer instead of an OTLP span queued, and the sink's
-- fields in upvalues. This is the hot path of bench/trace.lua. A line's
-- pieces: '{"trace_id":"<id>","span_id":"' (made once per trace), the
-- ids, the name as JSON, the times as pf.now() values, the status object,
-- then the attributes in the attribute order (attempt and item as
-- values: integers are written by the C side, others made JSON by
-- json_scalar; rare ones in tail).
local function file_handler(sink)
  local open, notes, offset, capture = sink.open, sink.notes, sink.offset, sink.capture
  local write = core.span_writer(sink.file, json_scalar)
  local head_run, head = open, nil   -- open: no run id is equal to it
  return function(ev)
    local ty, sid = ev.type, ev.span_id
    if kind_of[ty] then
      open[sid] = ev
      return
    end
    local r = open[sid]
    if r == nil then return end        -- started before the sink
    if ty == "retry" or ty == "fallback" then return sink:note(r, ev, ty) end
    open[sid] = nil
    local note = notes[r]
    if note then notes[r] = nil end
    local run = r.run_id or ev.run_id
    if run ~= head_run then
      head_run, head = run, '{"trace_id":"' .. trace_id_of(sink, run) .. '","span_id":"'
    end
    local st, t = ev.status, ev.t
    local attempt = ev.attempt or note and note.attempt or r.attempt
    local path, name = r.path, r.node or r.type
    local ok, err = write(head, sid, r.parent_id or "", escaped[name] or esc(name),
      offset, r.t or t, t,
      (st == "ok" and ev.error == nil) and '{"code":"OK"}' or status_json(st, ev.error),
      attempt, note and note.fallback, r.item, kind_of[r.type],
      path == nil and "" or path_attrs[path] or path_attr(path),
      (note or capture) and tail_of(sink, note, ev) or "",
      st == "ok" and '"pf.status":"ok"}}\n' or '"pf.status":' .. esc(st or "ok") .. "}}\n")
    if not ok then sink:failed(err) end
    if ty == "run_end" then sink:flush_file() end
  end
end

-- Stops listening and writes or sends what is left.
function Sink:close()
  if self.closed then return end
  self.closed = true
  self.sub:off()
  if self.file then
    self:flush_file()
    local ok, err = self.file:close()
    if not ok then self:failed(err) end
  else
    self:flush_http()
  end
end

-- open(target, { capture = , run_id = }): target is a file path or an
-- http:// or https:// collector URL (its /v1/traces is posted to)
function M.open(target, opts, level)
  level = (level or 1) + 1
  opts = opts or {}
  if type(target) ~= "string" or target == "" then
    error(("trace: must be a file path or an http:// URL (got %s)"):format(type(target)), level)
  end
  local sink = setmetatable({ target = target, open = {}, notes = {}, capture = opts.capture == true,
                              offset = clock_offset(), sent = 0 }, Sink)
  if target:find("^https?://") then
    local base = target:gsub("/+$", "")
    sink.url = base:find("/v1/traces$") and base or base .. "/v1/traces"
    sink.queue, sink.batches, sink.waiting, sink.dropped = {}, {}, 0, 0
    sink.in_flight, sink.busy = 0, 0
  else
    local f, err = io.open(target, "a")
    if not f then error("trace: cannot open " .. tostring(err), level) end
    f:setvbuf("full", 65536)
    sink.file = f
  end
  local handler = sink.file and file_handler(sink) or function(ev) return sink:handle(ev) end
  sink.sub = events.subscribe(handler, span_types,
                              opts.run_id, level)
  return sink
end

-- PF_TRACE=path, or nil
function M.from_env()
  local v = os.getenv("PF_TRACE")
  if v == nil or v == "" then return nil end
  return v
end

return M

-- pocketflow.trace: a subscriber of the bus that turns span events
-- (run_start/run_end, node_start/node_end, item_start/item_end) into
-- OpenTelemetry spans, written as JSON lines to a file or sent as
-- OTLP/HTTP JSON (POST /v1/traces) in batches from tasks of their own.
local core = require "pocketflow.core"
local events = require "pocketflow.events"
local cjson = require("cjson").new()

local floor, format, concat = math.floor, string.format, table.concat
local tointeger = math.tointeger
local encode_string = cjson.encode

local M = {}

M.batch_size = 512      -- spans per OTLP request
M.batch_delay = 1       -- seconds a span waits at most before it is sent
M.capture_limit = 4096  -- bytes of a captured value's JSON, then cut
M.http_timeout = 10     -- seconds per OTLP request

local span_types = { "run_start", "run_end", "node_start", "node_end",
                     "item_start", "item_end", "retry", "fallback" }
local kind_of = { run_start = "run", node_start = "node", item_start = "item" }

-- unix nanoseconds = offset + pf.now() nanoseconds
local function clock_offset()
  local s, us = core.wall()
  local t = core.now()
  return s * 1000000000 + us * 1000 - floor(t * 1e9)
end

local function nanos(offset, t)
  return offset + floor(t * 1e9)
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

-- escaped names and paths are cached: a run has few distinct ones. The
-- caches are emptied when they grow past 1000 entries (a weak table does
-- not drop string keys).
-- bytes that are not UTF-8 become U+FFFD: the output stays valid JSON
local function valid_utf8(s)
  local _, bad = utf8.len(s)
  while bad do
    s = s:sub(1, bad - 1) .. "\u{FFFD}" .. s:sub(bad + 1)
    _, bad = utf8.len(s)
  end
  return s
end

local escaped, n_escaped = {}, 0
local function esc(s)
  if s == nil then return '""' end
  if type(s) ~= "string" then s = tostring(s) end
  local e = escaped[s]
  if e == nil then
    e = encode_string(valid_utf8(s))
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

-- the attributes as (key, value) pairs in key order, into out
local function attributes_of(sink, r, ev, out)
  local n = 0
  local function add(k, v) out[n + 1] = k; out[n + 2] = v; n = n + 2 end
  local note = sink.notes[r]
  local attempt = ev.attempt or note and note.attempt or r.attempt
  if attempt ~= nil then add("pf.attempt", attempt) end
  if note and note.fallback then add("pf.fallback", true) end
  if r.item ~= nil then add("pf.item", r.item) end
  add("pf.kind", kind_of[r.type])
  if r.path ~= nil then add("pf.path", path_string(r.path)) end
  if sink.capture and ev.prep_res ~= nil then add("pf.prep_res", captured(ev.prep_res)) end
  if sink.capture and ev.exec_res ~= nil then add("pf.exec_res", captured(ev.exec_res)) end
  if note and note.retries then add("pf.retries", note.retries) end
  add("pf.status", ev.status or "ok")
  return n
end

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

-- One line per span, made with one format: this is the hot path of
-- trace = file (bench/trace.lua). Keys in the order of attributes_of.
local function opt(key, v)
  if v == nil then return "" end
  if math.type(v) == "integer" then return '"' .. key .. '":' .. v .. "," end
  return '"' .. key .. '":' .. json_scalar(v) .. ","
end

local path_attrs, n_paths = {}, 0
local function path_attr(path)
  local a = path_attrs[path]
  if a == nil then
    a = opt("pf.path", path_string(path))
    if type(path) == "table" or #path < 200 then   -- the bus interns path tables
      if n_paths >= 1000 then path_attrs, n_paths = {}, 0 end
      path_attrs[path], n_paths = a, n_paths + 1
    end
  end
  return a
end

local function line_of(sink, r, ev, trace_id)
  local code = status_of(ev.status)
  local status
  if ev.error ~= nil then
    status = format('{"code":"%s","message":%s}', code, esc(tostring(ev.error)))
  else
    status = code == "OK" and '{"code":"OK"}' or '{"code":"' .. code .. '"}'
  end
  local note = sink.notes[r]
  local captures = ""
  if sink.capture then
    captures = opt("pf.prep_res", ev.prep_res ~= nil and captured(ev.prep_res) or nil)
            .. opt("pf.exec_res", ev.exec_res ~= nil and captured(ev.exec_res) or nil)
  end
  local offset = sink.offset
  local path = r.path
  -- one concatenation (a single VM op): three times faster than format
  return '{"trace_id":"' .. trace_id .. '","span_id":"' .. ev.span_id
    .. '","parent_span_id":"' .. (r.parent_id or "") .. '","name":' .. esc(r.node or r.type)
    .. ',"start_time_unix_nano":' .. (offset + floor((r.t or ev.t) * 1e9))
    .. ',"end_time_unix_nano":' .. (offset + floor(ev.t * 1e9))
    .. ',"status":' .. status .. ',"attributes":{'
    .. opt("pf.attempt", ev.attempt or note and note.attempt or r.attempt)
    .. (note and note.fallback and '"pf.fallback":true,' or "")
    .. opt("pf.item", r.item) .. '"pf.kind":"' .. kind_of[r.type] .. '",'
    .. (path ~= nil and path_attr(path) or "") .. captures
    .. (note and note.retries and opt("pf.retries", note.retries) or "")
    .. (ev.status == "ok" and '"pf.status":"ok"}}\n' or '"pf.status":' .. esc(ev.status or "ok") .. "}}\n")
end

-- ------------------------------------------------------------- OTLP JSON

local function otlp_value(v)
  local tv = type(v)
  if tv == "boolean" then return { boolValue = v } end
  if tv == "number" then
    if tointeger(v) then return { intValue = format("%d", v) } end
    return { doubleValue = v }
  end
  return { stringValue = tostring(v) }
end

local function otlp_span(sink, r, ev, trace_id)
  local attrs, pairs_ = {}, {}
  local n = attributes_of(sink, r, ev, pairs_)
  for i = 1, n, 2 do attrs[#attrs + 1] = { key = pairs_[i], value = otlp_value(pairs_[i + 1]) } end
  local code = status_of(ev.status)
  local status = { code = code == "OK" and 1 or code == "ERROR" and 2 or 0 }
  if ev.error ~= nil then status.message = tostring(ev.error) end
  return {
    traceId = trace_id, spanId = ev.span_id, parentSpanId = r.parent_id or "",
    name = tostring(r.node or r.type), kind = 1,   -- SPAN_KIND_INTERNAL
    startTimeUnixNano = format("%d", nanos(sink.offset, r.t or ev.t)),
    endTimeUnixNano = format("%d", nanos(sink.offset, ev.t)),
    attributes = attrs, status = status,
  }
end

-- the body of one POST /v1/traces
function M.otlp_body(spans)
  json = json or require "pocketflow.json"
  return json.encode{
    resourceSpans = json.array{ {
      resource = { attributes = json.array{
        { key = "service.name", value = { stringValue = "pocketflow" } } } },
      scopeSpans = json.array{ {
        scope = { name = "pocketflow", version = core.version },
        spans = json.array(spans),
      } },
    } },
  }
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

function Sink:flush_file()
  local n = self.nbuf
  if n == 0 then return end
  local buf = self.buf
  local ok, err = self.file:write(concat(buf, "", 1, n))
  for i = 1, n do buf[i] = nil end
  self.nbuf = 0
  if not ok then self:failed(err) else self.failing = false end
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
  local ok, res = pcall(http.request, {
    method = "POST", url = self.url,
    headers = { ["Content-Type"] = "application/json" },
    body = M.otlp_body(spans), timeout = M.http_timeout,
  })
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

-- takes the queue and sends it from a task of its own
function Sink:flush_http()
  if self.timer then
    self.timer:cancel()
    self.timer = nil
  end
  local q = self.queue
  if #q == 0 then return end
  self.queue = {}
  core.spawn(function() self:send(q) end)
end

function Sink:queue_span(s)
  local q = self.queue
  q[#q + 1] = s
  if #q >= M.batch_size then
    self:flush_http()
  elseif self.timer == nil then
    self.timer = core.spawn(function()
      core.sleep(M.batch_delay)
      self.timer = nil
      self:flush_http()
    end)
  end
end

function Sink:handle(ev)
  local ty = ev.type
  if kind_of[ty] then
    self.open[ev.span_id] = ev
    return
  end
  local r = self.open[ev.span_id]
  if r == nil then return end        -- started before the sink
  if ty == "retry" or ty == "fallback" then
    local note = self.notes[r] or {}
    self.notes[r] = note
    if ty == "retry" then note.retries = (note.retries or 0) + 1 else note.fallback = true end
    if ev.attempt ~= nil then note.attempt = ev.attempt end
    return
  end
  self.open[ev.span_id] = nil
  local trace_id = trace_id_of(self, r.run_id or ev.run_id)
  if self.file then
    local n = self.nbuf + 1
    self.buf[n] = line_of(self, r, ev, trace_id)
    self.nbuf = n
    if n >= M.batch_size or ty == "run_end" then self:flush_file() end
  else
    self:queue_span(otlp_span(self, r, ev, trace_id))
    if ty == "run_end" then self:flush_http() end
  end
  self.notes[r] = nil
end

-- Stops listening and writes or sends what is left.
function Sink:close()
  if self.closed then return end
  self.closed = true
  self.sub:off()
  if self.file then
    self:flush_file()
    self.file:close()
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
    sink.queue = {}
  else
    local f, err = io.open(target, "a")
    if not f then error("trace: cannot open " .. tostring(err), level) end
    f:setvbuf("full", 65536)
    sink.file, sink.buf, sink.nbuf = f, {}, 0
  end
  sink.sub = events.subscribe(function(ev) return sink:handle(ev) end, span_types,
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

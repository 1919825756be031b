-- pocketflow.http: HTTP requests that wait in the calling task, on the
-- libcurl transfers of pocketflow.core (src/io/http.c). Outside any task a
-- request runs as the main task of an implicit pf.run.
local core = require "pocketflow.core"

local http = {}

-- The parser of each function made by pf.http.sse, so that a request
-- names its method and URL in the parser's errors.
local parsers = setmetatable({}, { __mode = "k" })

-- every option of a request, with the type it must have
local OPTIONS = {
  url = "string", method = "string", headers = "table", body = "string",
  timeout = "number", stream = "function", follow = "boolean",
  ca_file = "string", verify = "boolean", client_cert = "string",
  client_key = "string", proxy = "string",
}

local function check_opts(opts, level)
  if type(opts) ~= "table" then
    error(("pf.http: options must be a table (got %s)"):format(type(opts)), level)
  end
  for k, v in pairs(opts) do
    local want = OPTIONS[k]
    if want == nil then
      error(("pf.http: unknown option '%s'"):format(tostring(k)), level)
    end
    if type(v) ~= want then
      error(("pf.http: %s must be a %s (got %s)"):format(k, want, type(v)), level)
    end
    -- strings go to curl as C strings (the body is sent by length)
    if want == "string" and k ~= "body" and v:find("\0", 1, true) then
      error(("pf.http: %s contains a NUL byte"):format(k), level)
    end
  end
  if opts.url == nil then error("pf.http: url is required", level) end
  if opts.timeout ~= nil and not (opts.timeout > 0) then
    error(("pf.http: timeout must be a positive number of seconds (got %s)"):format(
      tostring(opts.timeout)), level)
  end
  if opts.method ~= nil and not opts.method:find("^[%w!#$%%&'*+.^_`|~-]+$") then
    error(("pf.http: method must be an HTTP token (got %q)"):format(opts.method), level)
  end
  if opts.client_key ~= nil and opts.client_cert == nil then
    error("pf.http: client_key needs client_cert", level)
  end
  for name, value in pairs(opts.headers or {}) do
    if type(name) ~= "string" or (type(value) ~= "string" and type(value) ~= "number") then
      error(("pf.http: headers must map names to strings (got %s = %s)"):format(
        tostring(name), type(value)), level)
    end
    if name:find("[\0\r\n:]") or tostring(value):find("[\0\r\n]") then
      error(("pf.http: header %q has a NUL, CR or LF byte (or a colon in its name)"):format(name), level)
    end
  end
end

-- A streamed request: the transfer is to-be-closed, so an error, a cancel
-- or a timeout of the task stops it and frees what it holds.
local function stream(opts)
  local x <close> = core.http_start(opts)
  local fn = opts.stream
  local p = parsers[fn]
  if p then p.where = (opts.method or "GET"):upper() .. " " .. opts.url .. ": " end
  while true do
    local chunk = x:next()
    if chunk == nil then break end
    fn(chunk)
  end
  return x:result()
end

-- pf.http.request{ method =, url =, headers =, body =, timeout =, stream =,
-- follow =, ca_file =, verify =, client_cert =, client_key =, proxy = }
-- -> { status =, headers =, body =, url = }. The C side reads every
-- option when the request starts (the method upper-cased), so opts is
-- used as it is, not copied.
local http_request = core.http_request

local function request(opts)
  if opts.stream then return core.run(stream, opts) end
  return http_request(opts)
end

function http.request(opts)
  check_opts(opts, 3)
  return request(opts)
end

local function with(opts, fields)
  if opts == nil then return fields end
  if type(opts) ~= "table" then
    error(("pf.http: options must be a table (got %s)"):format(type(opts)), 3)
  end
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  for k, v in pairs(fields) do o[k] = v end
  return o
end

function http.get(url, opts)
  local o = with(opts, { url = url, method = "GET" })
  check_opts(o, 3)
  return request(o)
end

function http.post(url, body, opts)
  local o = with(opts, { url = url, method = "POST", body = body })
  check_opts(o, 3)
  return request(o)
end

-- ------------------------------------------------------ Server-Sent Events

-- A parser of the text/event-stream format: parser:feed(chunk) returns
-- the array of events completed by the chunk, each { event =, data =,
-- id = } (event defaults to "message"; data lines joined with "\n").
-- Lines end with "\r\n", "\n" or "\r". Work is linear in the bytes fed:
-- an unfinished line is kept as pieces, joined once when it ends. A line
-- longer than max_line bytes, or an event whose data is longer than
-- max_event bytes, raises an error.
local MAX_LINE = 1024 * 1024
local MAX_EVENT = 16 * 1024 * 1024

local Parser = {}
Parser.__index = Parser

local function limit(opts, name, default, level)
  local v = opts[name]
  if v == nil then return default end
  if math.type(v) ~= "integer" or v < 1 then
    error(("pf.http.sse: %s must be a positive integer (got %s)"):format(name, tostring(v)), level + 1)
  end
  return v
end

local function new_parser(opts, level)
  if opts ~= nil and type(opts) ~= "table" then
    error(("pf.http.sse: options must be a table (got %s)"):format(type(opts)), level)
  end
  opts = opts or {}
  for k in pairs(opts) do
    if k ~= "max_line" and k ~= "max_event" then
      error(("pf.http.sse: unknown option '%s'"):format(tostring(k)), level)
    end
  end
  return setmetatable({
    max_line = limit(opts, "max_line", MAX_LINE, level),
    max_event = limit(opts, "max_event", MAX_EVENT, level),
    parts = {}, nparts = 0, plen = 0,   -- the unfinished line
    skip_lf = false,                    -- the last chunk ended with "\r"
    data = {}, ndata = 0, dlen = 0,     -- the event's data lines
    event = nil, id = nil,
    where = "",                         -- "METHOD url: " for messages
  }, Parser)
end

function http.sse_parser(opts)
  return new_parser(opts, 3)
end

function Parser:fail(what, limit_name, n)
  error(("pf.http.sse: %s%s longer than %s (%d bytes)"):format(
    self.where, what, limit_name, n), 0)
end

function Parser:line(line, out)
  if line == "" then
    if self.ndata > 0 then
      out[#out + 1] = { event = self.event or "message",
        data = table.concat(self.data, "\n", 1, self.ndata), id = self.id }
    end
    self.ndata, self.dlen, self.event = 0, 0, nil
    return
  end
  if line:byte(1) == 58 then return end  -- ":" a comment
  local field, value = line:match("^([^:]*):? ?(.*)$")
  if field == "data" then
    self.dlen = self.dlen + #value + 1
    if self.dlen > self.max_event + 1 then
      self:fail("an event's data is", "max_event", self.max_event)
    end
    self.ndata = self.ndata + 1
    self.data[self.ndata] = value
  elseif field == "event" then
    self.event = value
  elseif field == "id" then
    self.id = value
  end
end

-- the unfinished line's pieces, then chunk from i to j, as one string
function Parser:take(chunk, i, j)
  local n = self.nparts
  if n == 0 then return chunk:sub(i, j) end
  local parts = self.parts
  parts[n + 1] = chunk:sub(i, j)
  local line = table.concat(parts, "", 1, n + 1)
  for k = 1, n + 1 do parts[k] = nil end
  self.nparts, self.plen = 0, 0
  return line
end

function Parser:keep(chunk, i)
  local len = self.plen + #chunk - i + 1
  if len > self.max_line then self:fail("a line is", "max_line", self.max_line) end
  self.nparts = self.nparts + 1
  self.parts[self.nparts] = i == 1 and chunk or chunk:sub(i)
  self.plen = len
end

function Parser:feed(chunk)
  local out, pos, n = {}, 1, #chunk
  if self.skip_lf and n > 0 then
    self.skip_lf = false
    if chunk:byte(1) == 10 then pos = 2 end   -- the "\n" of a split "\r\n"
  end
  while pos <= n do
    local s = chunk:find("[\r\n]", pos)
    if not s then
      self:keep(chunk, pos)
      break
    end
    if self.plen + s - pos > self.max_line then
      self:fail("a line is", "max_line", self.max_line)
    end
    self:line(self:take(chunk, pos, s - 1), out)
    pos = s + 1
    if chunk:byte(s) == 13 then
      if s == n then self.skip_lf = true
      elseif chunk:byte(pos) == 10 then pos = pos + 1 end
    end
  end
  return out
end

-- pf.http.sse(on_event [, opts]): a stream function for pf.http.request
-- that calls on_event(event) in the task, once per complete event.
function http.sse(on_event, opts)
  if type(on_event) ~= "function" then
    error(("pf.http.sse: expected a function (got %s)"):format(type(on_event)), 2)
  end
  local p = new_parser(opts, 3)
  local function feed(chunk)
    local events = p:feed(chunk)
    for i = 1, #events do on_event(events[i]) end
  end
  parsers[feed] = p
  return feed
end

return http

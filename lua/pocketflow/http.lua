-- pocketflow.http: HTTP requests that wait in the calling task, on the
-- libcurl transfers of pocketflow.core (src/http.c). Outside any task a
-- request runs as the main task of an implicit pf.run.
local core = require "pocketflow.core"

local http = {}

local function check_opts(opts, level)
  if type(opts) ~= "table" then
    error(("pf.http.request: options must be a table (got %s)"):format(type(opts)), level)
  end
  if type(opts.url) ~= "string" then
    error(("pf.http.request: url must be a string (got %s)"):format(type(opts.url)), level)
  end
  local stream = opts.stream
  if stream ~= nil and type(stream) ~= "function" then
    error(("pf.http.request: stream must be a function (got %s)"):format(type(stream)), level)
  end
end

-- A streamed request: the transfer is to-be-closed, so an error, a cancel
-- or a timeout of the task stops it and frees what it holds.
local function stream(opts)
  local x <close> = core.http_start(opts)
  local fn = opts.stream
  while true do
    local chunk = x:next()
    if chunk == nil then break end
    fn(chunk)
  end
  return x:result()
end

-- pf.http.request{ method =, url =, headers =, body =, timeout =, stream =,
-- follow = } -> { status =, headers =, body = }. The C side reads every
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
local Parser = {}
Parser.__index = Parser

function http.sse_parser()
  return setmetatable({ buf = "", data = nil, event = nil, id = nil }, Parser)
end

function Parser:line(line, out)
  if line == "" then
    if self.data ~= nil then
      out[#out + 1] = { event = self.event or "message", data = self.data, id = self.id }
    end
    self.data, self.event = nil, nil
    return
  end
  if line:sub(1, 1) == ":" then return end  -- a comment
  local field, value = line:match("^([^:]*):? ?(.*)$")
  if field == "data" then
    self.data = self.data and (self.data .. "\n" .. value) or value
  elseif field == "event" then
    self.event = value
  elseif field == "id" then
    self.id = value
  end
end

function Parser:feed(chunk)
  local out = {}
  local buf = self.buf .. chunk
  local pos = 1
  while true do
    local s, e = buf:find("\r?\n", pos)
    local cr = buf:find("\r", pos, true)
    if cr and (not s or cr < s) and cr < #buf then s, e = cr, cr end
    if not s then break end
    self:line(buf:sub(pos, s - 1), out)
    pos = e + 1
  end
  self.buf = buf:sub(pos)
  return out
end

-- pf.http.sse(on_event): a stream function for pf.http.request that
-- calls on_event(event) in the task, once per complete event.
function http.sse(on_event)
  if type(on_event) ~= "function" then
    error(("pf.http.sse: expected a function (got %s)"):format(type(on_event)), 2)
  end
  local p = http.sse_parser()
  return function(chunk)
    for _, ev in ipairs(p:feed(chunk)) do on_event(ev) end
  end
end

return http

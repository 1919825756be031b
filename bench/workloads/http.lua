-- http N C URL SIZE: N GET requests of URL at concurrency C, from the
-- items of a ParallelBatchNode (max_concurrency = C), each checked for
-- status 200 and a body of SIZE bytes.
--
-- pf.http.get(url) returns { status, headers, body } (README, I/O). get()
-- below also accepts pf.http.request{...} or a callable pf.http, and a
-- response given as the values status, body: the one place to adapt.
local pf = require "pocketflow"
local B = require "workloads.lib"
local N = tonumber(arg[1]) or 20000
local C = tonumber(arg[2]) or 100
local URL = arg[3] or "http://127.0.0.1:8080/small.txt"
local SIZE = tonumber(arg[4])

local http = pf.http
if http == nil then
  local ok, m = pcall(require, "pocketflow.http")
  if ok then http = m end
end
if http == nil then
  io.stdout:write("SKIP pf.http not built\n")
  os.exit(0)
end
if arg[1] == "probe" then
  io.stdout:write("HAVE pf.http\n")
  os.exit(0)
end

local function get(url)
  local a, b
  if type(http) == "table" and type(http.get) == "function" then
    a, b = http.get(url)
  elseif type(http) == "table" and type(http.request) == "function" then
    a, b = http.request{ method = "GET", url = url }
  else
    a, b = http(url)
  end
  if type(a) == "table" then
    return a.status or a.code or a.status_code, a.body
  end
  return a, b
end

local items = {}
for i = 1, N do items[i] = i end

local Get = pf.ParallelBatchNode:extend("Get")
function Get:prep() return items end
function Get:exec()
  local status, body = get(URL)
  if tonumber(status) ~= 200 then error("GET " .. URL .. ": status " .. tostring(status)) end
  if SIZE and (type(body) ~= "string" or #body ~= SIZE) then
    error("GET " .. URL .. ": body of " .. tostring(body and #body) .. " bytes, want " .. SIZE)
  end
  return 1
end
function Get:post(shared, _, res) shared.n = #res end

local shared = {}
local t0 = B.clock()
Get{ max_concurrency = C }:run(shared)
local dt = B.clock() - t0
B.check(shared.n == N, "got " .. tostring(shared.n) .. " responses")
B.report(dt, ("rps=%.1f"):format(N / dt))

-- pocketflow.json: JSON on lua-cjson, with Lua 5.4 integers kept as
-- integers both ways, pf.json.null for JSON null, and pf.json.array(t)
-- to mark a table that must encode as an array even when empty.
local cjson = require("cjson").new()   -- settings of our own

local json = {}

json.null = cjson.null

local array_mt = { __name = "pocketflow.json.array" }

-- json.array(t): t (or a new table) marked as a JSON array
function json.array(t)
  if t == nil then t = {} end
  if type(t) ~= "table" then
    error(("pf.json.array: expected a table (got %s)"):format(type(t)), 2)
  end
  return setmetatable(t, array_mt)
end

function json.is_array(t)
  return getmetatable(t) == array_mt
end

local MAX_DEPTH = 1000

local function sequence_length(t)
  local n = 0
  for k in pairs(t) do
    if math.type(k) ~= "integer" or k < 1 then return nil end
    n = n + 1
  end
  for i = 1, n do if t[i] == nil then return nil end end
  return n
end

local encode_value

local function encode_table(t, out, depth)
  if depth > MAX_DEPTH then
    error("pf.json.encode: nested too deep (a cycle?)", 0)
  end
  local n
  if getmetatable(t) == array_mt then n = #t
  elseif next(t) ~= nil then n = sequence_length(t) end
  if n then
    out[#out + 1] = "["
    for i = 1, n do
      if i > 1 then out[#out + 1] = "," end
      encode_value(t[i], out, depth + 1)
    end
    out[#out + 1] = "]"
    return
  end
  out[#out + 1] = "{"
  local first = true
  for k, v in pairs(t) do
    local tk = type(k)
    if tk ~= "string" and tk ~= "number" then
      error(("pf.json.encode: cannot encode a %s key"):format(tk), 0)
    end
    if not first then out[#out + 1] = "," end
    first = false
    out[#out + 1] = cjson.encode(tostring(k))
    out[#out + 1] = ":"
    encode_value(v, out, depth + 1)
  end
  out[#out + 1] = "}"
end

function encode_value(v, out, depth)
  local tv = type(v)
  if tv == "table" then
    encode_table(v, out, depth)
  elseif math.type(v) == "integer" then
    out[#out + 1] = tostring(v)
  elseif tv == "string" or tv == "number" or tv == "boolean" or v == nil
      or v == cjson.null then
    local ok, s = pcall(cjson.encode, v)
    if not ok then error("pf.json.encode: " .. tostring(s), 0) end
    out[#out + 1] = s
  else
    error(("pf.json.encode: cannot encode a %s"):format(tv), 0)
  end
end

-- json.encode(value) -> string
function json.encode(v)
  local out = {}
  local ok, err = pcall(encode_value, v, out, 0)
  if not ok then error(err, 2) end
  return table.concat(out)
end

-- numbers with an integral value come back as integers
local function integers(v, depth)
  if type(v) == "table" then
    if depth > MAX_DEPTH then return v end
    for k, x in pairs(v) do
      if type(x) == "number" or type(x) == "table" then
        v[k] = integers(x, depth + 1)
      end
    end
    return v
  end
  if math.type(v) == "float" and v == math.floor(v) and v >= -2^53 and v <= 2^53 then
    return math.tointeger(v)
  end
  return v
end

-- json.decode(string) -> value; JSON null is json.null
function json.decode(s)
  if type(s) ~= "string" then
    error(("pf.json.decode: expected a string (got %s)"):format(type(s)), 2)
  end
  local ok, v = pcall(cjson.decode, s)
  if not ok then error("pf.json.decode: " .. tostring(v), 2) end
  return integers(v, 0)
end

return json

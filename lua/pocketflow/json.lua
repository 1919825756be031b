-- pocketflow.json: JSON on lua-cjson, with Lua 5.4 integers kept as
-- integers both ways, pf.json.null for JSON null, and pf.json.array(t)
-- to mark a table that must encode as an array even when empty.
-- Strict: text and strings must be valid UTF-8, NaN and Infinity are
-- not JSON, and an integer decodes exactly or raises.
local cjson = require("cjson").new()   -- settings of our own
cjson.decode_invalid_numbers(false)    -- no NaN, Infinity, hex

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
    if tk == "string" and not utf8.len(k) then
      error(("pf.json.encode: invalid UTF-8 in a key (byte %d)")
        :format(select(2, utf8.len(k))), 0)
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
  elseif tv == "string" and not utf8.len(v) then
    error(("pf.json.encode: invalid UTF-8 in a string (byte %d)")
      :format(select(2, utf8.len(v))), 0)
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

-- Integer literals a double cannot hold exactly (more than 15 digits)
-- are swapped for marked strings before cjson sees the text; the walk
-- below turns them into Lua integers. The mark starts with a \u0001
-- escape, so only a text holding that escape could forge one: such a
-- text is decoded without the swap, and a long integer in it raises.
local MARK = "\1pf.json.int:"

-- the text with its long integer literals swapped, and the literals;
-- nil if there is none
local function swap_long_integers(s)
  local parts, ints, pos, from = {}, {}, 1, 1
  while true do
    local i = s:find('["%-%d]', pos)
    if not i then break end
    if s:byte(i) == 34 then            -- a string: to its closing quote
      local j = i + 1
      repeat
        local q = s:find('["\\]', j)
        if not q then return nil end   -- cjson reports it
        j = q + 2
      until s:byte(q) == 34
      pos = j - 1
    else
      local a, b = s:find("^%-?%d+", i)
      if not a then return nil end     -- a lone '-': cjson reports it
      local after = s:find("^[%.eE]", b + 1)
      if after then
        pos = select(2, s:find("^[%d%.eE+%-]*", b + 1)) + 1
      else
        if b - a + 1 - (s:byte(a) == 45 and 1 or 0) > 15 then
          ints[#ints + 1] = s:sub(a, b)
          parts[#parts + 1] = s:sub(from, a - 1)
          parts[#parts + 1] = '"\\u0001pf.json.int:' .. #ints .. '"'
          from = b + 1
        end
        pos = b + 1
      end
    end
  end
  if #ints == 0 then return nil end
  parts[#parts + 1] = s:sub(from)
  return table.concat(parts), ints
end

local function exact_integer(lit)
  local n = tonumber(lit)
  if math.type(n) ~= "integer" then
    error(("pf.json.decode: integer %s is out of range (Lua integers "
      .. "are 64-bit)"):format(lit), 0)
  end
  return n
end

-- numbers with an integral value come back as integers, marked strings
-- as the integers they stand for
local function integers(v, depth, ints)
  if type(v) == "table" then
    if depth > MAX_DEPTH then return v end
    for k, x in pairs(v) do
      local tx = type(x)
      if tx == "number" or tx == "table" or (ints and tx == "string") then
        v[k] = integers(x, depth + 1, ints)
      end
    end
    return v
  end
  if ints and type(v) == "string" and v:sub(1, #MARK) == MARK then
    return exact_integer(ints[tonumber(v:sub(#MARK + 1))])
  end
  if math.type(v) == "float" and v == math.floor(v) and v >= -2^53 and v <= 2^53 then
    return math.tointeger(v)
  end
  return v
end

local function decode(s)
  local ints
  if not s:find("\\u0001", 1, true) then
    local swapped, found = swap_long_integers(s)
    if swapped then s, ints = swapped, found end
  end
  local ok, v = pcall(cjson.decode, s)
  if not ok then error("pf.json.decode: " .. tostring(v), 0) end
  if not ints and s:find("%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d") then
    -- a long integer left in: in a text with \u0001, or not an integer
    local t = swap_long_integers((s:gsub("\\u0001", "\\u0002")))
    if t then error("pf.json.decode: a long integer in a text with a \\u0001 "
                    .. "escape cannot be decoded exactly", 0) end
  end
  return integers(v, 0, ints)
end

-- json.decode(string) -> value; JSON null is json.null
function json.decode(s)
  if type(s) ~= "string" then
    error(("pf.json.decode: expected a string (got %s)"):format(type(s)), 2)
  end
  local len, bad = utf8.len(s)
  if not len then
    error(("pf.json.decode: invalid UTF-8 at byte %d"):format(bad), 2)
  end
  local ok, v = pcall(decode, s)
  if not ok then error(v, 2) end
  return v
end

return json

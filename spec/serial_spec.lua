-- pf.serialize / pf.deserialize (src/serial.c): what round-trips, what is
-- refused and how it is named, and hostile blobs.
local pf = require "pocketflow"

-- fewer random cases under valgrind (each still covers every kind)
local SCALE = os.getenv("PF_MODE") == "valgrind" and 4 or 1

-- {== blobs made by hand: the format of docs/drafts/serial.md ==
local crc_tab = {}
for i = 0, 255 do
  local c = i
  for _ = 1, 8 do
    if c & 1 == 1 then c = 0xedb88320 ~ (c >> 1) else c = c >> 1 end
  end
  crc_tab[i] = c
end

local function crc32(s, crc)
  crc = (crc or 0) ~ 0xffffffff
  for i = 1, #s do crc = crc_tab[(crc ~ s:byte(i)) & 0xff] ~ (crc >> 8) end
  return crc ~ 0xffffffff
end

local function varint(n)
  local out = {}
  repeat
    local b = n & 0x7f
    n = n >> 7
    if n ~= 0 then b = b | 0x80 end
    out[#out + 1] = string.char(b)
  until n == 0
  return table.concat(out)
end

-- a blob around a payload, with a right length and CRC
local function wrap(payload, version)
  local head = "PFS" .. string.char(version or 1)
  local body = varint(#payload) .. payload
  return head .. string.pack("<I4", crc32(body, crc32(head))) .. body
end

local function payload_of(blob)
  local i = 9
  while blob:byte(i) >= 0x80 do i = i + 1 end
  return blob:sub(i + 1)
end
-- }==

-- a and b are the same graph: same types, numbers with the same bits,
-- and one table of b for each table of a (shared and cyclic ones too)
local function same_graph(a, b)
  local fwd, back, queue = {}, {}, {}
  local function match(x, y)
    if type(x) ~= type(y) then return false end
    if type(x) == "number" then
      if math.type(x) ~= math.type(y) then return false end
      if math.type(x) == "float" then return string.pack("<d", x) == string.pack("<d", y) end
      return x == y
    end
    if type(x) ~= "table" then return rawequal(x, y) end
    if fwd[x] ~= nil or back[y] ~= nil then return fwd[x] == y and back[y] == x end
    fwd[x], back[y] = y, x
    queue[#queue + 1] = x
    return true
  end
  local function npairs(t)
    local n = 0
    for _ in next, t do n = n + 1 end
    return n
  end
  if not match(a, b) then return false, "root" end
  local deferred, progress = {}, true
  while progress do
    progress = false
    while #queue > 0 do
      local x = table.remove(queue)
      local y = fwd[x]
      if npairs(x) ~= npairs(y) then return false, "pair count" end
      for k, v in next, x do deferred[#deferred + 1] = { x, k, v } end
    end
    local later = {}
    for _, kv in ipairs(deferred) do
      local x, k, v = kv[1], kv[2], kv[3]
      if type(k) == "table" and fwd[k] == nil then
        later[#later + 1] = kv
      else
        local ky = type(k) == "table" and fwd[k] or k
        if not match(v, rawget(fwd[x], ky)) then return false, "value at " .. tostring(k) end
        progress = true
      end
    end
    deferred = later
    progress = progress or #queue > 0
  end
  if #deferred > 0 then return false, "a table key reached only as a key" end
  return true
end

local function round(v)
  return pf.deserialize(pf.serialize(v))
end

local function err_of(f, ...)
  local ok, e = pcall(f, ...)
  assert(not ok, "expected an error")
  return e
end

-- a seeded generator of nested values: every type, shared tables, cycles,
-- tables as keys (each also reachable as a value)
local function generator(seed)
  local x = seed
  local function rand(n)
    x = (x * 6364136223846793005 + 1442695040888963407)
    return ((x >> 33) % n) + 1
  end
  local pool = {}
  local scalars = {
    function() return rand(300) - 150 end,
    function() return ({ math.mininteger, math.maxinteger, 0, -1, 2^53 | 0 })[rand(5)] end,
    function() return (rand(1000000) - 500000) / 7 end,
    function() return ({ 0/0, 1/0, -1/0, -0.0, 0.0, 2^-1074, 1e308 })[rand(7)] end,
    function()
      local n = ({ 0, 1, 63, 64, 200 })[rand(5)]
      local t = {}
      for i = 1, n do t[i] = string.char(rand(256) - 1) end
      return table.concat(t)
    end,
    function() return rand(2) == 1 end,
    function() return pf.json.null end,
  }
  local value
  local function key()
    local r = rand(10)
    if r <= 4 then return "k" .. rand(20) end
    if r <= 6 then return rand(8) end
    if r == 7 then return (rand(100) - 50) + 0.5 end
    if r == 8 then return rand(2) == 1 end
    if r == 9 and #pool > 0 then return pool[rand(#pool)] end
    return string.char(rand(256) - 1, 0, rand(256) - 1)
  end
  function value(depth)
    local r = rand(10)
    if depth > 5 or r <= 5 then return scalars[rand(#scalars)]() end
    if r == 6 and #pool > 0 then return pool[rand(#pool)] end
    local t = {}
    pool[#pool + 1] = t
    for i = 1, rand(6) - 1 do t[i] = value(depth + 1) end
    if rand(4) == 1 then t[rand(3) + 1] = nil end  -- a hole
    for _ = 1, rand(6) - 1 do t[key()] = value(depth + 1) end
    return t
  end
  return function()
    pool = {}
    local root = { value(1), value(1), value(1) }
    pool[#pool + 1] = root
    -- every pooled table is a value somewhere, so keys are reachable
    root.all = pool
    return root
  end
end

describe("pf.serialize / pf.deserialize", function()
  it("keeps integers and floats apart, and floats to the bit", function()
    for _, v in ipairs({ 0, 1, -1, 127, 128, -128, 2^53 | 0, math.maxinteger, math.mininteger }) do
      local r = round(v)
      assert.equal("integer", math.type(r))
      assert.equal(v, r)
    end
    for _, v in ipairs({ 0.0, -0.0, 1.0, 0.1, -2.5, 1/0, -1/0, 0/0, -(0/0), 2^-1074, 1.7976931348623157e308, 2^63 }) do
      local r = round(v)
      assert.equal("float", math.type(r))
      assert.equal(string.pack("<d", v), string.pack("<d", r))
    end
  end)

  it("round-trips strings of any bytes, booleans, nil and pf.json.null", function()
    local all = {}
    for i = 0, 255 do all[#all + 1] = string.char(i) end
    all = table.concat(all)
    for _, s in ipairs({ "", "a", "\0", "a\0b", all, ("x"):rep(63), ("y"):rep(64), ("z"):rep(70000) }) do
      assert.equal(s, round(s))
    end
    assert.equal(true, round(true))
    assert.equal(false, round(false))
    assert.is_nil(round(nil))
    assert.equal(pf.json.null, round(pf.json.null))
    assert.equal(pf.json.null, round({ a = pf.json.null }).a)
  end)

  it("round-trips keys of every kind and arrays with holes", function()
    local tk = { "table key" }
    local v = {
      "one", "two", [4] = "four", s = 1, ["a b"] = 2, [""] = 3, ["\0\255"] = 4,
      [-1] = "neg", [0] = "zero", [math.maxinteger] = "max", [1.5] = "f",
      [1/0] = "inf", [-1/0] = "-inf", [true] = "t", [false] = "f2",
      [pf.json.null] = "null key",
    }
    assert.is_true(same_graph(v, round(v)))
    v[tk] = "tk"
    local r = round(v)
    assert.equal("four", r[4])
    assert.is_nil(r[3])
    assert.equal("inf", r[1/0])
    assert.equal("null key", r[pf.json.null])
    -- the table key reached only as a key
    local found = 0
    for k, val in pairs(r) do
      if type(k) == "table" then
        found = found + 1
        assert.equal("table key", k[1])
        assert.equal("tk", val)
      end
    end
    assert.equal(1, found)
  end)

  it("keeps shared references and cycles", function()
    local shared = { n = 1 }
    local v = { a = shared, b = shared, list = { shared, shared } }
    v.self = v
    v.list.up = v
    local r = round(v)
    assert.equal(r.a, r.b)
    assert.equal(r.a, r.list[1])
    assert.equal(r.a, r.list[2])
    assert.equal(r, r.self)
    assert.equal(r, r.list.up)
    assert.is_true(same_graph(v, r))
    -- a table that is a key and a value, and a key of itself
    local k = { name = "k" }
    local w = { [k] = k, other = k }
    k[k] = "itself"
    local rw = round(w)
    assert.equal(rw.other, rw[rw.other])
    assert.equal("itself", rw.other[rw.other])
    assert.is_true(same_graph(w, rw))
  end)

  it("round-trips seeded random nested values with their identity structure", function()
    for seed = 1, 200 // SCALE do
      local v = generator(seed)()
      local ok, why = same_graph(v, round(v))
      assert(ok, "seed " .. seed .. ": " .. tostring(why))
      ok, why = same_graph(v, pf.deserialize(pf.serialize(v, { sorted = true })))
      assert(ok, "sorted, seed " .. seed .. ": " .. tostring(why))
    end
  end)

  it("round-trips a big mixed table", function()
    local v = {}
    local n = 10000 // SCALE
    for i = 1, n do
      v[i] = { id = i, name = "item " .. i, score = i / 3, ok = i % 2 == 0, tags = { "a", "b" } }
    end
    v.by_name = { first = v[1], last = v[n] }
    v.blob = ("\0\1\2\3"):rep(250000)
    local r = round(v)
    assert.is_true(same_graph(v, r))
    assert.equal(r[1], r.by_name.first)
  end)

  it("uses raw access: no metamethod runs, metatables are not saved", function()
    local function boom() error("metamethod ran") end
    local mt = { __index = boom, __newindex = boom, __len = boom, __pairs = boom,
                 __eq = boom, __lt = boom, __le = boom, __tostring = boom, __name = "X" }
    local v = setmetatable({ 1, 2, a = setmetatable({ x = 1 }, mt) }, mt)
    local r = round(v)
    assert.is_nil(getmetatable(r))
    assert.is_nil(getmetatable(rawget(r, "a")))
    assert.equal(2, rawlen(r))
    assert.equal(1, rawget(rawget(r, "a"), "x"))
    -- errors name the path without calling __tostring on table keys
    local e = err_of(pf.serialize, { [setmetatable({}, mt)] = { f = print } })
    assert.equal("pf.serialize: cannot serialize value[<table>].f (function)", e)
  end)

  it("writes the same bytes for the same unchanged table", function()
    local v = generator(7)()
    assert.equal(pf.serialize(v), pf.serialize(v))
  end)

  it("with sorted, writes the same bytes for equal tables, in any process", function()
    local function build(order, churn)
      local t = { list = {}, nested = { z = 1, a = { b = 2.5, [false] = "f" } } }
      for _, i in ipairs(order) do t["k" .. i] = { i, tostring(i), i / 2 } end
      for i = 1, churn do t["tmp" .. i] = true end
      for i = 1, churn do t["tmp" .. i] = nil end
      t[1], t[2], t[1.5], t[-3], t[true] = "one", "two", "f", "neg", "t"
      return t
    end
    local up, down = {}, {}
    for i = 1, 60 do up[i], down[61 - i] = i, i end
    local a, b = build(up, 0), build(down, 500)
    local sa = pf.serialize(a, { sorted = true })
    assert.equal(sa, pf.serialize(b, { sorted = true }))
    assert.is_true(same_graph(a, pf.deserialize(sa)))
    -- arrays with holes: the first border, however the table was made
    local c, d = { 1, nil, 3 }, {}
    d[3], d[1] = 3, 1
    assert.equal(pf.serialize(c, { sorted = true }), pf.serialize(d, { sorted = true }))
    assert.same({ 1, nil, 3 }, pf.deserialize(pf.serialize(d, { sorted = true })))
    -- other processes seed their string hashes differently
    local code = [[local pf = require "pocketflow"
      local t = { list = { 1, 2 } } for i = 1, 60 do t["k" .. i] = { i, tostring(i) } end
      io.write((pf.serialize(t, { sorted = true }):gsub(".", function(ch) return ("%02x"):format(ch:byte()) end)))]]
    local function child()
      local f = assert(io.popen(os.getenv("PF_BIN") .. " -e '" .. code .. "' 2>/dev/null"))
      local out = f:read("a")
      f:close()
      return out
    end
    local t = { list = { 1, 2 } }
    for i = 1, 60 do t["k" .. i] = { i, tostring(i) } end
    local here = pf.serialize(t, { sorted = true }):gsub(".", function(ch) return ("%02x"):format(ch:byte()) end)
    assert.equal(here, child())
    assert.equal(here, child())
    -- table keys follow the others, and still round-trip
    local tk = { "key" }
    local w = { [tk] = 1, z = 2, a = tk }
    assert.is_true(same_graph(w, pf.deserialize(pf.serialize(w, { sorted = true }))))
    assert.equal("pf.serialize: cannot serialize a key of value.x (function)",
      err_of(pf.serialize, { x = { [print] = 1 } }, { sorted = true }))
    assert.equal("pf.serialize: cannot serialize value.x.y (function)",
      err_of(pf.serialize, { x = { y = print } }, { sorted = true }))
  end)

  it("writes the version 1 format", function()
    assert.equal(wrap("\2"), pf.serialize(true))
    assert.equal(wrap("\0"), pf.serialize(nil))
    assert.equal(wrap("\x85"), pf.serialize(5))
    assert.equal(wrap("\3\x80\2"), pf.serialize(128))
    assert.equal(wrap("\3\1"), pf.serialize(-1))
    assert.equal(wrap("\4" .. string.pack("<d", 1.5)), pf.serialize(1.5))
    assert.equal(wrap("\x42hi"), pf.serialize("hi"))
    assert.equal(wrap("\5\64" .. ("a"):rep(64)), pf.serialize(("a"):rep(64)))
    assert.equal(wrap("\6\2\0\0\0\0\x8a\x94"), pf.serialize({ 10, 20 }))
    local t = {}
    assert.equal(wrap("\6\2\0\0\0\0\6\0\0\0\0\0\7\2"), pf.serialize({ t, t }))
    assert.equal(wrap("\8"), pf.serialize(pf.json.null))
    -- and reads it
    assert.same({ 10, 20 }, pf.deserialize(wrap("\6\2\0\0\0\0\x8a\x94")))
    local c = pf.deserialize(wrap("\6\0\1\0\0\0\x41s\7\1"))
    assert.equal(c, c.s)
  end)
end)

describe("pf.serialize refuses", function()
  local cp = { root = "shared", checkpoint = true }

  it("functions, userdata and threads, naming the path", function()
    assert.equal("pf.serialize: cannot serialize value.f (function)",
      err_of(pf.serialize, { f = print }))
    assert.equal("pf.serialize: cannot serialize value (function)", err_of(pf.serialize, print))
    assert.equal("cannot checkpoint shared.client (userdata); list it in transient",
      err_of(pf.serialize, { client = io.stdout }, cp))
    assert.equal("cannot checkpoint shared.cfg.conn (userdata); list it in transient",
      err_of(pf.serialize, { cfg = { conn = io.stdout } }, cp))
    assert.equal("cannot checkpoint shared.items[3] (thread); list it in transient",
      err_of(pf.serialize, { items = { 1, 2, coroutine.create(print) } }, cp))
    assert.equal('cannot checkpoint shared["a b"] (function); list it in transient',
      err_of(pf.serialize, { ["a b"] = print }, cp))
    assert.equal('cannot checkpoint shared["end"].x (function); list it in transient',
      err_of(pf.serialize, { ["end"] = { x = print } }, cp))
    assert.equal('cannot checkpoint shared["q\\"\\\\\\010"] (function); list it in transient',
      err_of(pf.serialize, { ['q"\\\n'] = print }, cp))
    assert.equal("cannot checkpoint shared[1.5][true][-2] (function); list it in transient",
      err_of(pf.serialize, { [1.5] = { [true] = { [-2] = print } } }, cp))
    assert.equal("cannot checkpoint a key of shared.cfg (function); list it in transient",
      err_of(pf.serialize, { cfg = { [print] = 1 } }, cp))
    assert.equal("pf.serialize: cannot serialize shared.x (function)",
      err_of(pf.serialize, { x = print }, "shared"))
    assert.equal("pf.serialize: cannot serialize item[2] (function)",
      err_of(pf.serialize, { 1, print }, { root = "item" }))
  end)

  it("shortens a long key in the path", function()
    local k = ("k"):rep(100) .. " "
    assert.equal('pf.serialize: cannot serialize value["' .. ("k"):rep(40) .. '..."] (function)',
      err_of(pf.serialize, { [k] = print }))
  end)

  it("nesting deeper than 1000 tables, either way", function()
    local root = {}
    local c = root
    for _ = 1, 999 do c[1] = {} c = c[1] end
    assert.is_true(same_graph(root, round(root)))        -- 1000 tables: fine
    c[1] = {}
    local e = err_of(pf.serialize, root)
    assert.equal("pf.serialize: cannot serialize value[1][1][1][1][1][1][1][1] ... [1][1][1][1] "
      .. "(nested deeper than 1000 tables)", e)
    local deep = {}
    c = deep
    for _ = 1, 1000000 do c.a = {} c = c.a end
    e = err_of(pf.serialize, deep, cp)
    assert.equal("cannot checkpoint shared.a.a.a.a.a.a.a.a ... .a.a.a.a (nested deeper than 1000 tables)", e)
    -- a blob claiming 100000 nested tables
    e = err_of(pf.deserialize, wrap(("\6\1\0\0\0\0"):rep(100000) .. "\0"))
    assert.matches("^pf%.deserialize: corrupt data %(nested deeper than 1000 tables at byte %d+%)$", e)
  end)

  it("bad options", function()
    assert.equal("pf.serialize: unknown option 'rot'", err_of(pf.serialize, {}, { rot = "x" }))
    assert.equal("pf.serialize: unknown option '?'", err_of(pf.serialize, {}, { "shared" }))
    assert.equal("pf.serialize: opts.root must be a string (got number)",
      err_of(pf.serialize, {}, { root = 1 }))
    assert.equal("pf.serialize: opts.skip must be a table (got string)",
      err_of(pf.serialize, {}, { skip = "client" }))
    assert.equal("pf.serialize: opts.skip must be a list of keys or a set of key = true",
      err_of(pf.serialize, {}, { skip = { client = 1 } }))
    assert.equal("pf.serialize: opts must be a table or a root name (got boolean)",
      err_of(pf.serialize, {}, true))
  end)
  -- that an error frees the output buffer at once: spec/c/serial_test.c
end)

describe("pf.serialize skip", function()
  it("leaves out top-level keys, given as a list or a set", function()
    local shared = { client = io.stdout, conn = print, x = 1, [2] = "two", nested = { client = 5 } }
    for _, skip in ipairs({ { "client", "conn" }, { client = true, conn = true } }) do
      for _, sorted in ipairs({ false, true }) do
        local r = pf.deserialize(pf.serialize(shared, { root = "shared", skip = skip, checkpoint = true, sorted = sorted }))
        assert.same({ x = 1, [2] = "two", nested = { client = 5 } }, r)
      end
    end
    -- only at the top
    assert.equal("cannot checkpoint shared.cfg.client (userdata); list it in transient",
      err_of(pf.serialize, { cfg = { client = io.stdout } }, { root = "shared", skip = { "client" }, checkpoint = true }))
    -- integer keys and the array part of the root
    local r = round(pf.deserialize(pf.serialize({ "a", "b", "c" }, { skip = { [2] = true } })))
    assert.same({ "a", nil, "c" }, r)
    r = pf.deserialize(pf.serialize({ "a", print }, { skip = { 2 } }))
    assert.same({ "a" }, r)
    -- a skipped value reached another way is still there
    local t = { 1 }
    r = pf.deserialize(pf.serialize({ skipme = t, keep = t }, { skip = { "skipme" } }))
    assert.same({ keep = { 1 } }, r)
  end)
end)

describe("pf.deserialize", function()
  local blobs = {
    pf.serialize({ name = "x", n = 42, f = -0.0, s = "a\0b", list = { 1, 2, nil, 4 }, t = { u = { v = true } } }),
    (function() local t = { 1 } t.self = t t[t] = t return pf.serialize(t) end)(),
    pf.serialize(("long "):rep(30)),
    pf.serialize(1.5),
  }

  it("raises clear errors on what is not a blob", function()
    assert.equal("pf.deserialize: expected a string (got nil)", err_of(pf.deserialize, nil))
    assert.equal("pf.deserialize: expected a string (got no value)", err_of(pf.deserialize))
    assert.equal("pf.deserialize: expected a string (got number)", err_of(pf.deserialize, 12))
    assert.equal("pf.deserialize: corrupt data (empty string)", err_of(pf.deserialize, ""))
    assert.equal("pf.deserialize: corrupt data (not made by pf.serialize)", err_of(pf.deserialize, "hello"))
    local b = blobs[1]
    assert.equal(("pf.deserialize: corrupt data (truncated: %d bytes where the header says %d)"):format(#b - 1, #b),
      err_of(pf.deserialize, b:sub(1, -2)))
    assert.equal(("pf.deserialize: corrupt data (trailing data: %d bytes where the header says %d)"):format(#b + 1, #b),
      err_of(pf.deserialize, b .. "x"))
    assert.equal("pf.deserialize: corrupt data (truncated: 5 bytes)", err_of(pf.deserialize, b:sub(1, 5)))
    local flipped = b:sub(1, 20) .. string.char(b:byte(21) ~ 1) .. b:sub(22)
    assert.equal("pf.deserialize: corrupt data (checksum mismatch)", err_of(pf.deserialize, flipped))
    assert.equal("pf.deserialize: format version 2 is not supported (this build reads version 1)",
      err_of(pf.deserialize, wrap("\2", 2)))
    -- bytes 0-7 mean the same in every version: a newer layout after them
    -- is told from damage
    local head, rest = "PFS\3", "\255\255\255 whatever version 3 holds"
    assert.equal("pf.deserialize: format version 3 is not supported (this build reads version 1)",
      err_of(pf.deserialize, head .. string.pack("<I4", crc32(rest, crc32(head))) .. rest))
    local damaged = wrap("\2"):sub(1, 3) .. "\2" .. wrap("\2"):sub(5)
    assert.equal("pf.deserialize: corrupt data (checksum mismatch)", err_of(pf.deserialize, damaged))
  end)

  it("raises on payloads that pass the checksum but lie", function()
    -- "at byte": the offset (from 0) where decoding stopped; the payload
    -- of these starts at 9
    local cases = {
      { "\5" .. varint(1 << 60), "string past the end at byte 19" },
      { "\5" .. varint(-1), "string past the end at byte 20" },
      { "\x45ab", "string past the end at byte 10" },
      { "\3" .. ("\255"):rep(10) .. "\1", "varint too long at byte 20" },
      { "\6" .. varint(1 << 60) .. "\0\0\0\0", "array past the end at byte 19" },
      { "\6\0\255\255\255\255\1\1", "pairs past the end at byte 15" },
      { "\6\1\0\0\0\0\7\2", "reference to no table at byte 17" },
      { "\7\1", "reference to no table at byte 11" },
      { "\32", "unknown tag at byte 9" },
      { "\6\0\1\0\0\0\0\1", "nil key at byte 16" },
      { "\6\0\1\0\0\0\4" .. string.pack("<d", 0/0) .. "\1", "NaN key at byte 24" },
      { "\6\0\1\0\0\0\1\0", "nil value at byte 17" },
      { "\1\1", "bytes after the value at byte 10" },
      { "\3\x80", "truncated at byte 11" },
      { "\4\0\0", "truncated at byte 10" },
    }
    for _, c in ipairs(cases) do
      assert.equal("pf.deserialize: corrupt data (" .. c[2] .. ")", err_of(pf.deserialize, wrap(c[1])))
    end
  end)

  it("raises on every truncation and every single-byte change of valid blobs", function()
    local n = 0
    for _, b in ipairs(blobs) do
      for i = 0, #b - 1 do
        assert.matches("^pf%.deserialize: corrupt data %(", err_of(pf.deserialize, b:sub(1, i)))
        n = n + 1
      end
      for i = 1, #b do
        for _, x in ipairs({ 0x01, 0x80, 0xff, 0x5a }) do
          local c = b:sub(1, i - 1) .. string.char(b:byte(i) ~ x) .. b:sub(i + 1)
          local e = err_of(pf.deserialize, c)
          assert(e:find("^pf%.deserialize: corrupt data %(") or e:find("^pf%.deserialize: format version"), e)
          n = n + 1
        end
      end
    end
    assert(n > 1000, n)
  end)

  it("survives changed payloads behind a valid checksum, and random bytes", function()
    local x = 12345
    local function rand(m)
      x = (x * 6364136223846793005 + 1442695040888963407)
      return ((x >> 33) % m) + 1
    end
    local decoded, raised = 0, 0
    local function try(s)
      local ok, r = pcall(pf.deserialize, s)
      if ok then
        decoded = decoded + 1
        round(r)  -- what decodes serializes again
      else
        assert(r:find("^pf%.deserialize: "), r)
        raised = raised + 1
      end
    end
    for _, b in ipairs(blobs) do
      local p = payload_of(b)
      for i = 1, #p do
        for _, v in ipairs({ 0, 1, 5, 6, 7, 0x40, 0x7f, 0x80, 0xff, rand(256) - 1 }) do
          try(wrap(p:sub(1, i - 1) .. string.char(v) .. p:sub(i + 1)))
        end
        try(wrap(p:sub(1, i - 1)))
      end
    end
    for _ = 1, 2000 // SCALE do
      local t = {}
      for i = 1, rand(64) - 1 do t[i] = string.char(rand(256) - 1) end
      local s = table.concat(t)
      try(s)
      try(wrap(s))
      try("PFS\1" .. s)
    end
    assert(raised > 5000 // SCALE, raised)
    assert(decoded > 10, decoded)
  end)
end)

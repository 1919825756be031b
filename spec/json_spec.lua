-- pf.json: lua-cjson with integers kept, null and empty-array markers.
local pf = require "pocketflow"
local json = pf.json

describe("pf.json", function()
  it("round-trips nested values", function()
    local v = { name = "x", list = { 1, 2, 3 }, nested = { a = { b = true } }, f = 1.5 }
    assert.same(v, json.decode(json.encode(v)))
  end)

  it("keeps integers as integers", function()
    local v = json.decode('{"n": 42, "big": 9007199254740992, "f": 2.5, "e": 1e3}')
    assert.equal("integer", math.type(v.n))
    assert.equal("float", math.type(v.f))
    assert.equal(1000, v.e)
    assert.equal("9007199254740993", json.encode(9007199254740993))
    assert.equal("[1,2]", json.encode({ 1, 2 }))
  end)

  it("maps JSON null to pf.json.null", function()
    local v = json.decode('{"a": null, "b": [1, null, 3]}')
    assert.equal(json.null, v.a)
    assert.equal(json.null, v.b[2])
    assert.equal('{"a":null}', json.encode({ a = json.null }))
    assert.equal("null", json.encode(nil))
  end)

  it("encodes an empty table as an object, pf.json.array() as an array", function()
    assert.equal("{}", json.encode({}))
    assert.equal("[]", json.encode(json.array()))
    assert.equal("[]", json.encode(json.array({})))
    assert.equal('{"list":[]}', json.encode({ list = json.array() }))
    assert.equal("[1]", json.encode(json.array({ 1 })))
    assert.is_true(json.is_array(json.array()))
  end)

  it("escapes strings", function()
    local s = 'quote " backslash \\ newline \n tab \t unicode é'
    assert.equal(s, json.decode(json.encode(s)))
    assert.equal('"a\\nb"', json.encode("a\nb"))
  end)

  it("encodes mixed tables as objects with string keys", function()
    local v = json.decode(json.encode({ 1, 2, x = 3 }))
    assert.same({ ["1"] = 1, ["2"] = 2, x = 3 }, v)
  end)

  it("raises clear errors", function()
    local ok, err = pcall(json.decode, "{bad")
    assert.is_false(ok)
    assert.truthy(err:find("pf.json.decode"))
    assert.has_error(function() json.encode({ f = print }) end)
    local cyc = {}
    cyc.self = cyc
    ok, err = pcall(json.encode, cyc)
    assert.is_false(ok)
    assert.truthy(err:find("deep"))
    assert.has_error(function() json.encode(0 / 0) end)
    assert.has_error(function() json.decode(1) end)
  end)
end)

describe("pf.json is exact and strict", function()
  it("decodes integers exactly, or raises", function()
    assert.equal(9007199254740993, json.decode("9007199254740993"))
    assert.equal("integer", math.type(json.decode("9007199254740993")))
    for _, n in ipairs({ math.maxinteger, math.mininteger, 2^53 + 1 // 1,
                         -(2^53 // 1) - 1, 1234567890123456789 }) do
      local n = math.tointeger(n)
      assert.equal(n, json.decode(json.encode(n)))
      assert.same({ a = { n, "x" } }, json.decode(json.encode({ a = { n, "x" } })))
    end
    -- digits inside strings are left alone, escaped quotes included
    assert.same({ 's"9007199254740993', 9007199254740993 },
                json.decode('["s\\"9007199254740993", 9007199254740993]'))
    -- floats stay floats
    assert.equal(12345678901234567.5, json.decode("12345678901234567.5"))
    assert.equal(1e300, json.decode("1e300"))
    local ok, err = pcall(json.decode, "[12345678901234567890]")
    assert.is_false(ok)
    assert.truthy(err:find("pf.json.decode: integer 12345678901234567890 is out of "
                           .. "range (Lua integers are 64-bit)", 1, true), err)
    ok, err = pcall(json.decode, "-9223372036854775809")
    assert.is_false(ok)
    ok, err = pcall(json.decode, '["\\u0001", 9007199254740993]')
    assert.is_false(ok)
    assert.truthy(err:find("cannot be decoded exactly", 1, true))
    assert.same({ "\1", 90071992547409 }, json.decode('["\\u0001", 90071992547409]'))
  end)

  it("rejects NaN and Infinity both ways", function()
    for _, text in ipairs({ "NaN", "[nan]", "Infinity", "-inf", "0x10" }) do
      local ok, err = pcall(json.decode, text)
      assert.is_false(ok, text)
      assert.truthy(err:find("^pf.json.decode: "), err)
    end
    assert.has_error(function() json.encode(0 / 0) end)
    assert.has_error(function() json.encode({ x = math.huge }) end)
  end)

  it("rejects invalid UTF-8 both ways", function()
    local ok, err = pcall(json.decode, '"ok \xff"')
    assert.is_false(ok)
    assert.truthy(err:find("pf.json.decode: invalid UTF-8 at byte 5", 1, true), err)
    ok, err = pcall(json.decode, '"\xed\xa0\x80"')   -- a surrogate's bytes
    assert.is_false(ok)
    ok, err = pcall(json.encode, { msg = "a\xc0\x80" })
    assert.is_false(ok)
    assert.truthy(err:find("pf.json.encode: invalid UTF-8 in a string (byte 2)", 1, true), err)
    ok, err = pcall(json.encode, { ["k\xff"] = 1 })
    assert.truthy(err:find("pf.json.encode: invalid UTF-8 in a key (byte 2)", 1, true), err)
    assert.equal("é ✓ 😀", json.decode(json.encode("é ✓ 😀")))
    assert.equal("😀", json.decode('"\\ud83d\\ude00"'))
  end)
end)

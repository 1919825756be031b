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

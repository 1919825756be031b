-- pf.read_file / pf.write_file on libuv's thread pool.
local pf = require "pocketflow"
local uv = require "luv"

local function rm_tree(path)
  local st = uv.fs_lstat(path)
  if st and st.type == "directory" then
    local req = uv.fs_scandir(path)
    while req do
      local name = uv.fs_scandir_next(req)
      if not name then break end
      rm_tree(path .. "/" .. name)
    end
    uv.fs_rmdir(path)
  elseif st then
    uv.fs_unlink(path)
  end
end

describe("pf files", function()
  local dir
  before_each(function() dir = assert(uv.fs_mkdtemp("/tmp/pf_fs_XXXXXX")) end)
  after_each(function() rm_tree(dir) end)

  it("writes and reads back", function()
    local p = dir .. "/a.txt"
    assert.equal(5, pf.write_file(p, "hello"))
    assert.equal("hello", pf.read_file(p))
  end)

  it("round-trips binary data and empty files", function()
    local bin = {}
    for i = 0, 255 do bin[#bin + 1] = string.char(i) end
    bin = table.concat(bin):rep(100)
    pf.write_file(dir .. "/b", bin)
    assert.equal(bin, pf.read_file(dir .. "/b"))
    pf.write_file(dir .. "/e", "")
    assert.equal("", pf.read_file(dir .. "/e"))
  end)

  it("replaces a file's contents", function()
    local p = dir .. "/r"
    pf.write_file(p, "a long first version")
    pf.write_file(p, "short")
    assert.equal("short", pf.read_file(p))
  end)

  it("handles big files", function()
    local big = ("0123456789"):rep(1000000)
    pf.write_file(dir .. "/big", big)
    assert.equal(big, pf.read_file(dir .. "/big"))
  end)

  it("raises with the path and the system's message", function()
    local ok, err = pcall(pf.read_file, dir .. "/missing")
    assert.is_false(ok)
    assert.truthy(err:find(dir .. "/missing", 1, true))
    assert.truthy(err:find("no such file or directory"))
    ok, err = pcall(pf.write_file, dir .. "/no/dir/x", "a")
    assert.is_false(ok)
    assert.truthy(err:find(dir .. "/no/dir/x", 1, true))
    ok, err = pcall(pf.read_file, dir)   -- a directory
    assert.is_false(ok)
    assert.truthy(err:find("directory"))
  end)

  it("checks its arguments", function()
    assert.has_error(function() pf.read_file() end)
    assert.has_error(function() pf.write_file(dir .. "/x") end)
  end)

  it("does many files concurrently", function()
    pf.run(function()
      local fns = {}
      for i = 1, 50 do
        fns[i] = function()
          pf.write_file(dir .. "/f" .. i, "file " .. i)
          return pf.read_file(dir .. "/f" .. i)
        end
      end
      local got = pf.gather(fns)
      for i = 1, 50 do assert.equal("file " .. i, got[i]) end
    end)
  end)

  it("lets a task be cancelled mid-read", function()
    pf.write_file(dir .. "/c", ("z"):rep(10000000))
    pf.run(function()
      local t = pf.spawn(function() return pf.read_file(dir .. "/c") end)
      pf.sleep(0)
      t:cancel()
      assert.has_error(function() t:wait() end)
    end)
    -- the pool still works after the cancelled request freed itself
    assert.equal(10000000, #pf.read_file(dir .. "/c"))
  end)
end)

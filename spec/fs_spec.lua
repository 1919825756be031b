-- pf.read_file / pf.write_file on libuv's thread pool.
local pf = require "pocketflow"
local uv = require "luv"

local rm_tree = require("support.leftovers").rm_tree

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

local left = require "support.leftovers"

describe("pf files refuse what could block the pool", function()
  local dir
  before_each(function() dir = assert(uv.fs_mkdtemp("/tmp/pf_fs_XXXXXX")) end)
  after_each(function()
    -- frees any pool thread still stuck in open() on the FIFO (the code
    -- before the fix); no reader means ENXIO, harmless.
    -- 2049: O_WRONLY | O_NONBLOCK on Linux, not to block here
    local fd = uv.fs_open(dir .. "/fifo", 2049, 0, nil)
    if fd then uv.fs_close(fd) end
    rm_tree(dir)
  end)

  it("raises at once on a FIFO with no writer, and the pool stays free", function()
    local fifo = dir .. "/fifo"
    assert.equal(0, os.execute("mkfifo " .. fifo) and 0)
    pf.write_file(dir .. "/plain", "still works")
    pf.run(function()
      -- more than the pool's 4 threads, each cancelled by its timeout if
      -- it blocks
      for _ = 1, 6 do
        local ok, err = pcall(pf.timeout, 0.1, pf.read_file, fifo)
        assert.is_false(ok)
        assert.truthy(err:find("pf.read_file: " .. fifo
          .. ": not a regular file (a FIFO)", 1, true), err)
      end
      local ok, err = pcall(pf.timeout, 0.1, pf.write_file, fifo, "x")
      assert.is_false(ok)
      assert.truthy(err:find(fifo, 1, true))
      assert.falsy(err:find("timeout"), err)
      -- 10 s: a stalled pool never answers
      assert.equal("still works", pf.timeout(10, pf.read_file, dir .. "/plain"))
    end)
  end)

  it("raises on devices and directories", function()
    local ok, err = pcall(pf.read_file, "/dev/zero")
    assert.is_false(ok)
    assert.truthy(err:find("pf.read_file: /dev/zero: not a regular file (a character device)", 1, true), err)
    ok, err = pcall(pf.write_file, "/dev/null", "x")
    assert.is_false(ok)
    assert.truthy(err:find("not a regular file (a character device)", 1, true), err)
    ok, err = pcall(pf.read_file, dir)
    assert.truthy(err:find("not a regular file (a directory)", 1, true), err)
  end)

  it("raises on a NUL byte in a path", function()
    local cases = {
      { pf.read_file, { "/etc/hostname\0junk" }, "pf.read_file" },
      { pf.write_file, { dir .. "/a\0b", "x" }, "pf.write_file" },
      { pf.stat, { "/etc\0x" }, "pf.stat" },
      { pf.list_dir, { "/\0x" }, "pf.list_dir" },
      { pf.mkdir, { dir .. "/\0x" }, "pf.mkdir" },
      { pf.remove, { dir .. "/\0x" }, "pf.remove" },
      { pf.rename, { dir .. "/a", dir .. "/b\0" }, "pf.rename" },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(c[1], table.unpack(c[2]))
      assert.is_false(ok)
      assert.truthy(err:find(c[3] .. ": the path contains a NUL byte", 1, true), err)
    end
    assert.is_nil(uv.fs_stat(dir .. "/a"))
  end)

  it("survives cancellation at random points", function()
    math.randomseed(1616)
    local rounds = os.getenv("PF_MODE") == "valgrind" and 15 or 60
    local data = ("y"):rep(3000000)
    pf.write_file(dir .. "/src", data)
    local fds0, list0 = left.fds(), left.fd_list()
    local mem
    for round = 1, rounds do
      pf.run(function()
        local ts = {}
        for i = 1, 6 do
          local kind = math.random(4)
          ts[i] = pf.spawn(function()
            if kind == 1 then return pf.read_file(dir .. "/src")
            elseif kind == 2 then return pf.write_file(dir .. "/w" .. i, data)
            elseif kind == 3 then return pf.list_dir(dir)
            else return pf.mkdir(dir .. "/d" .. i .. "/x/y", { parents = true }) end
          end)
        end
        if math.random(2) == 1 then pf.sleep(math.random() * 0.01) end
        for i = 1, 6 do
          if math.random(3) == 1 then pf.sleep(0) end
          ts[i]:cancel()
        end
      end)
      -- cancelled requests finish on the pool and close their files
      assert.equal(fds0, left.settle_fds(fds0, pf.sleep),
                   list0 .. "\nnow: " .. left.fd_list())
      collectgarbage("collect")
      if round == 5 then mem = collectgarbage("count") end
    end
    assert.equal(data, pf.read_file(dir .. "/src"))
    collectgarbage("collect")
    assert.is_true(collectgarbage("count") < mem + 256)
  end)
end)

describe("pf.stat, list_dir, mkdir, remove, rename", function()
  local dir
  before_each(function() dir = assert(uv.fs_mkdtemp("/tmp/pf_fs_XXXXXX")) end)
  after_each(function() rm_tree(dir) end)

  it("stat gives type, size, mtime and mode", function()
    pf.write_file(dir .. "/f", "12345")
    uv.fs_chmod(dir .. "/f", tonumber("640", 8))
    local st = pf.stat(dir .. "/f")
    assert.same({ "mode", "mtime", "size", "type" }, (function()
      local ks = {}
      for k in pairs(st) do ks[#ks + 1] = k end
      table.sort(ks)
      return ks
    end)())
    assert.equal("file", st.type)
    assert.equal(5, st.size)
    assert.equal(tonumber("640", 8), st.mode)
    assert.is_true(math.abs(st.mtime - os.time()) < 60)
    assert.equal("directory", pf.stat(dir).type)
    assert.equal("char", pf.stat("/dev/null").type)
    uv.fs_symlink(dir .. "/f", dir .. "/l")
    assert.equal("file", pf.stat(dir .. "/l").type)   -- follows links
    local ok, err = pcall(pf.stat, dir .. "/none")
    assert.is_false(ok)
    assert.truthy(err:find("pf.stat: " .. dir .. "/none: no such file or directory", 1, true))
  end)

  it("list_dir gives the sorted names, without . and ..", function()
    assert.same({}, pf.list_dir(dir))
    for _, n in ipairs({ "b", "a", "C", "sub", ".hidden" }) do
      pf.write_file(dir .. "/" .. n, "")
    end
    assert.same({ ".hidden", "C", "a", "b", "sub" }, pf.list_dir(dir))
    local ok, err = pcall(pf.list_dir, dir .. "/none")
    assert.truthy(err:find("pf.list_dir: " .. dir .. "/none: no such file or directory", 1, true))
    ok, err = pcall(pf.list_dir, dir .. "/a")
    assert.is_false(ok)
    assert.truthy(err:find("pf.list_dir: " .. dir .. "/a: not a directory", 1, true))
  end)

  it("mkdir makes one directory, or with parents = true the missing ones", function()
    assert.is_true(pf.mkdir(dir .. "/one"))
    assert.equal("directory", pf.stat(dir .. "/one").type)
    local ok, err = pcall(pf.mkdir, dir .. "/one")
    assert.truthy(err:find("pf.mkdir: " .. dir .. "/one: file already exists", 1, true))
    ok, err = pcall(pf.mkdir, dir .. "/x/y")
    assert.truthy(err:find("pf.mkdir: " .. dir .. "/x/y: no such file or directory", 1, true))
    assert.is_true(pf.mkdir(dir .. "/x/y//z/", { parents = true }))
    assert.equal("directory", pf.stat(dir .. "/x/y/z").type)
    assert.is_true(pf.mkdir(dir .. "/x/y/z", { parents = true }))  -- exists: fine
    pf.write_file(dir .. "/file", "")
    ok, err = pcall(pf.mkdir, dir .. "/file", { parents = true })
    assert.truthy(err:find("pf.mkdir: " .. dir .. "/file: file already exists", 1, true))
    ok, err = pcall(pf.mkdir, dir .. "/file/sub", { parents = true })
    assert.truthy(err:find("pf.mkdir: " .. dir .. "/file/sub: not a directory", 1, true))
    ok, err = pcall(pf.mkdir, dir .. "/q", { parent = true })
    assert.truthy(err:find("pf.mkdir: unknown option 'parent' (options: parents)", 1, true))
    assert.has_error(function() pf.mkdir(dir .. "/q", true) end)
    assert.has_error(function() pf.mkdir() end)
  end)

  it("remove removes a file or an empty directory", function()
    pf.write_file(dir .. "/f", "")
    pf.mkdir(dir .. "/d")
    pf.write_file(dir .. "/d/g", "")
    assert.is_true(pf.remove(dir .. "/f"))
    assert.is_nil(uv.fs_stat(dir .. "/f"))
    local ok, err = pcall(pf.remove, dir .. "/d")
    assert.truthy(err:find("pf.remove: " .. dir .. "/d: directory not empty", 1, true))
    pf.remove(dir .. "/d/g")
    assert.is_true(pf.remove(dir .. "/d"))
    assert.is_nil(uv.fs_stat(dir .. "/d"))
    ok, err = pcall(pf.remove, dir .. "/f")
    assert.truthy(err:find("pf.remove: " .. dir .. "/f: no such file or directory", 1, true))
  end)

  it("rename moves a file, replacing the target", function()
    pf.write_file(dir .. "/a", "A")
    pf.write_file(dir .. "/b", "B")
    assert.is_true(pf.rename(dir .. "/a", dir .. "/b"))
    assert.equal("A", pf.read_file(dir .. "/b"))
    assert.same({ "b" }, pf.list_dir(dir))
    local ok, err = pcall(pf.rename, dir .. "/a", dir .. "/c")
    assert.truthy(err:find("pf.rename: " .. dir .. "/a -> " .. dir
                           .. "/c: no such file or directory", 1, true))
    assert.has_error(function() pf.rename(dir .. "/b") end)
  end)

  it("run concurrently inside tasks", function()
    pf.run(function()
      local fns = {}
      for i = 1, 20 do
        fns[i] = function()
          pf.mkdir(dir .. "/t" .. i .. "/sub", { parents = true })
          pf.write_file(dir .. "/t" .. i .. "/sub/f", tostring(i))
          return pf.stat(dir .. "/t" .. i .. "/sub/f").size
        end
      end
      local sizes = pf.gather(fns)
      for i = 1, 20 do assert.equal(#tostring(i), sizes[i]) end
      assert.equal(20, #pf.list_dir(dir))
    end)
  end)
end)

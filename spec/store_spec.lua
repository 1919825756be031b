-- Durable-run stores: pf.sqlite (SQLite on a writer thread) and pf.memory.
local pf = require "pocketflow"
local core = require "pocketflow.core"

local MODE = os.getenv("PF_MODE") or "plain"
local SLOW = MODE ~= "plain"
local BIN = os.getenv("PF_BIN")
local B = core.serialize  -- checkpoints are pf.serialize blobs

local function count(dir)
  local n = 0
  local p = io.popen("ls -1 " .. dir)
  for _ in p:lines() do n = n + 1 end
  p:close()
  return n
end
local PID = core.store_proc()
local function threads() return count("/proc/" .. PID .. "/task") end
local function fds() return count("/proc/" .. PID .. "/fd") end

local util = require "support.util"
local rm_db, tmp_db, errmsg, write = util.rm_db, util.tmp_db, util.errmsg, util.write

-- the raw connection, for checks the API does not offer
local function sql(store, text)
  return pf.run(function()
    local res, err = store._b.h:exec("n", { sql = text, n = 0 })
    assert(res, err)
    return res[1]
  end)
end

local kinds = {
  { "pf.memory", function(opts) return pf.memory(opts) end },
  { "pf.sqlite", function(opts, path) return pf.sqlite(path or tmp_db(), opts) end },
}

for _, kind in ipairs(kinds) do
  local name, open = kind[1], kind[2]
  describe(name, function()
    local s
    before_each(function() s = open() end)
    after_each(function()
      if s._path then s:close() rm_db(s._path) end
    end)

    it("begins, saves, lists, reads back and finishes a run", function()
      assert.equal("inv-42", s:_begin("inv-42", { graph = "g1", meta = "m1" }))
      assert.is_nil(s:get("inv-42"))
      assert.same({}, s:history("inv-42"))
      assert.is_true(s:_save("inv-42", 1, "Flow.A", B("blob1")))
      assert.is_true(s:_save("inv-42", 2, "Flow.B", B("blob\0two")))
      local h = s:history("inv-42")
      assert.equal(2, #h)
      assert.same({ 1, "Flow.A" }, { h[1].step, h[1].path })
      assert.same({ 2, "Flow.B" }, { h[2].step, h[2].path })
      assert.is_true(h[1].t <= h[2].t and math.abs(h[2].t - os.time()) < 60)
      local c = s:get("inv-42")
      assert.same({ 2, "Flow.B", "blob\0two" }, { c.step, c.path, c.shared })
      assert.equal("blob1", s:get("inv-42", 1).shared)
      local runs = s:runs()
      assert.equal(1, #runs)
      assert.same({ "inv-42", "running", 2 }, { runs[1].id, runs[1].status, runs[1].step })
      assert.equal("number", type(runs[1].updated))
      assert.is_true(s:_finish("inv-42", "done", "m2"))
      assert.equal("done", s:runs{ status = "done" }[1].status)
      assert.same({}, s:runs{ status = "running" })
    end)

    it("refuses an existing id, a done run and a run this process holds", function()
      s:_begin("inv-42")
      assert.matches("run 'inv%-42' exists %(running%); use flow:resume$",
                     errmsg(s._begin, s, "inv-42"))
      assert.matches("run 'inv%-42' is running %(pid " .. core.store_proc() .. "%)$",
                     errmsg(s._acquire, s, "inv-42"))
      s:_save("inv-42", 1, "A", B("x"))
      s:_finish("inv-42", "interrupted", "meta")
      assert.matches("run 'inv%-42' exists %(interrupted%); use flow:resume$",
                     errmsg(s._begin, s, "inv-42"))
      local rec = s:_acquire("inv-42")
      assert.same({ "inv-42", "interrupted", 1, "meta" },
                  { rec.id, rec.status, rec.step, rec.meta })
      assert.same({ 1, "A", "x" }, { rec.checkpoint.step, rec.checkpoint.path, rec.checkpoint.shared })
      s:_finish("inv-42", "done")
      assert.matches("run 'inv%-42' is done$", errmsg(s._acquire, s, "inv-42"))
      assert.matches("no run 'nope'$", errmsg(s._acquire, s, "nope"))
      assert.matches("run 'inv%-42' is not held by this process$",
                     errmsg(s._save, s, "inv-42", 2, "A", "y"))
      assert.matches("run 'inv%-42' is not held by this process$",
                     errmsg(s._finish, s, "inv-42", "failed"))
    end)

    it("generates run ids", function()
      local a, b = s:_begin(), s:_begin()
      assert.matches("^%d%d%d%d%d%d%d%d%-%d%d%d%d%d%d%-%x+$", a)
      assert.not_equal(a, b)
      assert.matches("^%d+%-%d+%-%x+$", pf.store_id())
    end)

    it("keeps the graph and meta and the latest checkpoint for _acquire", function()
      s:_begin("r", { graph = "hash", meta = "\0\1meta" })
      s:_finish("r", "failed")
      local rec = s:_acquire("r")
      assert.same({ "failed", 0, "hash", "\0\1meta" }, { rec.status, rec.step, rec.graph, rec.meta })
      assert.is_nil(rec.checkpoint)
    end)

    it("get and history name what is missing", function()
      assert.matches("no run 'x'$", errmsg(s.history, s, "x"))
      assert.matches("no run 'x'$", errmsg(s.get, s, "x"))
      s:_begin("x")
      s:_save("x", 3, "P", B("b"))
      assert.matches("run 'x' has no checkpoint at step 2$", errmsg(s.get, s, "x", 2))
    end)

    it("forks a run from a checkpoint, leaving the original as it was", function()
      s:_begin("a", { graph = "g", meta = "m" })
      for i = 1, 3 do s:_save("a", i, "P" .. i, B("b" .. i)) end
      assert.equal("b", s:fork("a", 2, "b"))
      local rec = s:_acquire("b")
      assert.same({ "interrupted", 2, "g", "m" }, { rec.status, rec.step, rec.graph, rec.meta })
      assert.same({ 2, "P2", "b2" }, { rec.checkpoint.step, rec.checkpoint.path, rec.checkpoint.shared })
      assert.equal(1, #s:history("b"))
      assert.equal(3, #s:history("a"))
      assert.equal("b3", s:get("a").shared)
      assert.matches("running %(pid", errmsg(s._acquire, s, "a"))
      local c = s:fork("a")  -- latest, generated id
      assert.equal(3, s:get(c).step)
      assert.matches("run 'b' exists %(running%); use flow:resume$", errmsg(s.fork, s, "a", 1, "b"))
      assert.matches("run 'a' has no checkpoint at step 9$", errmsg(s.fork, s, "a", 9, "z"))
      assert.matches("no run 'q'$", errmsg(s.fork, s, "q", 1, "z"))
      s:_begin("empty")
      assert.matches("run 'empty' has no checkpoint$", errmsg(s.fork, s, "empty", nil, "z"))
    end)

    it("saves items one by one; fork copies those saved before its step; done drops them", function()
      s:_begin("a")
      s:_item("a", "k", 0, B("prep"))             -- step 0
      s:_save("a", 1, "P", B("c1"))
      s:_item("a", "k", 1, B("r1"))               -- after checkpoint 1
      s:_item("a", "k", 1, B("r1 again"))          -- replaces it
      s:_save("a", 2, "P", B("c2"))
      s:_item("a", "k", 2, B("r2"), { sync = false })
      s:_item("a", "other", 1, B("o"))
      local function items(id)
        local out = {}
        for _, it in ipairs(s:_items(id)) do out[it.batch .. it.idx] = it.blob end
        return out
      end
      assert.same({ k0 = B("prep"), k1 = B("r1 again"), k2 = B("r2"), other1 = B("o") },
                  items("a"))
      s:fork("a", 2, "f2")
      assert.same({ k0 = B("prep"), k1 = B("r1 again") }, items("f2"))
      s:fork("a", 1, "f1")
      assert.same({ k0 = B("prep") }, items("f1"))
      assert.matches("run 'f1' is not held by this process$",
                     errmsg(s._item, s, "f1", "k", 5, B("x")))
      assert.matches("idx must be an integer >= 0 %(got %-1%)$",
                     errmsg(s._item, s, "a", "k", -1, B("x")))
      s:_finish("a", "failed")
      assert.equal(4, #s:_items("a"))
      s:_acquire("a")
      s:_finish("a", "done")
      assert.same({}, s:_items("a"))
    end)

    it("keep = n bounds the checkpoints of each run", function()
      local k = open({ keep = 3 })
      k:_begin("a")
      k:_begin("b")
      for i = 1, 10 do k:_save("a", i, "P", B("a" .. i)) k:_save("b", i, "P", B("b" .. i)) end
      k:_save("a", 11, "P", B("a11"), { sync = false })
      for _, id in ipairs { "a", "b" } do
        local h = k:history(id)
        local steps = {}
        for i, c in ipairs(h) do steps[i] = c.step end
        assert.same(id == "a" and { 9, 10, 11 } or { 8, 9, 10 }, steps)
      end
      assert.matches("has no checkpoint at step 1$", errmsg(k.get, k, "a", 1))
      if k._path then k:close() rm_db(k._path) end
    end)

    it("raises on bad arguments, naming the argument and value", function()
      assert.matches("store:_begin: id must be a non%-empty string %(got number%)",
                     errmsg(s._begin, s, 5))
      assert.matches("store:_begin: graph must be a string %(got table%)",
                     errmsg(s._begin, s, "x", { graph = {} }))
      s:_begin("x")
      assert.matches("store:_save: step must be a positive integer %(got 0%)",
                     errmsg(s._save, s, "x", 0, "P", "b"))
      assert.matches("store:_save: step must be a positive integer %(got 1.5%)",
                     errmsg(s._save, s, "x", 1.5, "P", "b"))
      assert.matches("store:_save: blob must be a string %(got table%)",
                     errmsg(s._save, s, "x", 1, "P", {}))
      assert.matches("store:_save: sync must be a boolean %(got yes%)",
                     errmsg(s._save, s, "x", 1, "P", "b", { sync = "yes" }))
      assert.matches('store:_finish: status must be "done", "interrupted" or "failed" %(got running%)',
                     errmsg(s._finish, s, "x", "running"))
      assert.matches("store:runs: status must be", errmsg(s.runs, s, { status = "odd" }))
      assert.matches("store:get: step must be a positive integer %(got %-1%)",
                     errmsg(s.get, s, "x", -1))
      assert.matches(name .. ": keep must be a positive integer %(got 0%)", errmsg(open, { keep = 0 }))
      assert.matches(name .. ": keep must be a positive integer %(got 2.5%)", errmsg(open, { keep = 2.5 }))
      assert.matches(name .. ": unknown option 'kep'", errmsg(open, { kep = 1 }))
      assert.matches(name .. ": options must be a table %(got string%)", errmsg(open, "x"))
    end)

    it("works from inside tasks, and refuses calls once closed", function()
      pf.run(function()
        local ids = pf.gather {
          function() return s:_begin("t1") end,
          function() return s:_begin("t2") end,
        }
        assert.same({ "t1", "t2" }, ids)
        s:_save("t1", 1, "P", B("b"))
      end)
      assert.equal(1, #s:history("t1"))
      s:close()
      s:close()
      assert.matches("the store is closed", errmsg(s.runs, s))
      assert.matches("the store is closed", errmsg(s._save, s, "t1", 2, "P", "b", { sync = false }))
    end)

    if core.deserialize then
      it("decodes shared from the checkpoint", function()
        s:_begin("d")
        s:_save("d", 1, "P", core.serialize({ n = 1, t = { "x" } }))
        assert.same({ n = 1, t = { "x" } }, s:get("d").shared)
        s:_save("d", 2, "P", "\0garbage")
        assert.matches("run 'd' step 2: the checkpoint cannot be decoded: pf.deserialize: corrupt",
                       errmsg(s.get, s, "d"))
        s:_finish("d", "failed")
        -- refused before taking: the run stays as it was
        assert.matches("run 'd' step 2: the checkpoint cannot be decoded", errmsg(s._acquire, s, "d"))
        assert.equal("failed", s:runs()[1].status)
      end)
    end
  end)
end

describe("pf.sqlite", function()
  local path
  before_each(function() path = tmp_db() end)
  after_each(function() rm_db(path) end)

  it("raises naming the path when the file cannot be opened", function()
    assert.matches("^pf.sqlite: cannot open '/nonexistent/dir/x.db': unable to open database file",
                   errmsg(pf.sqlite, "/nonexistent/dir/x.db"))
    assert.matches("pf.sqlite: path must be a non%-empty string %(got nil%)", errmsg(pf.sqlite))
    assert.matches("pf.sqlite: busy_timeout must be", errmsg(pf.sqlite, path, { busy_timeout = -1 }))
  end)

  it("raises naming the path on a file of random bytes, and stays sane", function()
    math.randomseed(13)
    for round = 1, 5 do
      local t = {}
      for i = 1, 4096 * round do t[i] = string.char(math.random(0, 255)) end
      write(path, table.concat(t))
      assert.matches("pf.sqlite: cannot open '" .. path:gsub("%p", "%%%0") .. "': file is not a database",
                     errmsg(pf.sqlite, path))
    end
  end)

  it("reports a damaged database naming the path", function()
    local s = pf.sqlite(path)
    s:_begin("a")
    for i = 1, 30 do s:_save("a", i, "P", B(("x"):rep(5000))) end
    s:close()
    local f = assert(io.open(path, "r+b"))
    f:seek("set", 4096 * 2)
    f:write(("\255"):rep(4096 * 6))
    f:close()
    local ok, err = pcall(function()
      local s2 = pf.sqlite(path)
      local _ <close> = setmetatable({}, { __close = function() s2:close() end })
      for i = 1, 30 do s2:get("a", i) end
      return s2:history("a")
    end)
    assert.is_false(ok)
    assert.matches(path:gsub("%p", "%%%0"), tostring(err))
  end)

  it("refuses a file of a newer store format", function()
    local s = pf.sqlite(path)
    sql(s, "PRAGMA user_version = 9")
    s:close()
    assert.matches("cannot open '.*': store format 9; this pocketflow reads format 2 or older",
                   errmsg(pf.sqlite, path))
  end)

  it("writes format 2 with WAL and synchronous=NORMAL", function()
    local s = pf.sqlite(path)
    assert.equal(2, sql(s, "PRAGMA user_version")[1][1])
    assert.equal("wal", sql(s, "PRAGMA journal_mode")[1][1])
    assert.equal(1, sql(s, "PRAGMA synchronous")[1][1])
    s:close()
  end)

  it("opens a format 1 file, its runs kept, and adds the items table", function()
    local s = pf.sqlite(path)
    s:_begin("old")
    s:_save("old", 1, "P", B({ v = 1 }))
    sql(s, "DROP TABLE items")
    sql(s, "PRAGMA user_version = 1")
    s:close()
    s = pf.sqlite(path)
    assert.equal(2, sql(s, "PRAGMA user_version")[1][1])
    assert.same({ v = 1 }, s:get("old").shared)
    s:_item("old", "b", 1, B("x"))
    assert.equal(1, #s:_items("old"))
    s:close()
  end)

  it("leaves no thread, fd or handle behind, after close and at GC", function()
    local s0 = pf.sqlite(path)  -- warm: libuv's own threads, if any
    s0:close()
    collectgarbage()
    local t0, f0 = threads(), fds()
    local stores = {}
    for i = 1, 5 do stores[i] = pf.sqlite(path) end
    assert.equal(t0 + 5, threads())
    stores[1]:_begin("a")
    stores[1]:_save("a", 1, "P", B("x"), { sync = false })
    stores[1]:close()
    for i = 2, 5 do stores[i]:_save("a", 1, "P", B("x"), { sync = false }) end
    local warned = {}
    local old = pf.on_warning
    pf.on_warning = function(m) warned[#warned + 1] = m end
    stores = nil
    -- anchored while their saves are in flight: those complete in the
    -- loop, then GC closes the stores and the next turn their handles
    -- (however long the saves take on a loaded machine, under valgrind)
    for _ = 1, 500 do
      pf.run(function() pf.sleep(0.02) end)
      collectgarbage()
      collectgarbage()
      pf.run(function() pf.sleep(0.01) end)
      if threads() == t0 then break end
    end
    pf.on_warning = old
    assert.equal(t0, threads())
    -- another part of the process may hold an fd for a moment: wait it out
    local n = fds()
    for _ = 1, 50 do
      if n <= f0 then break end
      pf.run(function() pf.sleep(0.02) end)
      n = fds()
    end
    assert.is_true(n <= f0, n .. " fds, " .. f0 .. " before")
    -- this process holds 'a': the others' saves replaced step 1 quietly
    assert.same({}, warned)
    -- a handle left open would be a leak of its memory under valgrind/ASan
  end)

  it("hides its handle from luv's uv.walk", function()
    local uv = require "luv"
    local s = pf.sqlite(path)
    s:_begin("w")
    s:_save("w", 1, "P", B("x"), { sync = false })
    local seen = 0
    uv.walk(function() seen = seen + 1 end)  -- crashed on a handle not luv's
    assert.is_number(seen)
    s:close()
  end)

  it("warns through pf.on_warning when an async save fails", function()
    local s = pf.sqlite(path)
    local warned = {}
    local old = pf.on_warning
    pf.on_warning = function(m) warned[#warned + 1] = m end
    s:_save("nobody", 1, "P", B("x"), { sync = false })
    s:close()
    pf.on_warning = old
    assert.equal(1, #warned)
    assert.matches("store '.*': a checkpoint save failed: run 'nobody' is not held by this process",
                   warned[1])
  end)

  it("sync waits for the commit; async does not wait and keeps the order", function()
    local s, other = pf.sqlite(path), pf.sqlite(path)
    s:_begin("r")
    pf.run(function()
      local ran = false
      pf.spawn(function() ran = true end)
      s:_save("r", 1, "P", B(("a"):rep(1000000)), { sync = false })
      assert.is_false(ran)       -- returned without waiting
      for i = 2, 20 do s:_save("r", i, "P", B("a" .. i), { sync = false }) end
      s:_save("r", 21, "P", B("sync"))
      assert.is_true(ran)        -- waited
      -- committed: another connection sees it, and every async one before it
      assert.equal("sync", other:get("r").shared)
      assert.equal(21, #other:history("r"))
      s:_save("r", 22, "P", B(("z"):rep(2000000)), { sync = false })
    end)
    s:close()                    -- drains the last async save
    assert.equal(22, other:get("r").step)
    assert.equal(2000000, #other:get("r").shared)
    other:close()
  end)

  it("never blocks the loop: a ticker keeps ticking through big sync saves", function()
    local s = pf.sqlite(path)
    s:_begin("big")
    local N = SLOW and 150 or 2000
    local blob = B(("b"):rep(100 * 1024))
    local ticks, gap, done = 0, 0, false
    local t0 = pf.now()
    pf.run(function()
      pf.spawn(function()
        local last = pf.now()
        while not done do
          pf.sleep(0.005)
          local now = pf.now()
          if now - last > gap then gap = now - last end
          last = now
          ticks = ticks + 1
        end
      end)
      for i = 1, N do s:_save("big", i, "P", blob) end
      done = true
    end)
    local elapsed = pf.now() - t0
    s:close()
    assert.is_true(gap < (SLOW and 1.0 or 0.25), ("longest gap %.3f s"):format(gap))
    -- at least a fifth of the ticks a free loop would make (a twentieth
    -- when slow: valgrind runs one thread at a time, so the writer's
    -- SQLite work and the loop take turns; the gap bound above still holds)
    assert.is_true(ticks >= elapsed / 0.005 / (SLOW and 20 or 5),
                   ("%d ticks in %.2f s"):format(ticks, elapsed))
  end)

  it("survives tasks cancelled in the middle of sync saves", function()
    local s = pf.sqlite(path, { keep = 5 })
    s:_begin("c")
    math.randomseed(42)
    local rounds = SLOW and 40 or 300
    local step, mid = 0, 0
    pf.run(function()
      for _ = 1, rounds do
        local started, done = 0, 0
        local t = pf.spawn(function()
          for _ = 1, 5 do
            step = step + 1
            started = started + 1
            s:_save("c", step, "P", B(("c"):rep(math.random(1, 50000))))
            done = done + 1
          end
        end)
        if math.random() < 0.3 then pf.sleep(0) else pf.sleep(math.random() * 0.003) end
        if started > done then mid = mid + 1 end  -- cancelled while its save waits
        t:cancel()
      end
    end)
    assert.is_true(mid >= rounds // 4, mid .. " of " .. rounds .. " cancelled mid-save")
    step = step + 1
    s:_save("c", step, "P", B("last"))
    assert.equal("last", s:get("c").shared)
    assert.is_true(#s:history("c") <= 5)
    assert.equal("ok", sql(s, "PRAGMA integrity_check")[1][1])
    s:close()
  end)
end)

describe("pf.sqlite across processes", function()
  local path, script
  before_each(function()
    path = tmp_db()
    script = os.tmpname() .. "_store_child.lua"
  end)
  after_each(function()
    rm_db(path)
    os.remove(script)
  end)

  -- processes whose argv has the script (ps hangs under ASan's LD_PRELOAD)
  local function children()
    local n = 0
    local p = io.popen("ls -1 /proc")
    for pid in p:lines() do
      local f = pid:match("^%d+$") and io.open("/proc/" .. pid .. "/cmdline", "rb")
      if f then
        if (f:read("a") or ""):find(script, 1, true) then n = n + 1 end
        f:close()
      end
    end
    p:close()
    return n
  end

  it("refuses a run a live process holds, naming its pid; takes it once the process is killed",
     function()
    write(script, ([[
      local pf = require "pocketflow"
      local B = pf.serialize
      local s = pf.sqlite(%q)
      s:_begin("x")
      s:_save("x", 1, "P", B("child"))
      io.stdout:write("held\n") io.stdout:flush()
      pf.sleep(60)
    ]]):format(path))
    local s = pf.sqlite(path)
    local pid
    pf.run(function()
      local child = pf.spawn(function() return pf.exec({ BIN, script }, { timeout = 120 }) end)
      -- until the child's checkpoint is committed (it holds the run by then)
      local deadline = pf.now() + 60
      repeat
        pf.sleep(0.05)
        local ok, c = pcall(s.get, s, "x")
      until (ok and c) or pf.now() > deadline
      local ok, e = pcall(s._acquire, s, "x")
      assert.is_false(ok)
      local err = tostring(e)
      pid = tonumber(err:match("run 'x' is running %(pid (%d+)%)$"))
      assert.is_number(pid)
      assert.not_equal(core.store_proc(), pid)
      local f = io.open("/proc/" .. pid .. "/cmdline")
      assert.truthy(f and f:read("a"):find(script, 1, true))
      if f then f:close() end
      assert.is_true(require("luv").kill(pid, "sigkill") == 0)
      local r = child:wait()
      assert.equal(9, r.signal)
    end)
    local rec = s:_acquire("x")
    assert.same({ "running", 1, "child" }, { rec.status, rec.step, rec.checkpoint.shared })
    s:_save("x", 2, "P", B("parent"))
    s:_finish("x", "done")
    s:close()
    assert.equal(0, children())
  end)

  it("a program that ends without close still writes its async saves", function()
    write(script, ([[
      local pf = require "pocketflow"
      local B = pf.serialize
      local s = pf.sqlite(%q)
      s:_begin("e")
      for i = 1, 50 do s:_save("e", i, "P", B(("e"):rep(100000)), { sync = false }) end
    ]]):format(path))
    local r = pf.exec({ BIN, script }, { timeout = 120 })
    assert.equal(0, r.code, r.stderr)
    assert.equal("", r.stderr)
    local s = pf.sqlite(path)
    assert.equal(50, s:get("e").step)
    s:close()
  end)

  it("a state closed while a task waits on a save exits cleanly", function()
    write(script, ([[
      local pf = require "pocketflow"
      local B = pf.serialize
      local s = pf.sqlite(%q)
      s:_begin("x")
      pf.run(function()
        pf.spawn(function() s:_save("x", 1, "P", B(("x"):rep(5000000))) end)
        pf.sleep(0)
        os.exit(3, true)
      end)
    ]]):format(path))
    local r = pf.exec({ BIN, script }, { timeout = 120 })
    assert.same({ 3, 0, "" }, { r.code, r.signal, r.stderr })
    local s = pf.sqlite(path)
    assert.equal(1, s:get("x").step)  -- drained before the state closed
    s:close()
  end)

  it("tools/runs.lua lists runs, history and a checkpoint", function()
    local s = pf.sqlite(path)
    s:_begin("inv-1")
    s:_save("inv-1", 1, "Flow.A", B("one"))
    s:_save("inv-1", 2, "Flow.B", B("two"))
    s:_finish("inv-1", "interrupted")
    pf.sleep(0.01)  -- newer
    s:_begin("inv-2")
    s:_finish("inv-2", "done")
    s:close()
    local tool = os.getenv("PF_SRC") .. "/tools/runs.lua"
    local function runs(...)
      return pf.exec({ BIN, tool, path, ... }, { timeout = 60 })
    end
    local r = runs()
    assert.equal(0, r.code, r.stderr)
    assert.matches("^ID%s+STATUS%s+STEP%s+UPDATED\ninv%-2%s+done%s+0%s+%d%d%d%d%-%d%d%-%d%d [%d:]+Z\n" ..
                   "inv%-1%s+interrupted%s+2%s+", r.stdout)
    r = runs("list", "done")
    assert.equal(2, select(2, r.stdout:gsub("\n", "")))
    r = runs("history", "inv-1")
    assert.matches("^STEP%s+PATH%s+TIME\n1%s+Flow.A%s+[^\n]+\n2%s+Flow.B%s+[^\n]+\n$", r.stdout)
    r = runs("show", "inv-1", "1")
    assert.matches("^run inv%-1, step 1, next Flow.A, saved [^,]+, %d+ bytes\nshared = \"one\"\n$", r.stdout)
    r = runs("show", "nope")
    assert.same({ 1, "runs: no run 'nope'\n" }, { r.code, r.stderr })
    r = runs("frob")
    assert.equal(2, r.code)
    assert.matches("^usage: pocketflow tools/runs.lua DB", r.stderr)
    r = pf.exec({ BIN, tool, path .. ".missing" }, { timeout = 60 })
    assert.same({ 1, "runs: no such file: " .. path .. ".missing\n" }, { r.code, r.stderr })
  end)

  it("two processes writing at once leave a consistent database", function()
    local N = SLOW and 150 or 500
    write(script, ([[
      local pf = require "pocketflow"
      local B = pf.serialize
      local s = pf.sqlite(%q, { keep = 1000 })
      s:_begin("child")
      for i = 1, %d do s:_save("child", i, "C", B(("c"):rep(i * 10)), { sync = i %% 2 == 0 }) end
      s:_finish("child", "done")
      s:close()
    ]]):format(path, N))
    local s = pf.sqlite(path, { keep = 1000 })
    pf.run(function()
      local child = pf.spawn(function() return pf.exec({ BIN, script }, { timeout = 300 }) end)
      s:_begin("parent")
      for i = 1, N do s:_save("parent", i, "P", B(("p"):rep(i * 10))) end
      s:_finish("parent", "done")
      local r = child:wait()
      assert.equal(0, r.code, r.stderr)
    end)
    assert.equal("ok", sql(s, "PRAGMA integrity_check")[1][1])
    for _, id in ipairs { "child", "parent" } do
      local h = s:history(id)
      assert.equal(N, #h)
      for i = 1, N do assert.equal(i, h[i].step) end
      assert.equal(N * 10, #s:get(id).shared)
    end
    assert.equal(2, #s:runs{ status = "done" })
    s:close()
  end)
end)

-- floor for pbflow N: N plain coroutines, each making the same 3 method
-- calls that read self.params and yield once, driven round-robin by a
-- plain ready queue (one turn per yield, as pf.sleep(0) gives).
local B = require "workloads.lib"
local N = B.n(100000)

local sets = {}
for i = 1, N do sets[i] = { i = i } end

local yield, create, resume, status =
  coroutine.yield, coroutine.create, coroutine.resume, coroutine.status

local Step = {}
Step.__index = Step
function Step:prep() return self.params.i end
function Step:exec(i)
  yield()
  return i
end
function Step:post(shared, _, i) shared.sum = shared.sum + i end

local shared = { sum = 0 }
local t0 = B.clock()
local ready = {}
for i = 1, N do
  ready[i] = create(function()
    local nodes = { setmetatable({ params = sets[i] }, Step),
                    setmetatable({ params = sets[i] }, Step),
                    setmetatable({ params = sets[i] }, Step) }
    for k = 1, 3 do
      local s = nodes[k]
      local p = s:prep(shared)
      s:post(shared, p, s:exec(p))
    end
  end)
end
local n = N
while n > 0 do
  local nxt, m = {}, 0
  for k = 1, n do
    local co = ready[k]
    assert(resume(co))
    if status(co) ~= "dead" then m = m + 1; nxt[m] = co end
  end
  ready, n = nxt, m
end
local dt = B.clock() - t0
B.check(shared.sum == 3 * N * (N + 1) // 2, "wrong sum")
B.report(dt)

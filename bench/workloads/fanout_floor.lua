-- floor for fanout N: N plain coroutines created, each resumed twice (the
-- first resume runs to the yield that stands for the sleep, the second
-- returns x * 2 into a results array). All N are alive at once, as the
-- engine's items are while they sleep.
local B = require "workloads.lib"
local N = B.n(1000000)

local items = {}
for i = 1, N do items[i] = i end

local yield, create, resume = coroutine.yield, coroutine.create, coroutine.resume
local function body(x)
  yield()
  return x * 2
end

local t0 = B.clock()
local cos, res = {}, {}
for i = 1, N do
  local co = create(body)
  resume(co, items[i])
  cos[i] = co
end
for i = 1, N do
  local _, r = resume(cos[i])
  res[i] = r
  cos[i] = false
end
local dt = B.clock() - t0
B.check(#res == N and res[N] == 2 * N, "wrong results")
B.report(dt)

-- A worker process of spec/queue_spec.lua:
--   pocketflow spec/support/queue_worker.lua URL NAME LEASE VARIANT CONC MARKER [MAX_DELIVERIES]
-- (the marker only makes it findable by support.leftovers)
local pf = require "pocketflow"
local qf = require "support.queueflow"
local url, name, lease, variant, conc = arg[1], arg[2], tonumber(arg[3]), arg[4], tonumber(arg[5])
local flow, q = qf.build{ url = url, name = name, lease = lease, variant = variant,
                          max_deliveries = math.tointeger(tonumber(arg[7])) }
io.stderr:write("worker up\n")
pf.work(q, flow, { concurrency = math.tointeger(conc) })

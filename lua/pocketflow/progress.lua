-- pocketflow.progress: a subscriber of the bus's progress events. On a
-- terminal (stderr) one redrawn line per running batch, at most 10 times
-- a second, then a summary line; elsewhere that line every 10 s and at
-- the end; "json": a JSON object per update; a function: called with p.
local core = require "pocketflow.core"
local events = require "pocketflow.events"

local floor, format, huge = math.floor, string.format, math.huge

local M = {}

M.redraw_every = 0.1     -- seconds between two redraws on a terminal
M.plain_every = 10       -- seconds between two lines elsewhere

-- ------------------------------------------------------ pure formatting

-- 24 -> "0:24", 3725 -> "1:02:05"; nil, NaN or infinite -> "?:??"
function M.format_time(s)
  if type(s) ~= "number" or s ~= s or s == huge or s < 0 then return "?:??" end
  s = floor(s + 0.5)
  local h, m = s // 3600, s % 3600 // 60
  if h > 0 then return format("%d:%02d:%02d", h, m, s % 60) end
  return format("%d:%02d", m, s % 60)
end

-- items per second: "41.2/s", "1234/s"
function M.format_rate(r)
  if type(r) ~= "number" or r ~= r or r == huge or r < 0 then r = 0 end
  if r >= 100 then return format("%.0f/s", r) end
  return format("%.1f/s", r)
end

-- whole percent, rounded down: 999/1000 is 99%, never 100% before the end
function M.format_percent(done, total)
  if type(total) ~= "number" or total <= 0 then return "100%" end
  local p = floor(100 * done / total)
  if p > 100 then p = 100 end
  return format("%d%%", p)
end

-- the line of a batch; final: elapsed time, else eta
function M.line(p, final)
  local done, total = p.done or 0, p.total
  local parts = { tostring(p.node or "batch") }
  if total then
    parts[#parts + 1] = format("%d/%d", done, total)
    parts[#parts + 1] = M.format_percent(done, total)
  else
    parts[#parts + 1] = format("%d", done)
  end
  parts[#parts + 1] = M.format_rate(p.rate)
  if final then
    parts[#parts + 1] = M.format_time(p.elapsed)
  elseif total then
    parts[#parts + 1] = "eta " .. M.format_time(p.eta)
  end
  if (p.failed or 0) > 0 then parts[#parts + 1] = format("failed %d", p.failed) end
  return table.concat(parts, " ")
end

-- the terminal's line: a bar after the name; colour unless NO_COLOR
function M.bar_line(p, final, width, color)
  local line = M.line(p, final)
  if final or not p.total or p.total <= 0 then return line end
  width = width or 20
  local fill = floor(width * (p.done or 0) / p.total)
  if fill > width then fill = width end
  local bar = string.rep("#", fill) .. string.rep("-", width - fill)
  if color then bar = "\27[32m" .. bar .. "\27[0m" end
  local name = tostring(p.node or "batch")
  return name .. " [" .. bar .. "]" .. line:sub(#name + 1)
end

-- PF_PROGRESS=0|1|json over the mode given
function M.resolve(mode, env)
  env = env or os.getenv("PF_PROGRESS")
  if env == "0" then return false end
  if env == "1" then return mode == nil and true or (mode or true) end
  if env == "json" then return "json" end
  if mode == nil then return false end
  return mode
end

-- ---------------------------------------------------------- the update

-- p from a progress event: rate, eta and elapsed computed when missing
local function p_of(state, ev)
  local p = { node = ev.node, path = ev.path, done = ev.done or 0, failed = ev.failed or 0,
              total = ev.total, in_flight = ev.in_flight or 0 }
  p.elapsed = ev.elapsed or (ev.t - state.t0)
  p.rate = ev.rate or (p.elapsed > 0 and p.done / p.elapsed or 0)
  if ev.eta then p.eta = ev.eta
  elseif p.total and p.rate > 0 then p.eta = (p.total - p.done) / p.rate end
  return p
end

local function is_final(ev)
  if ev.final ~= nil then return ev.final == true end
  return ev.total ~= nil and (ev.done or 0) >= ev.total
end

local json
local function json_line(p, final)
  json = json or require "pocketflow.json"
  local o = {}
  for k, v in pairs(p) do
    if type(v) ~= "number" or (v == v and v ~= huge) then o[k] = v end
  end
  o.final = final
  return json.encode(o) .. "\n"
end

local Bars = {}
Bars.__index = Bars

local shown = setmetatable({}, { __mode = "k" })  -- terminal renderers with lines up

function Bars:clear()
  if self.lines == 0 then return end
  local out = { "\r\27[K" }
  for _ = 2, self.lines do out[#out + 1] = "\27[1A\27[K" end
  self.write(table.concat(out))
  self.lines = 0
  shown[self] = nil
end

function Bars:draw()
  self:clear()
  local out = {}
  for i = 1, #self.order do
    local st = self.order[i]
    out[i] = M.bar_line(st.p, false, 20, self.color)
  end
  if #out == 0 then return end
  self.write(table.concat(out, "\n"))
  self.lines = #out
  shown[self] = true
  self.last_draw = self.clock()
end

function Bars:finish(key, st)
  self.states[key] = nil
  for i = #self.order, 1, -1 do
    if self.order[i] == st then table.remove(self.order, i) end
  end
end

function Bars:tty_update(key, st, final)
  if final then
    self:clear()
    self.write(M.line(st.p, true) .. "\n")
    self:finish(key, st)
    self:draw()
  elseif self.clock() - self.last_draw >= M.redraw_every or self.lines ~= #self.order then
    self:draw()
  end
end

function Bars:plain_update(key, st, final)
  local t = self.clock()
  if final then
    self.write(M.line(st.p, true) .. "\n")
    self:finish(key, st)
  elseif t - st.last_line >= M.plain_every then
    self.write(M.line(st.p, false) .. "\n")
    st.last_line = t
  end
end

function Bars:handle(ev)
  if self.own_span and ev.span_id ~= self.span_id then return end
  local key = ev.span_id or tostring(ev.path or ev.node)
  local st = self.states[key]
  if st == nil then
    st = { t0 = ev.t, last_line = self.clock() }
    self.states[key] = st
    self.order[#self.order + 1] = st
  end
  local final = is_final(ev)
  st.p = p_of(st, ev)
  local mode = self.mode
  if type(mode) == "function" then
    if final then self:finish(key, st) end
    return mode(st.p)
  elseif mode == "json" then
    if final then self:finish(key, st) end
    return self.write(json_line(st.p, final))
  elseif self.tty then
    return self:tty_update(key, st, final)
  end
  return self:plain_update(key, st, final)
end

function Bars:close()
  if self.closed then return end
  self.closed = true
  self.sub:off()
  if self.tty then self:clear() end
end

-- new(mode, opts): mode true | "json" | function(p); opts.run_id,
-- opts.write (default: stderr), opts.tty, opts.color, opts.clock. Returns
-- nil when PF_PROGRESS turns it off.
function M.new(mode, opts)
  opts = opts or {}
  mode = M.resolve(mode, opts.env)
  if not mode then return nil end
  if mode ~= true and mode ~= "json" and type(mode) ~= "function" then
    error(("progress must be true, \"json\" or a function (got %s)"):format(
      type(mode) == "string" and format("%q", mode) or type(mode)), 2)
  end
  local tty = opts.tty
  if tty == nil then tty = core.isatty(2) end
  local color = opts.color
  if color == nil then
    local nc = os.getenv("NO_COLOR")
    color = tty and (nc == nil or nc == "")
  end
  local self = setmetatable({
    mode = mode, tty = tty, color = color, states = {}, order = {}, lines = 0,
    own_span = opts.own_span,   -- a batch's own bars: span_id set by the bus
    last_draw = -huge, clock = opts.clock or core.now,
    write = opts.write or function(s) io.stderr:write(s) end,
  }, Bars)
  self.sub = events.subscribe(function(ev) return self:handle(ev) end, { "progress" },
                              opts.run_id, 2)
  return self
end

-- What pf.on_warning output goes through: the bars are cleared, the
-- warning printed, the bars drawn again, so that no line is torn.
function M.around_warning(fn, msg)
  if next(shown) == nil then return fn(msg) end
  local up = {}
  for r in pairs(shown) do
    up[#up + 1] = r
    r:clear()
  end
  local ok, err = pcall(fn, msg)
  for i = 1, #up do up[i]:draw() end
  if not ok then error(err, 0) end
end

return M

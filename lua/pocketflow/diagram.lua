-- pocketflow.diagram: flow:to_mermaid(opts) and flow:to_dot(opts).
-- The graph is read from the flows as they are (start_node, successors)
-- and written as text; nothing runs and no network is used. The text is
-- the same for the same graph in every process: nodes are numbered in
-- the order a walk from start_node meets them, successors taken in the
-- byte order of their actions, and no table is ever iterated with pairs
-- to produce output.
local core = require "pocketflow.core"

local kinds = core.kinds

local function kind_of(x)
  local mt = type(x) == "table" and getmetatable(x)
  return type(mt) == "table" and rawget(mt, "__pfkind") or nil
end

local function is_flow_kind(k)
  return k == kinds.flow or k == kinds.batch_flow or k == kinds.parallel_batch_flow
end

-- Section 5's name: the name option, else the class name.
local function node_name(node)
  local name = rawget(node, "name")
  if type(name) == "string" then return name end
  name = node.__name
  if type(name) == "string" then return name end
  return "Node"
end

-- byte order, whatever the locale (Lua's < on strings uses strcoll)
local function bytes_less(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = a:byte(i), b:byte(i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

local function sorted_actions(node)
  local succ = rawget(node, "successors")
  local actions = {}
  if type(succ) ~= "table" then return actions, succ end
  for action in pairs(succ) do
    if type(action) == "string" then actions[#actions + 1] = action end
  end
  table.sort(actions, bytes_less)
  return actions, succ
end

-- invalid UTF-8 bytes become U+FFFD, so both formats get valid text
local function valid_utf8(s)
  local out, i = {}, 1
  while true do
    local ok, bad = utf8.len(s, i)
    if ok then break end
    out[#out + 1] = s:sub(i, bad - 1)
    out[#out + 1] = "\u{FFFD}"
    i = bad + 1
  end
  if i == 1 then return s end
  out[#out + 1] = s:sub(i)
  return table.concat(out)
end

-- ----------------------------------------------------------- the model
-- A scope is one drawn flow: { items, edges }, its nodes in walk order.
-- An item is one drawing of a node in one scope (a node reachable from
-- two flows is drawn in each): { id = "n7", num = 7, node, kind, label,
-- scope = the inner scope if it is a flow drawn opened }. An edge is
-- { from = item, to = item, action }.

local function check_opts(fname, opts)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then
    error(("%s: options must be a table (got %s)"):format(fname, type(opts)), 0)
  end
  for k in pairs(opts) do
    if k ~= "direction" and k ~= "depth" and k ~= "marks" then
      error(("%s: unknown option '%s'"):format(fname, tostring(k)), 0)
    end
  end
  local dir = opts.direction
  if dir == nil then dir = "TD" end
  if dir ~= "TD" and dir ~= "TB" and dir ~= "BT" and dir ~= "LR" and dir ~= "RL" then
    error(("%s: direction must be one of TD, TB, BT, LR, RL (got %s)"):format(fname, tostring(dir)), 0)
  end
  local depth = opts.depth
  if depth == nil then depth = math.huge end
  if type(depth) ~= "number" or not (depth >= 0) then
    error(("%s: depth must be a non-negative number (got %s)"):format(fname, tostring(depth)), 0)
  end
  local marks = opts.marks
  if marks ~= nil then
    if type(marks) ~= "table" then
      error(("%s: marks must be a table (got %s)"):format(fname, type(marks)), 0)
    end
    for node, mark in pairs(marks) do
      if kind_of(node) == nil then
        error(("%s: marks keys must be pocketflow nodes (got %s)"):format(fname, type(node)), 0)
      end
      if mark ~= "done" and mark ~= "current" and mark ~= "failed" then
        error(("%s: marks[%s] must be \"done\", \"current\" or \"failed\" (got %s)"):format(
          fname, node_name(node), tostring(mark)), 0)
      end
    end
  end
  return dir, depth, marks or {}
end

-- Builds the drawing of flow: returns the top scope. Names are given in
-- the same order as ids; a repeated name gets #2, #3 by first drawing.
local function build(fname, flow, depth)
  local ids, labels, counts = 0, {}, {}
  local open = {}   -- flows being expanded, to draw a flow inside itself once

  local function label_of(node)
    local l = labels[node]
    if l == nil then
      local name = node_name(node)
      local n = (counts[name] or 0) + 1
      counts[name] = n
      l = n == 1 and name or ("%s#%d"):format(name, n)
      labels[node] = l
    end
    return l
  end

  local scope_of
  -- the nodes of one flow in walk order: breadth first from start
  local function walk(start)
    local order, seen, head = { start }, { [start] = true }, 1
    while head <= #order do
      local node = order[head]
      head = head + 1
      local actions, succ = sorted_actions(node)
      for _, action in ipairs(actions) do
        local nxt = succ[action]
        if kind_of(nxt) == nil then
          error(("%s: %s's successor for '%s' is not a pocketflow node (got %s)"):format(
            fname, node_name(node), action, type(nxt)), 0)
        end
        if not seen[nxt] then
          seen[nxt] = true
          order[#order + 1] = nxt
        end
      end
    end
    return order
  end

  scope_of = function(flow_node, level)
    open[flow_node] = true
    local scope = { items = {}, edges = {} }
    local item_of = {}
    for _, node in ipairs(walk(rawget(flow_node, "start_node"))) do
      ids = ids + 1
      local kind = kind_of(node)
      local item = { id = "n" .. ids, num = ids, node = node, kind = kind, label = label_of(node) }
      if is_flow_kind(kind) and level + 1 <= depth and not open[node]
         and kind_of(rawget(node, "start_node")) ~= nil then
        item.scope = scope_of(node, level + 1)
      end
      item_of[node] = item
      scope.items[#scope.items + 1] = item
    end
    for _, item in ipairs(scope.items) do
      local actions, succ = sorted_actions(item.node)
      for _, action in ipairs(actions) do
        scope.edges[#scope.edges + 1] = { from = item, to = item_of[succ[action]], action = action }
      end
    end
    open[flow_node] = nil
    return scope
  end

  if kind_of(rawget(flow, "start_node")) == nil then return { items = {}, edges = {} } end
  return scope_of(flow, 0)
end

local function checked(fname, flow, opts)
  if not is_flow_kind(kind_of(flow)) then
    error(("%s: expected a flow (got %s)"):format(fname, type(flow)), 0)
  end
  local dir, depth, marks = check_opts(fname, opts)
  return build(fname, flow, depth), dir, marks
end

-- the checks raise without a position; this gives the caller's
local function prepare(fname, flow, opts)
  local ok, scope, dir, marks = pcall(checked, fname, flow, opts)
  if not ok then error(scope, 3) end
  return scope, dir, marks
end

-- every edge of every scope, outer scopes first
local function all_edges(scope, out)
  out = out or {}
  for _, e in ipairs(scope.edges) do out[#out + 1] = e end
  for _, item in ipairs(scope.items) do
    if item.scope then all_edges(item.scope, out) end
  end
  return out
end

-- The inner nodes standing for a drawn flow where an edge cannot end at
-- its subgraph or cluster: it is entered at its start, and left from the
-- node the walk met last among those without successors.
local function entry(item)
  while item.scope do item = item.scope.items[1] end
  return item
end

local function exit(item)
  while item.scope do
    local items, last = item.scope.items, nil
    for _, inner in ipairs(items) do
      if #(sorted_actions(inner.node)) == 0 then last = inner end
    end
    item = last or items[#items]
  end
  return item
end

local MARKS = { "done", "current", "failed" }

-- ------------------------------------------------------------- Mermaid

-- Mermaid's entity codes (#name; or #number;) inside a quoted label
local mermaid_entity = {
  ['"'] = "#quot;", ["#"] = "#35;", ["<"] = "#lt;", [">"] = "#gt;",
  ["&"] = "#amp;", ["`"] = "#96;", ["["] = "#91;", ["]"] = "#93;",
  ["{"] = "#123;", ["}"] = "#125;", ["|"] = "#124;", ["\\"] = "#92;",
}

local function mermaid_text(s)
  s = valid_utf8(s):gsub("\r\n", "\n")
  s = s:gsub('["#<>&`%[%]{}|\\]', mermaid_entity)
  s = s:gsub("[\r\n]", "<br/>")
  s = s:gsub("[%c]", " ")
  if s == "" then s = " " end   -- Mermaid rejects an empty quoted label
  return '"' .. s .. '"'
end

local mermaid_shape = {
  [kinds.node] = { "[", "]" },
  [kinds.batch] = { "[[", "]]" },
  [kinds.parallel_batch] = { "[/", "/]" },
  [kinds.flow] = { "([", "])" },
  [kinds.batch_flow] = { "{{", "}}" },
  [kinds.parallel_batch_flow] = { "[\\", "\\]" },
}

local cluster_suffix = {
  [kinds.flow] = "",
  [kinds.batch_flow] = " (batch)",
  [kinds.parallel_batch_flow] = " (parallel batch)",
}

local mermaid_classdef = {
  done = "fill:#d9f2d9,stroke:#2e7d32",
  current = "fill:#fff3c4,stroke:#f9a825,stroke-width:3px",
  failed = "fill:#f8d0d0,stroke:#c62828",
}

local function mermaid_scope(scope, indent, out, marked, marks)
  for _, item in ipairs(scope.items) do
    local mark = marks[item.node]
    if mark then
      local ids = marked[mark]
      ids[#ids + 1] = item.id
    end
    if item.scope then
      out[#out + 1] = ("%ssubgraph %s[%s]"):format(indent, item.id,
        mermaid_text(item.label .. cluster_suffix[item.kind]))
      mermaid_scope(item.scope, indent .. "  ", out, marked, marks)
      out[#out + 1] = indent .. "end"
    else
      local shape = mermaid_shape[item.kind] or mermaid_shape[kinds.node]
      out[#out + 1] = ("%s%s%s%s%s"):format(indent, item.id, shape[1],
        mermaid_text(item.label), shape[2])
    end
  end
end

local function to_mermaid(flow, opts)
  local scope, dir, marks = prepare("to_mermaid", flow, opts)
  local out = { "flowchart " .. dir }
  local marked = { done = {}, current = {}, failed = {} }
  mermaid_scope(scope, "  ", out, marked, marks)
  for _, e in ipairs(all_edges(scope)) do
    local from, to = e.from, e.to
    if from == to and from.scope then
      -- a subgraph linked to itself breaks Mermaid's layout: drawn
      -- from the node it leaves by to the one it starts at
      from, to = exit(from), entry(to)
    end
    if e.action == "default" then
      out[#out + 1] = ("  %s --> %s"):format(from.id, to.id)
    else
      out[#out + 1] = ("  %s -->|%s| %s"):format(from.id, mermaid_text(e.action), to.id)
    end
  end
  for _, mark in ipairs(MARKS) do
    if #marked[mark] > 0 then
      out[#out + 1] = ("  classDef %s %s"):format(mark, mermaid_classdef[mark])
      out[#out + 1] = ("  class %s %s"):format(table.concat(marked[mark], ","), mark)
    end
  end
  return table.concat(out, "\n") .. "\n"
end

-- ----------------------------------------------------------------- DOT

-- a DOT quoted string whose label text reads as s: \ " escaped, and & as
-- an entity (Graphviz decodes entities in labels); newlines as \n
local function dot_text(s)
  s = valid_utf8(s):gsub("\r\n", "\n")
  s = s:gsub('[\\"&]', { ["\\"] = "\\\\", ['"'] = '\\"', ["&"] = "&amp;" })
  s = s:gsub("[\r\n]", "\\n")
  s = s:gsub("[%c]", " ")
  return '"' .. s .. '"'
end

local dot_shape = {
  [kinds.node] = "shape=box",
  [kinds.batch] = "shape=box3d",
  [kinds.parallel_batch] = "shape=parallelogram, peripheries=2",
  [kinds.flow] = "shape=folder",
  [kinds.batch_flow] = "shape=folder, peripheries=2",
  [kinds.parallel_batch_flow] = "shape=folder, peripheries=3",
}

local cluster_style = {
  [kinds.flow] = "rounded",
  [kinds.batch_flow] = "rounded,dashed",
  [kinds.parallel_batch_flow] = "rounded,bold",
}

-- the colours of Mermaid's classDefs above
local dot_mark = {
  done = 'fillcolor="#d9f2d9", color="#2e7d32"',
  current = 'fillcolor="#fff3c4", color="#f9a825", penwidth=2',
  failed = 'fillcolor="#f8d0d0", color="#c62828"',
}

local function dot_scope(scope, indent, out, marks)
  for _, item in ipairs(scope.items) do
    local mark = marks[item.node]
    if item.scope then
      out[#out + 1] = ("%ssubgraph cluster_%s {"):format(indent, item.id)
      local style = cluster_style[item.kind]
      if mark then
        out[#out + 1] = ("%s  style=\"filled,%s\"; %s;"):format(indent, style,
          (dot_mark[mark]:gsub(", ", "; ")))
      else
        out[#out + 1] = ("%s  style=\"%s\";"):format(indent, style)
      end
      out[#out + 1] = ("%s  label=%s;"):format(indent, dot_text(item.label .. cluster_suffix[item.kind]))
      dot_scope(item.scope, indent .. "  ", out, marks)
      out[#out + 1] = indent .. "}"
    else
      local attrs = dot_shape[item.kind] or dot_shape[kinds.node]
      if mark then
        attrs = attrs .. ", " .. dot_mark[mark]
      end
      out[#out + 1] = ("%s%s [label=%s, %s];"):format(indent, item.id, dot_text(item.label), attrs)
    end
  end
end

-- Edges are written from the earlier node to the later (numbers follow
-- the walk, and a cluster's nodes come right after it), those going back
-- reversed and drawn with dir=back: dot then ranks a loop's back edge as
-- one, and the flow reads from its start downwards.
local function dot_edge(e)
  local from, to = exit(e.from), entry(e.to)
  local attrs = {}
  if e.action ~= "default" then attrs[#attrs + 1] = "label=" .. dot_text(e.action) end
  local back = e.to.num < e.from.num or (e.from == e.to and e.from.scope ~= nil)
  if back then
    from, to = to, from
    attrs[#attrs + 1] = "dir=back"
  end
  if e.from == e.to and e.from.scope then
    -- a flow that loops to itself: clipping at one cluster is not drawn
    attrs[#attrs + 1] = "style=dashed"
  else
    local head, tail = e.to, e.from
    if back then head, tail = tail, head end
    if head.scope then attrs[#attrs + 1] = "lhead=cluster_" .. head.id end
    if tail.scope then attrs[#attrs + 1] = "ltail=cluster_" .. tail.id end
  end
  local a = #attrs > 0 and (" [" .. table.concat(attrs, ", ") .. "]") or ""
  return ("  %s -> %s%s;"):format(from.id, to.id, a)
end

local function to_dot(flow, opts)
  local scope, dir, marks = prepare("to_dot", flow, opts)
  local out = {
    -- the graph's id is not drawn; SVG output shows it as the title
    ("digraph %s {"):format(dot_text(node_name(flow))),
    ("  rankdir=%s;"):format(dir == "TD" and "TB" or dir),
    "  compound=true;",
    '  node [fontname="Helvetica", style=filled, fillcolor=white];',
    '  edge [fontname="Helvetica", fontsize=10];',
    '  graph [fontname="Helvetica"];',
  }
  dot_scope(scope, "  ", out, marks)
  for _, e in ipairs(all_edges(scope)) do out[#out + 1] = dot_edge(e) end
  out[#out + 1] = "}"
  return table.concat(out, "\n") .. "\n"
end

return { to_mermaid = to_mermaid, to_dot = to_dot, node_name = node_name }

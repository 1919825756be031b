-- flow:to_mermaid and flow:to_dot (API.md §7, Diagrams): the text of a
-- flow's graph, checked exactly, across processes, and by Graphviz.
local pf = require "pocketflow"
local bin = assert(os.getenv("PF_BIN"), "PF_BIN: the built pocketflow binary")
local src = os.getenv("PF_SRC") or "."

local function slurp(p)
  local f = assert(io.open(p, "rb")); local s = f:read("a"); f:close(); return s
end

local function spit(p, s)
  local f = assert(io.open(p, "wb")); f:write(s); f:close()
end

-- runs a shell command, without the sanitizer runtimes preloaded (dot is
-- not instrumented) unless keep_preload (lua5.4 loading the sanitized
-- core needs them); returns stdout, stderr, exit code
local function sh(cmd, input, keep_preload)
  local out, err, inp = os.tmpname(), os.tmpname(), os.tmpname()
  spit(inp, input or "")
  local env = keep_preload and "" or "env -u LD_PRELOAD "
  local _, _, code = os.execute(env .. cmd .. " <" .. inp .. " >" .. out .. " 2>" .. err)
  local o, e = slurp(out), slurp(err)
  os.remove(out); os.remove(err); os.remove(inp)
  return o, e, code
end

local dot_found = select(3, sh("sh -c 'command -v dot'")) == 0

-- Graphviz renders the text: exit 0, an <svg>, and nothing on stderr
-- (a warning such as a bad attribute or an unknown cluster shows there)
local function render(text)
  assert(dot_found, "graphviz's dot is not installed (tools/deps.txt lists graphviz: apt-get install graphviz)")
  local svg, err, code = sh("dot -Tsvg", text)
  assert(code == 0, "dot -Tsvg failed (" .. tostring(code) .. "): " .. err .. "\n" .. text)
  assert.equal("", err)
  assert.truthy(svg:find("<svg", 1, true))
  return svg
end

-- the text lines of an SVG, XML entities decoded
local function svg_texts(svg)
  local texts = {}
  for t in svg:gmatch("<text[^>]*>(.-)</text>") do
    t = t:gsub("&#(%d+);", function(n) return utf8.char(tonumber(n)) end)
    t = t:gsub("&#x(%x+);", function(n) return utf8.char(tonumber(n, 16)) end)
    t = t:gsub("&lt;", "<"):gsub("&gt;", ">"):gsub("&quot;", '"'):gsub("&apos;", "'"):gsub("&amp;", "&")
    texts[#texts + 1] = t
  end
  return texts
end

-- Mermaid's entity codes back to text in one pass, as Mermaid reads
-- them (#35; or #quot;), and <br/> to a newline
local named = { quot = '"', lt = "<", gt = ">", amp = "&" }
local function mermaid_decode(s)
  s = s:gsub("<br/>", "\n")
  return (s:gsub("#(%w+);", function(e)
    return tonumber(e) and utf8.char(tonumber(e)) or assert(named[e], e)
  end))
end

-- the agent of the docs, small: a decision, a batch search, a nested
-- parallel batch flow, and loops back to the decision
local function agent()
  local decide = pf.Node{ name = "Decide" }
  local search = pf.BatchNode{ name = "Search" }
  local fetch = pf.ParallelBatchNode{ name = "Fetch" }
  local summarize = pf.Node{ name = "Summarize" }
  local answer = pf.Node{ name = "Answer" }
  local _ = fetch >> summarize
  local research = pf.ParallelBatchFlow{ name = "Research", start = fetch }
  _ = decide - "search" >> search
  _ = decide - "research" >> research
  _ = decide - "answer" >> answer
  _ = search >> decide
  _ = research >> decide
  local flow = pf.Flow{ name = "Agent", start = decide }
  return flow, { decide = decide, search = search, fetch = fetch,
                 summarize = summarize, answer = answer, research = research }
end

local AGENT_MERMAID = [=[
flowchart TD
  n1["Decide"]
  n2["Answer"]
  subgraph n3["Research (parallel batch)"]
    n4[/"Fetch"/]
    n5["Summarize"]
  end
  n6[["Search"]]
  n1 -->|"answer"| n2
  n1 -->|"research"| n3
  n1 -->|"search"| n6
  n3 --> n1
  n6 --> n1
  n4 --> n5
]=]

local AGENT_DOT = [=[
digraph "Agent" {
  rankdir=TB;
  compound=true;
  node [fontname="Helvetica", style=filled, fillcolor=white];
  edge [fontname="Helvetica", fontsize=10];
  graph [fontname="Helvetica"];
  n1 [label="Decide", shape=box];
  n2 [label="Answer", shape=box];
  subgraph cluster_n3 {
    style="rounded,bold";
    label="Research (parallel batch)";
    n4 [label="Fetch", shape=parallelogram, peripheries=2];
    n5 [label="Summarize", shape=box];
  }
  n6 [label="Search", shape=box3d];
  n1 -> n2 [label="answer"];
  n1 -> n4 [label="research", lhead=cluster_n3];
  n1 -> n6 [label="search"];
  n1 -> n5 [dir=back, lhead=cluster_n3];
  n1 -> n6 [dir=back];
  n4 -> n5;
}
]=]

local function count(s, pattern)
  return select(2, s:gsub(pattern, ""))
end

describe("flow:to_mermaid and flow:to_dot", function()
  it("write a small flow exactly (Mermaid)", function()
    local flow = agent()
    assert.equal(AGENT_MERMAID, flow:to_mermaid())
    assert.equal(AGENT_MERMAID, flow:to_mermaid{})
    assert.equal(AGENT_MERMAID, flow:to_mermaid{ direction = "TD", depth = math.huge })
  end)

  it("write a small flow exactly (DOT), and Graphviz draws it", function()
    local flow = agent()
    local dot = flow:to_dot()
    assert.equal(AGENT_DOT, dot)
    local texts = svg_texts(render(dot))
    table.sort(texts)
    assert.same({ "Answer", "Decide", "Fetch", "Research (parallel batch)", "Search",
                  "Summarize", "answer", "research", "search" }, texts)
  end)

  it("are the same text for the same graph in other processes", function()
    -- many actions and nodes, so that an order taken from pairs (which
    -- differs between processes: string hashes are seeded, node keys are
    -- addresses) would show
    local script = os.tmpname()
    spit(script, [[
      local pf = require "pocketflow"
      local hub = pf.Node{ name = "Hub" }
      local marks = {}
      local inner = pf.BatchFlow{ name = "Inner", start = pf.Node{ name = "Leaf" } }
      for i = 1, 60 do
        local n = (i % 3 == 0) and pf.BatchNode{ name = "Same" } or pf.Node{ name = "N" .. (i * 7919 % 61) }
        local _ = hub - ("act" .. (i * 31 % 97)) >> n
        _ = n - "back" >> hub
        _ = n - ("to" .. i) >> inner
        marks[n] = ({ "done", "current", "failed" })[i % 3 + 1]
      end
      local flow = pf.Flow{ start = hub }
      io.write(flow:to_mermaid{ marks = marks }, flow:to_dot{ marks = marks, direction = "LR" })
    ]])
    local a, ea, ca = sh(bin .. " " .. script)
    local b, eb, cb = sh(bin .. " " .. script)
    local here = assert(loadfile(script))
    local cap = {}
    local write = io.write
    io.write = function(...) for _, s in ipairs{ ... } do cap[#cap + 1] = s end end
    local ok, err = pcall(here)
    io.write = write
    os.remove(script)
    assert(ok, err)
    assert.equal(0, ca, ea)
    assert.equal(0, cb, eb)
    assert.equal(a, b)
    assert.equal(a, table.concat(cap))
    assert.equal(60 * 3, count(a:match("^(.-)digraph"), "%-%->"))  -- every edge once
    assert.truthy(a:find('n2%["N%d+"%]'))
    assert.truthy(a:find('"Same#20"', 1, true))
  end)

  it("number repeated names #2, #3 in the order the walk meets them", function()
    local Fetch = pf.Node:extend("Fetch")
    local a, b, c = Fetch(), Fetch(), Fetch{ name = "Step" }
    local d, e = pf.Node{ name = "Step" }, pf.Node()
    local f = pf.BatchNode()
    local _ = a - "z" >> b
    _ = a - "a" >> c
    _ = c >> d
    _ = d >> e
    _ = b >> f
    local m = pf.Flow{ start = a }:to_mermaid()
    -- walk: a, then c ("a" < "z"), b, then d, f, then e
    assert.equal([=[
flowchart TD
  n1["Fetch"]
  n2["Step"]
  n3["Fetch#35;2"]
  n4["Step#35;2"]
  n5[["BatchNode"]]
  n6["Node"]
  n1 -->|"a"| n2
  n1 -->|"z"| n3
  n2 --> n4
  n3 --> n5
  n4 --> n6
]=], m)
    local texts = svg_texts(render(pf.Flow{ start = a }:to_dot()))
    table.sort(texts)
    assert.same({ "BatchNode", "Fetch", "Fetch#2", "Node", "Step", "Step#2", "a", "z" }, texts)
  end)

  it("give a node the same label in every flow that draws it", function()
    local shared = pf.Node{ name = "Shared" }
    local x, y = pf.Node{ name = "X" }, pf.Node{ name = "Shared" }
    local _ = x >> shared
    local inner = pf.Flow{ name = "Inner", start = shared }
    _ = inner >> y
    local outer = pf.Flow{ start = x }
    _ = shared >> inner   -- after x in the outer flow: shared, then inner
    assert.equal([=[
flowchart TD
  n1["X"]
  n2["Shared"]
  subgraph n3["Inner"]
    n4["Shared"]
    n5(["Inner"])
    n6["Shared#35;2"]
  end
  n7["Shared#35;2"]
  n1 --> n2
  n2 --> n3
  n3 --> n7
  n4 --> n5
  n5 --> n6
]=], outer:to_mermaid())
    render(outer:to_dot())
  end)

  it("label edges with their action, none for default", function()
    local a, b, c, d = pf.Node{ name = "A" }, pf.Node{ name = "B" }, pf.Node{ name = "C" }, pf.Node{ name = "D" }
    local _ = a >> b
    _ = b - "default" >> c
    _ = c - "retry later" >> a
    _ = c - "Done" >> d
    local flow = pf.Flow{ start = a }
    local m = flow:to_mermaid()
    assert.truthy(m:find("\n  n1 --> n2\n", 1, true))
    assert.truthy(m:find("\n  n2 --> n3\n", 1, true))
    assert.truthy(m:find('\n  n3 -->|"Done"| n4\n  n3 -->|"retry later"| n1\n', 1, true))
    local dot = flow:to_dot()
    assert.truthy(dot:find("\n  n1 -> n2;\n  n2 -> n3;\n", 1, true))
    assert.truthy(dot:find('\n  n3 -> n4 [label="Done"];\n', 1, true))
    assert.truthy(dot:find('\n  n1 -> n3 [label="retry later", dir=back];\n', 1, true))
    local texts = svg_texts(render(dot))
    table.sort(texts)
    assert.same({ "A", "B", "C", "D", "Done", "retry later" }, texts)
  end)

  describe("nested flows", function()
    -- Top: a >> Mid; Mid: b >> Low; Low: c
    local function nested()
      local a, b, c = pf.Node{ name = "a" }, pf.Node{ name = "b" }, pf.Node{ name = "c" }
      local low = pf.Flow{ name = "Low", start = c }
      local _ = b >> low
      local mid = pf.BatchFlow{ name = "Mid", start = b }
      _ = a >> mid
      return pf.Flow{ name = "Top", start = a }
    end

    it("depth 0 draws each nested flow as one node", function()
      local flow = nested()
      assert.equal('flowchart TD\n  n1["a"]\n  n2{{"Mid"}}\n  n1 --> n2\n', flow:to_mermaid{ depth = 0 })
      local dot = flow:to_dot{ depth = 0 }
      assert.equal(0, count(dot, "subgraph"))
      assert.truthy(dot:find('n2 [label="Mid", shape=folder, peripheries=2];', 1, true))
      render(dot)
    end)

    it("depth 1 opens the first level only", function()
      local flow = nested()
      assert.equal([=[
flowchart TD
  n1["a"]
  subgraph n2["Mid (batch)"]
    n3["b"]
    n4(["Low"])
  end
  n1 --> n2
  n3 --> n4
]=], flow:to_mermaid{ depth = 1 })
      local dot = flow:to_dot{ depth = 1.5 }
      assert.equal(1, count(dot, "subgraph cluster_"))
      assert.truthy(dot:find('n4 [label="Low", shape=folder];', 1, true))
      render(dot)
    end)

    it("the default depth opens every level", function()
      local flow = nested()
      local m = flow:to_mermaid()
      assert.equal(m, flow:to_mermaid{ depth = 2 })
      assert.equal([=[
flowchart TD
  n1["a"]
  subgraph n2["Mid (batch)"]
    n3["b"]
    subgraph n4["Low"]
      n5["c"]
    end
  end
  n1 --> n2
  n3 --> n4
]=], m)
      local dot = flow:to_dot()
      assert.equal(2, count(dot, "subgraph cluster_"))
      assert.truthy(dot:find("n1 -> n3 [lhead=cluster_n2];", 1, true))
      assert.truthy(dot:find("n3 -> n5 [lhead=cluster_n4];", 1, true))
      local texts = svg_texts(render(dot))
      table.sort(texts)
      assert.same({ "Low", "Mid (batch)", "a", "b", "c" }, texts)
    end)

    it("leave a flow by its last node without successors", function()
      local a, b, c, out = pf.Node{ name = "a" }, pf.Node{ name = "b" }, pf.Node{ name = "c" }, pf.Node{ name = "out" }
      local _ = a - "x" >> b
      _ = a - "y" >> c
      _ = c >> a
      local inner = pf.Flow{ start = a }
      _ = inner >> out
      local dot = pf.Flow{ start = inner }:to_dot()
      -- inside: n2 a, n3 b, n4 c; b ends the flow
      assert.truthy(dot:find("n3 -> n5 [ltail=cluster_n1];", 1, true))
      render(dot)
    end)

    it("draw an empty flow as one node", function()
      local a = pf.Node{ name = "a" }
      local _ = a >> pf.ParallelBatchFlow{ name = "Empty" }
      local flow = pf.Flow{ start = a }
      assert.equal('flowchart TD\n  n1["a"]\n  n2[\\"Empty"\\]\n  n1 --> n2\n', flow:to_mermaid())
      render(flow:to_dot())
      assert.equal("flowchart TD\n", pf.Flow():to_mermaid())
      render(pf.Flow():to_dot())
    end)
  end)

  it("draw batch and parallel nodes and flows distinctly", function()
    local n, b, p = pf.Node{ name = "n" }, pf.BatchNode{ name = "b" }, pf.ParallelBatchNode{ name = "p" }
    local f = pf.Flow{ name = "f", start = pf.Node{ name = "fi" } }
    local bf = pf.BatchFlow{ name = "bf", start = pf.Node{ name = "bfi" } }
    local pbf = pf.ParallelBatchFlow{ name = "pbf", start = pf.Node{ name = "pbfi" } }
    local _ = n - "1" >> b
    _ = n - "2" >> p
    _ = n - "3" >> f
    _ = n - "4" >> bf
    _ = n - "5" >> pbf
    local flow = pf.BatchFlow{ start = n }   -- the methods are on every flow class
    local m0 = flow:to_mermaid{ depth = 0 }
    for _, line in ipairs{ 'n1["n"]', 'n2[["b"]]', 'n3[/"p"/]', 'n4(["f"])', 'n5{{"bf"}}', 'n6[\\"pbf"\\]' } do
      assert.truthy(m0:find("\n  " .. line .. "\n", 1, true), line)
    end
    local d0 = flow:to_dot{ depth = 0 }
    for _, line in ipairs{ 'n1 [label="n", shape=box];', 'n2 [label="b", shape=box3d];',
                           'n3 [label="p", shape=parallelogram, peripheries=2];',
                           'n4 [label="f", shape=folder];', 'n5 [label="bf", shape=folder, peripheries=2];',
                           'n6 [label="pbf", shape=folder, peripheries=3];' } do
      assert.truthy(d0:find("\n  " .. line .. "\n", 1, true), line)
    end
    render(d0)
    local m = pf.ParallelBatchFlow{ start = n }:to_mermaid()
    assert.truthy(m:find('subgraph n4["f"]', 1, true))
    assert.truthy(m:find('subgraph n6["bf (batch)"]', 1, true))
    assert.truthy(m:find('subgraph n8["pbf (parallel batch)"]', 1, true))
    local d = flow:to_dot()
    assert.truthy(d:find('subgraph cluster_n4 {\n    style="rounded";\n    label="f";', 1, true))
    assert.truthy(d:find('subgraph cluster_n6 {\n    style="rounded,dashed";\n    label="bf (batch)";', 1, true))
    assert.truthy(d:find('subgraph cluster_n8 {\n    style="rounded,bold";\n    label="pbf (parallel batch)";', 1, true))
    render(d)
  end)

  it("style marks", function()
    local flow, n = agent()
    local marks = { [n.decide] = "done", [n.search] = "done", [n.research] = "current",
                    [n.summarize] = "failed", [pf.Node()] = "failed" }   -- a node not drawn: no effect
    local m = flow:to_mermaid{ marks = marks }
    assert.equal(AGENT_MERMAID .. [=[
  classDef done fill:#d9f2d9,stroke:#2e7d32
  class n1,n6 done
  classDef current fill:#fff3c4,stroke:#f9a825,stroke-width:3px
  class n3 current
  classDef failed fill:#f8d0d0,stroke:#c62828
  class n5 failed
]=], m)
    local d = flow:to_dot{ marks = marks }
    assert.truthy(d:find('n1 [label="Decide", shape=box, fillcolor="#d9f2d9", color="#2e7d32"];', 1, true))
    assert.truthy(d:find('n6 [label="Search", shape=box3d, fillcolor="#d9f2d9", color="#2e7d32"];', 1, true))
    assert.truthy(d:find('style="filled,rounded,bold"; fillcolor="#fff3c4"; color="#f9a825"; penwidth=2;', 1, true))
    assert.truthy(d:find('n5 [label="Summarize", shape=box, fillcolor="#f8d0d0", color="#c62828"];', 1, true))
    assert.equal(0, count(d, "#f8d0d0") - 1)
    local svg = render(d)
    assert.truthy(svg:find('fill="#d9f2d9"', 1, true))
    assert.truthy(svg:find('fill="#fff3c4"', 1, true))
    assert.truthy(svg:find('fill="#f8d0d0"', 1, true))
    -- no marks, no styles
    assert.falsy(flow:to_mermaid{ marks = {} }:find("classDef", 1, true))
  end)

  it("draw loops and cycles once", function()
    local a, b, c = pf.Node{ name = "a" }, pf.Node{ name = "b" }, pf.Node{ name = "c" }
    local _ = a >> b
    _ = b >> c
    _ = c >> a
    _ = b - "self" >> b
    local loop = pf.Flow{ name = "Loop", start = a }
    _ = loop - "again" >> loop   -- a flow that loops to itself
    local top = pf.Flow{ start = loop }
    local m = top:to_mermaid()
    assert.equal([=[
flowchart TD
  subgraph n1["Loop"]
    n2["a"]
    n3["b"]
    n4["c"]
  end
  n4 -->|"again"| n2
  n2 --> n3
  n3 --> n4
  n3 -->|"self"| n3
  n4 --> n2
]=], m)
    local d = top:to_dot()
    assert.truthy(d:find('n2 -> n4 [label="again", dir=back, style=dashed];', 1, true))
    assert.truthy(d:find("n3 -> n3 [label=\"self\"];", 1, true))
    assert.truthy(d:find("n2 -> n4 [dir=back];", 1, true))
    render(d)
    -- a flow inside itself is opened once, then drawn as a node
    local x = pf.Node{ name = "x" }
    local rec = pf.Flow{ name = "Rec", start = x }
    _ = x - "deeper" >> rec
    assert.equal([=[
flowchart TD
  n1["x"]
  n2(["Rec"])
  n1 -->|"deeper"| n2
]=], rec:to_mermaid())
    local outer = pf.Flow{ start = rec }
    local d2 = outer:to_dot()
    assert.equal(1, count(d2, '%[label="x"'))
    assert.equal(1, count(d2, 'subgraph cluster_n1 {'))
    assert.truthy(d2:find('n3 [label="Rec", shape=folder];', 1, true))
    render(outer:to_dot())
  end)

  it("escape hostile names and actions, and Graphviz shows them as they are", function()
    local hostile = {
      'say "hi"', "back\\slash \\n \\N \\G \\L", "a\nb", "cr\r\nlf", "<b>bold</b> & &amp; &#35;",
      "#35; #quot; # ;", "[x] (y) {z} |w| `c`", "end", "subgraph", "é 日本 ok", "\xff bad \xc3", "",
      "tab\there", "-> -- --> ;", "'single'",
    }
    local nodes = {}
    for i, name in ipairs(hostile) do nodes[i] = pf.Node{ name = name } end
    for i = 1, #nodes - 1 do local _ = nodes[i] - hostile[i] >> nodes[i + 1] end
    local inner = pf.Flow{ name = 'cl"uster\\ <x>', start = nodes[1] }
    local flow = pf.Flow{ name = 'top "t" \\ \n{x}', start = inner }   -- DOT's graph id
    -- what the text should show for each name
    local function shown(s)
      s = s:gsub("\r\n", "\n"):gsub("\r", "\n"):gsub("\t", " ")
      return (s:gsub("\xff", "\u{FFFD}"):gsub("\xc3$", "\u{FFFD}"))
    end
    local m = flow:to_mermaid()
    local labels = {}
    for line in m:gmatch("[^\n]+") do
      local open, label = line:match('^%s+n%d+([%[%(%{/\\]+)"(.-)"')
      if not open then open, label = line:match('^%s+(subgraph) n%d+%["(.-)"%]$') end
      if open then
        -- only entities and <br/>
        assert.falsy(label:gsub("<br/>", ""):find('["<>%[%]{}|`\\]'), label)
        assert.falsy(label:gsub("#%w+;", ""):find("#"))
        labels[#labels + 1] = mermaid_decode(label)
      end
      local action = line:match('^%s+n%d+ %-%->|"(.-)"| n%d+$')
      if action then
        assert.falsy(action:gsub("<br/>", ""):find('["<>%[%]{}|`\\]'), action)
        labels[#labels + 1] = mermaid_decode(action)
      end
    end
    local want = { shown('cl"uster\\ <x>') }
    for _, name in ipairs(hostile) do want[#want + 1] = name == "" and " " or shown(name) end
    for i = 1, #hostile - 1 do want[#want + 1] = hostile[i] == "" and " " or shown(hostile[i]) end
    assert.same(want, labels)
    assert.equal(3 + #hostile + #hostile - 1, count(m, "\n"))   -- header, subgraph, end: no line broken by a name

    local svg = render(flow:to_dot())
    local texts = svg_texts(svg)
    local got = table.concat(texts, "\n")
    for _, name in ipairs(hostile) do
      -- Graphviz draws each line of a label as its own <text>
      for line in (shown(name) .. "\n"):gmatch("(.-)\n") do
        if line:match("%S") then
          assert.truthy(got:find(line:gsub("^%s+", ""):gsub("%s+$", ""), 1, true), line)
        end
      end
    end
    assert.truthy(got:find('cl"uster\\ <x>', 1, true))
    assert.truthy(got:find("back\\slash \\n \\N \\G \\L", 1, true))
    assert.truthy(got:find("<b>bold</b> & &amp; &#35;", 1, true))
  end)

  it("give Graphviz text it draws without a warning for random nested graphs", function()
    local classes = { pf.Node, pf.BatchNode, pf.ParallelBatchNode }
    local flows = { pf.Flow, pf.BatchFlow, pf.ParallelBatchFlow }
    local names = { "A", "B", "A", 'q"', "x\ny", "<b>", "#1", "é", "end", "" }
    local actions = { "default", "go", "back", "x y", 'a"b' }
    local function graph(level)
      local n = math.random(1, 6)
      local nodes = {}
      for i = 1, n do
        if level < 3 and math.random() < 0.25 then
          nodes[i] = graph(level + 1)
        else
          nodes[i] = classes[math.random(#classes)]{ name = names[math.random(#names)] }
        end
      end
      for _ = 1, math.random(0, 2 * n) do
        local _ = nodes[math.random(n)] - actions[math.random(#actions)] >> nodes[math.random(n)]
      end
      local f = flows[math.random(#flows)]{ name = names[math.random(#names)], start = nodes[1] }
      if math.random() < 0.1 then local _ = nodes[n] - "again" >> f end   -- a flow inside itself
      return f
    end
    local warn = pf.on_warning
    pf.on_warning = function() end   -- successors overwritten at random
    local ok, err = pcall(function()
      for seed = 1, 40 do
        math.randomseed(seed)
        local flow = graph(0)
        local depth = ({ 0, 1, 2, math.huge })[seed % 4 + 1]
        local text = flow:to_dot{ depth = depth, direction = seed % 2 == 0 and "LR" or "TD" }
        assert.equal(text, flow:to_dot{ depth = depth, direction = seed % 2 == 0 and "LR" or "TD" })
        render(text)
      end
    end)
    pf.on_warning = warn
    math.randomseed()
    assert(ok, err)
  end)

  it("raise on bad options, naming the option and the value", function()
    local flow = agent()
    local cases = {
      { { depth = -1 }, "depth must be a non-negative number (got -1)" },
      { { depth = 0 / 0 }, "depth must be a non-negative number (got " .. tostring(0 / 0) .. ")" },
      { { depth = "2" }, "depth must be a non-negative number (got 2)" },
      { { direction = "XY" }, "direction must be one of TD, TB, BT, LR, RL (got XY)" },
      { { direction = "td" }, "direction must be one of TD, TB, BT, LR, RL (got td)" },
      { { direction = 1 }, "direction must be one of TD, TB, BT, LR, RL (got 1)" },
      { { marks = "done" }, "marks must be a table (got string)" },
      { { marks = { [flow.start_node] = "ok" } }, 'marks[Decide] must be "done", "current" or "failed" (got ok)' },
      { { marks = { [flow.start_node] = true } }, 'marks[Decide] must be "done", "current" or "failed" (got true)' },
      { { marks = { "done" } }, "marks keys must be pocketflow nodes (got number)" },
      { { colour = "red" }, "unknown option 'colour'" },
      { 42, "options must be a table (got number)" },
    }
    for _, case in ipairs(cases) do
      for _, fname in ipairs{ "to_mermaid", "to_dot" } do
        local ok, err = pcall(flow[fname], flow, case[1])
        assert.is_false(ok)
        assert.equal(fname .. ": " .. case[2], err)
        -- at the caller's level
        local ok2, err2 = pcall(function() local text = flow[fname](flow, case[1]); return text end)
        assert.is_false(ok2)
        assert.matches("^spec/diagram_spec%.lua:%d+: " .. fname, err2)
      end
    end
    assert.has_error(function() pf.Flow.to_dot(pf.Node()) end, "to_dot: expected a flow (got table)")
    assert.has_error(function() pf.Flow.to_mermaid(nil) end, "to_mermaid: expected a flow (got nil)")
    for _, dir in ipairs{ "TD", "TB", "BT", "LR", "RL" } do
      local text = flow:to_dot{ direction = dir }
      assert.truthy(text:find("rankdir=" .. (dir == "TD" and "TB" or dir) .. ";", 1, true))
      render(text)
      assert.equal("flowchart " .. dir .. "\n", flow:to_mermaid{ direction = dir }:match("^[^\n]*\n"))
    end
  end)

  -- examples_spec runs examples/diagram.lua; here Graphviz draws it
  it("draw the example's diagram as docs/img/flow.svg shows it", function()
    local out, err, code = sh(bin .. " " .. src .. "/examples/diagram.lua dot")
    assert.equal(0, code, err)
    assert.truthy(#svg_texts(render(out)) >= 8)
    -- docs/img/flow.svg is that output with marks, drawn by dot: the
    -- same labels and colours as drawing it now (the layout may differ
    -- between Graphviz versions)
    local marked = sh(bin .. " " .. src .. "/examples/diagram.lua dot marks")
    local now, committed = render(marked), slurp(src .. "/docs/img/flow.svg")
    local function summary(svg)
      local t = svg_texts(svg)
      for fill in svg:gmatch('fill="(#%x+)"') do t[#t + 1] = fill end
      table.sort(t)
      return t
    end
    assert.same(summary(now), summary(committed))
    assert.truthy(committed:find("<title>Research agent</title>", 1, true))
  end)
end)

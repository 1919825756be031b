#!/bin/sh
# Builds the rock with luarocks into a temporary tree (no dependency
# fetching: Debian provides luv) and runs a flow from it with plain lua5.4.
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
tree=$(mktemp -d)
work=$(mktemp -d)
trap 'rm -rf "$tree" "$work"' EXIT
tar -C "$src" --exclude='./build*' --exclude=./.git -cf - . | tar -C "$work" -xf -
cd "$work"
luarocks --lua-version=5.4 make --tree "$tree" --deps-mode=none rockspec/pocketflow-scm-1.rockspec >"$work/log" 2>&1 || { cat "$work/log"; exit 1; }
export TREE="$tree"
eval "$(luarocks --lua-version=5.4 --tree "$tree" path)"
cd /
out=$(lua5.4 -e '
  local pf = require "pocketflow"
  assert(package.searchpath("pocketflow.core", package.cpath):find(os.getenv("TREE"), 1, true))
  -- libcurl is dlopened on the first request: refused, not "cannot load"
  local ok, err = pcall(pf.http.get, "http://127.0.0.1:1/")
  assert(not ok and err:find("onnect"), err)
  local n = pf.Node{ exec = function() pf.sleep(0.01) return "rock ok" end,
                     post = function(_, _, _, e) return e end }
  print(pf.Flow(n):run({}))' 2>&1)
echo "$out"
[ "$out" = "rock ok" ]

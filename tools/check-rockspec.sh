#!/bin/sh
# Installs pocketflow the ways a Lua user does, each into temporary dirs,
# from a copy of the checkout built with the user's defaults (no -Werror),
# and runs a flow that waits from plain lua5.4 and from the installed
# binary:
#   1. cmake --install, default prefix (/usr/local), staged with DESTDIR;
#   2. the same build with CMAKE_INSTALL_PREFIX=/usr (Debian's multiarch dir);
#   3. luarocks make --tree DIR, then luarocks remove;
#   4. luarocks make --local (HOME is a temporary dir), then luarocks remove.
# Routes 1 and 2 run lua5.4 with its own package.path/cpath with every /usr/
# moved under DESTDIR put first (the originals stay for Debian's cjson and
# luv): pocketflow's files must be where lua5.4 looks.
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
work=$tmp/src
mkdir "$work"
tar -C "$src" --exclude='./build*' --exclude=./.git -cf - . | tar -C "$work" -xf -

fail() { echo "check-rockspec: $*" >&2; exit 1; }
run() {  # runs a command quietly; shows its output if it fails
  "$@" >"$tmp/log" 2>&1 || { cat "$tmp/log"; fail "failed: $*"; }
}

# the flow: a node whose exec waits; prints where the core came from
cat >"$tmp/flow.lua" <<'EOF'
local pf = require "pocketflow"
local n = pf.Node{ exec = function() pf.sleep(0.01) return "flow ok" end,
                   post = function(_, _, _, e) return e end }
print(package.searchpath("pocketflow.core", package.cpath))
print(pf.Flow(n):run({}))
EOF

# lua5.4 as installed, its search paths moved under $1
lua_under() {
  root=$1; shift
  lua5.4 -e "
    local r = '$root'
    package.path = package.path:gsub('/usr/', r .. '/usr/') .. ';' .. package.path
    package.cpath = package.cpath:gsub('/usr/', r .. '/usr/') .. ';' .. package.cpath" "$@"
}

# expects the flow's output: the core under $1, then "flow ok"
check_flow() {
  out=$2
  core=$(printf '%s\n' "$out" | sed -n 1p)
  case $core in "$1"/*) ;; *) fail "core.so not from $1: $out" ;; esac
  [ "$(printf '%s\n' "$out" | sed -n 2p)" = "flow ok" ] || fail "flow: $out"
}

# 1-2. cmake: a user's build, installed with the default prefix and /usr
cd "$work"
run cmake -S . -B build-user -DCMAKE_BUILD_TYPE=Release
grep -q -- '-Werror' build-user/CMakeFiles/pfcore.dir/flags.make \
  && fail "a user's build must not use -Werror"
run cmake --build build-user -j2
for prefix in /usr/local /usr; do
  dest=$tmp/dest$(echo "$prefix" | tr / _)
  run cmake -S . -B build-user -DCMAKE_INSTALL_PREFIX="$prefix"
  run env DESTDIR="$dest" cmake --install build-user
  [ -x "$dest$prefix/bin/pocketflow" ] || fail "no $prefix/bin/pocketflow"
  check_flow "$dest$prefix/lib" "$(cd / && lua_under "$dest" "$tmp/flow.lua" 2>&1)"
  # the binary has the module built in
  out=$("$dest$prefix/bin/pocketflow" "$tmp/flow.lua" 2>&1 | tail -n 1)
  [ "$out" = "flow ok" ] || fail "installed binary: $out"
  echo "cmake --install, prefix $prefix: $(cd "$dest" && find . -name core.so)"
done
case $(find "$tmp/dest_usr_local" -name core.so) in
  */usr/local/lib/lua/5.4/pocketflow/core.so) ;; *) fail "/usr/local: wrong dir" ;;
esac

# 3-4. luarocks make into a tree, then remove; --local with HOME moved
rock=rockspec/pocketflow-scm-1.rockspec
check_rock() {  # $1: the tree; the rest: luarocks' tree options
  tree=$1; shift
  run luarocks --lua-version 5.4 make "$@" --deps-mode=none "$rock"
  [ -x "$tree/bin/pocketflow" ] || fail "no bin/pocketflow in $tree"
  out=$(cd / && eval "$(luarocks --lua-version 5.4 "$@" path)" && lua5.4 "$tmp/flow.lua" 2>&1)
  check_flow "$tree" "$out"
  out=$("$tree/bin/pocketflow" "$tmp/flow.lua" 2>&1 | tail -n 1)
  [ "$out" = "flow ok" ] || fail "rock's binary: $out"
  run luarocks --lua-version 5.4 "$@" remove pocketflow
  [ ! -e "$tree/bin/pocketflow" ] || fail "luarocks remove left $tree/bin/pocketflow"
  [ -z "$(find "$tree" -name 'core.so' -o -name init.lua)" ] || fail "luarocks remove left files"
  echo "luarocks make $*: bin/pocketflow installed and removed"
}
check_rock "$tmp/tree" --tree "$tmp/tree"
rm -rf build.luarocks
HOME=$tmp/home
mkdir "$HOME"
export HOME
check_rock "$HOME/.luarocks" --local
echo "check-rockspec: ok"

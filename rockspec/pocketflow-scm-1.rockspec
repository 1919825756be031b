rockspec_format = "3.0"
package = "pocketflow"
version = "scm-1"
-- No published source yet: the rock is built from a checkout, from its
-- top directory, with
--   luarocks --lua-version 5.4 make --deps-mode=none rockspec/pocketflow-scm-1.rockspec
-- (see docs for --tree DIR / --local and why --deps-mode=none).
source = {
   url = "file://.",
}
description = {
   summary = "PocketFlow's nodes and flows for Lua 5.4, on a C core and libuv",
   detailed = [[
A flow engine for LLM and I/O-heavy applications: nodes (prep/exec/post
with retries and fallback), flows, batch and parallel batch nodes and
flows. Every node runs in a coroutine on a C scheduler over libuv, so any
node may wait and thousands wait at once.]],
   license = "MIT",
}
dependencies = {
   "lua >= 5.4, < 5.5",
   "luv",
   "lua-cjson",
}
build = {
   type = "cmake",
   -- every file goes into the rock's own dirs, which luarocks deploys
   -- into the tree (bin/pocketflow into the tree's bin/) and removes
   -- again with `luarocks remove`
   variables = {
      CMAKE_BUILD_TYPE = "Release",
      CMAKE_INSTALL_PREFIX = "$(PREFIX)",
      PF_LUA_CDIR = "$(LIBDIR)",
      PF_LUA_LDIR = "$(LUADIR)",
      PF_BINDIR = "$(BINDIR)",
   },
}

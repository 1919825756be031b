rockspec_format = "3.0"
package = "pocketflow"
version = "scm-1"
source = {
   url = "git+https://example.invalid/pocketflow.git",
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
}
build = {
   type = "cmake",
   variables = {
      CMAKE_BUILD_TYPE = "Release",
      PF_LUA_CDIR = "$(LIBDIR)",
      PF_LUA_LDIR = "$(LUADIR)",
   },
}

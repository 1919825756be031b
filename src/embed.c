/*
** The Lua files built into the program (tools/embed.c): loading one, and
** registering one in package.preload.
*/
#include <string.h>

#include <lauxlib.h>

#include "embed.h"

/* Precompiled code is valid only for the Lua release that made it: with
** another liblua (upgraded since the build) the text is parsed instead. */
int pf_load_chunk(lua_State *L, const pf_chunk *c) {
  if (strcmp(c->ident, lua_ident) == 0)
    return luaL_loadbufferx(L, (const char *)c->code, c->code_len, c->name, "b");
  return luaL_loadbufferx(L, (const char *)c->text, c->text_len, c->name, "t");
}

/* package.preload's loader: runs the chunk with the module name */
static int load_preloaded(lua_State *L) {
  const pf_chunk *c = (const pf_chunk *)lua_touserdata(L, lua_upvalueindex(1));
  if (pf_load_chunk(L, c) != LUA_OK) return lua_error(L);
  lua_pushvalue(L, 1);
  lua_call(L, 1, 1);
  return 1;
}

void pf_preload(lua_State *L, const char *name, const pf_chunk *c) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushlightuserdata(L, (void *)c);
  lua_pushcclosure(L, load_preloaded, 1);
  lua_setfield(L, -2, name);
  lua_pop(L, 1);
}

/*
** pf_load_chunk: the Lua files built into the program (tools/embed.c).
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

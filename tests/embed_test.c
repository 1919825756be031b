/*
** pf_load_chunk (src/embed.c): the bytecode is run only when it was made
** by the Lua release loading it; otherwise the text is.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "../src/embed.h"
#include "check.h"

typedef struct dump {
  unsigned char data[4096];
  size_t len;
} dump;

static int writer(lua_State *L, const void *p, size_t n, void *ud) {
  dump *d = (dump *)ud;
  (void)L;
  if (n > sizeof d->data - d->len) return 1;
  memcpy(d->data + d->len, p, n);
  d->len += n;
  return 0;
}

/* loads and runs c; its integer result, or -1 */
static lua_Integer run(lua_State *L, const pf_chunk *c) {
  lua_Integer r = -1;
  if (pf_load_chunk(L, c) == LUA_OK && lua_pcall(L, 0, 1, 0) == LUA_OK)
    r = lua_tointeger(L, -1);
  else
    fprintf(stderr, "embed_test: %s\n", lua_tostring(L, -1));
  lua_pop(L, 1);
  return r;
}

int main(void) {
  static const char text[] = "return 1";
  static dump code;
  lua_State *L = luaL_newstate();
  pf_chunk c;
  CHECK(luaL_loadstring(L, "return 2") == LUA_OK);
  CHECK(lua_dump(L, writer, &code, 0) == 0);
  lua_pop(L, 1);
  c.name = "=test";
  c.text = (const unsigned char *)text;
  c.text_len = strlen(text);
  c.code = code.data;
  c.code_len = code.len;
  c.ident = lua_ident;
  CHECK(run(L, &c) == 2);         /* the same Lua: the bytecode */
  c.ident = "$LuaVersion: Lua 5.4.0 $";
  CHECK(run(L, &c) == 1);         /* another release: the text */
  lua_close(L);
  if (failures) return EXIT_FAILURE;
  puts("embed_test: ok");
  return EXIT_SUCCESS;
}

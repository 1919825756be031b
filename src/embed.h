/*
** Lua chunks built into the program: tools/embed.c writes one per file
** of lua/pocketflow/ at build time.
*/
#ifndef PF_EMBED_H
#define PF_EMBED_H

#include <stddef.h>
#include <lua.h>

typedef struct pf_chunk {
  const char *name;             /* chunk name, as "=pocketflow.http" */
  const unsigned char *text;    /* the source */
  size_t text_len;
  const unsigned char *code;    /* its lua_dump */
  size_t code_len;
  const char *ident;            /* lua_ident of the Lua that dumped it */
} pf_chunk;

/* Loads the chunk as a function on the stack; lua_load's status. */
int pf_load_chunk(lua_State *L, const pf_chunk *c);

/* require(name) runs the chunk, as a file module would be run. */
void pf_preload(lua_State *L, const char *name, const pf_chunk *c);

#endif

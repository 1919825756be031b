/*
** embed IN OUT NAME CHUNKNAME: a build-time tool writing OUT, a C file that
** defines the pf_chunk NAME (src/embed.h): the text of the Lua file IN and
** its precompiled form (lua_dump, debug information kept, so tracebacks
** still give lines), tagged with the lua_ident of the Lua that made it.
** A syntax error in IN fails the build.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>

typedef struct out {
  FILE *f;
  size_t n;   /* bytes written in the current array */
} out;

static void put_bytes(out *o, const void *p, size_t n) {
  const unsigned char *b = (const unsigned char *)p;
  size_t i;
  for (i = 0; i < n; i++, o->n++)
    fprintf(o->f, "%s0x%02x,", o->n % 16 ? "" : "\n", b[i]);
}

static int writer(lua_State *L, const void *p, size_t n, void *ud) {
  (void)L;
  put_bytes((out *)ud, p, n);
  return 0;
}

static void put_string(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    if (*s == '"' || *s == '\\') fputc('\\', f);
    fputc(*s, f);
  }
  fputc('"', f);
}

static int fail(const char *what, const char *why) {
  fprintf(stderr, "embed: %s: %s\n", what, why);
  return EXIT_FAILURE;
}

/* The chunk on top of L's stack, written out with its text. */
static int write_c(lua_State *L, const char *path, const char *name,
                   const char *chunkname, const char *text, size_t len) {
  out o = { NULL, 0 };
  int err;
  o.f = fopen(path, "w");
  if (o.f == NULL) return fail(path, "cannot open for writing");
  fprintf(o.f, "#include \"embed.h\"\n\nstatic const unsigned char text[] = {");
  put_bytes(&o, text, len);
  fprintf(o.f, "\n};\n\nstatic const unsigned char code[] = {");
  o.n = 0;
  lua_dump(L, writer, &o, 0);
  fprintf(o.f, "\n};\n\nconst pf_chunk %s = {\n  ", name);
  put_string(o.f, chunkname);
  fprintf(o.f, ",\n  text, sizeof text, code, sizeof code,\n  ");
  put_string(o.f, lua_ident);
  fprintf(o.f, "\n};\n");
  err = ferror(o.f);
  if (fclose(o.f) != 0 || err) return fail(path, "write error");
  return EXIT_SUCCESS;
}

static char *read_all(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  char *text = NULL;
  long n;
  if (f == NULL) return NULL;
  if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 &&
      fseek(f, 0, SEEK_SET) == 0 && (text = malloc((size_t)n + 1)) != NULL) {
    *len = fread(text, 1, (size_t)n, f);
    if (*len != (size_t)n || ferror(f)) {
      free(text);
      text = NULL;
    }
  }
  fclose(f);
  return text;
}

int main(int argc, char **argv) {
  lua_State *L;
  size_t len;
  char *text;
  int status;
  if (argc != 5) return fail("usage", "embed IN OUT NAME CHUNKNAME");
  text = read_all(argv[1], &len);
  if (text == NULL) return fail(argv[1], "cannot read");
  if (len == 0) {
    free(text);
    return fail(argv[1], "empty file");
  }
  L = luaL_newstate();
  if (L == NULL) {
    free(text);
    return fail("lua", "cannot create a state");
  }
  if (luaL_loadbufferx(L, text, len, argv[4], "t") != LUA_OK)
    status = fail(argv[1], lua_tostring(L, -1));
  else
    status = write_c(L, argv[2], argv[3], argv[4], text, len);
  lua_close(L);
  free(text);
  return status;
}

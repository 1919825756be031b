/*
** pf.serialize(v [, opts]) and pf.deserialize(s): Lua values to a binary
** blob and back, for checkpoints and for items sent to other processes.
**
** Blob: "PFS", a version byte, the CRC-32 (4 bytes LE) of every other
** byte of the blob, the payload's length (varint), the payload: one value.
** A value is a tag byte and what the tag says follows:
**   0x00 nil (a hole in an array part, or the root)   0x01 false  0x02 true
**   0x03 integer, zigzag varint          0x04 float, IEEE 754 bits, 8 bytes LE
**   0x05 string, varint length, bytes    0x08 light userdata NULL (json.null)
**   0x06 table: varint n, 4 bytes LE m, the values of t[1..n] (nil: a
**        hole), then m key/value pairs
**   0x07 reference: varint k, the k-th table tag of the blob (from 1)
**   0x40 + len: string shorter than 64 bytes   0x80 + i: integer 0..127
** Tables are numbered in the order their tags appear, so a table reached
** twice, or a cycle, decodes to one table reached twice.
**
** Only raw access (lua_rawlen, lua_rawgeti, lua_next): no metamethod
** runs, and metatables are not saved. Nesting is bounded in both
** directions; the decoder checks every length against what is left of
** the input and presizes tables from a budget of the input's size, so no
** input makes it read out of bounds, recurse without bound or allocate
** far more than its own size. The output is built in a userdata that a
** to-be-closed slot frees when an error unwinds.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "serial.h"

#if LUA_FLOAT_TYPE != LUA_FLOAT_DOUBLE
#error "serial.c writes lua_Number as an IEEE 754 double"
#endif
_Static_assert(sizeof(lua_Integer) == 8, "serial.c needs 64-bit integers");

#define HEAD 8            /* magic, version, CRC; the length varint follows */
#define MAXVARINT 10
#define XSTR(x) #x
#define STR(x) XSTR(x)
#define TOO_DEEP "nested deeper than " STR(PF_SERIAL_MAXDEPTH) " tables"

enum { T_NIL, T_FALSE, T_TRUE, T_INT, T_FLT, T_STR, T_TABLE, T_REF, T_NULL,
       T_FIXSTR = 0x40, T_FIXINT = 0x80 };

#define UP_CRC lua_upvalueindex(1)     /* pf_crc_tables */
#define UP_BUFMT lua_upvalueindex(2)   /* metatable of Buf */


/* {======================== CRC-32 ======================== */

void pf_crc32_init(pf_crc_tables *tab) {
  uint32_t i, c;
  int k;
  for (i = 0; i < 256; i++) {
    c = i;
    for (k = 0; k < 8; k++) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
    tab->t[0][i] = c;
  }
  for (i = 0; i < 256; i++)
    for (k = 1; k < 8; k++)
      tab->t[k][i] = (tab->t[k - 1][i] >> 8) ^ tab->t[0][tab->t[k - 1][i] & 0xff];
}

static uint32_t get32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
         (uint32_t)p[3] << 24;
}

static void put32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)v;
  p[1] = (unsigned char)(v >> 8);
  p[2] = (unsigned char)(v >> 16);
  p[3] = (unsigned char)(v >> 24);
}

uint32_t pf_crc32(const pf_crc_tables *tab, uint32_t crc,
                  const unsigned char *p, size_t n) {
  const uint32_t (*t)[256] = tab->t;
  crc = ~crc;
  for (; n >= 8; p += 8, n -= 8) {  /* 8 bytes, 8 independent lookups */
    uint32_t a = crc ^ get32(p), b = get32(p + 4);
    crc = t[7][a & 0xff] ^ t[6][(a >> 8) & 0xff] ^ t[5][(a >> 16) & 0xff] ^
          t[4][a >> 24] ^ t[3][b & 0xff] ^ t[2][(b >> 8) & 0xff] ^
          t[1][(b >> 16) & 0xff] ^ t[0][b >> 24];
  }
  for (; n > 0; p++, n--) crc = t[0][(crc ^ *p) & 0xff] ^ (crc >> 8);
  return ~crc;
}

/* the CRC of a blob: its first 4 bytes, then all after the CRC field */
static uint32_t blob_crc(lua_State *L, const unsigned char *s, size_t n) {
  const pf_crc_tables *tab = (const pf_crc_tables *)lua_touserdata(L, UP_CRC);
  return pf_crc32(tab, pf_crc32(tab, 0, s, 4), s + HEAD, n - HEAD);
}

/* }======================================================== */


/* {======================== Encoder ======================== */

typedef struct Buf {
  unsigned char *data;
  size_t len, cap;
  lua_Alloc alloc;
  void *ud;
} Buf;

/* __gc and __close of a Buf */
static int buf_free(lua_State *L) {
  Buf *b = (Buf *)lua_touserdata(L, 1);
  if (b->data != NULL) b->alloc(b->ud, b->data, b->cap, 0);
  b->data = NULL;
  b->len = b->cap = 0;
  return 0;
}

static Buf *new_buf(lua_State *L) {
  Buf *b = (Buf *)lua_newuserdatauv(L, sizeof *b, 0);
  b->data = NULL;
  b->len = b->cap = 0;
  b->alloc = lua_getallocf(L, &b->ud);
  lua_pushvalue(L, UP_BUFMT);
  lua_setmetatable(L, -2);
  lua_toclose(L, -1);
  return b;
}

typedef struct Enc {
  lua_State *L;
  Buf *b;
  int seen;               /* stack index: table -> its number */
  int skip;               /* stack index of the set of root keys left out, or 0 */
  int checkpoint;         /* errors worded for checkpoints */
  int sorted;             /* pairs in the order of their keys' bytes */
  const char *root;       /* the root's name in paths */
  lua_Integer ntables;
  /* the path to the value being written: at each depth the stack index of
  ** the key, or 0 and the index in the array part */
  int key[PF_SERIAL_MAXDEPTH];
  lua_Integer index[PF_SERIAL_MAXDEPTH];
} Enc;

static void grow(Enc *e, size_t n) {
  Buf *b = e->b;
  size_t cap = b->cap ? b->cap : 256;
  void *p;
  while (cap - b->len < n) {
    if (cap > (size_t)-1 / 2) luaL_error(e->L, "pf.serialize: not enough memory");
    cap *= 2;
  }
  p = b->alloc(b->ud, b->data, b->data ? b->cap : 0, cap);
  if (p == NULL) luaL_error(e->L, "pf.serialize: not enough memory");
  b->data = (unsigned char *)p;
  b->cap = cap;
}

/* at least n free bytes at the end of the output */
static unsigned char *room(Enc *e, size_t n) {
  if (e->b->cap - e->b->len < n) grow(e, n);
  return e->b->data + e->b->len;
}

static size_t varint(unsigned char *p, uint64_t v) {
  size_t n = 0;
  for (; v >= 0x80; v >>= 7) p[n++] = (unsigned char)(v | 0x80);
  p[n++] = (unsigned char)v;
  return n;
}

/* a tag and a varint */
static void put_tagged(Enc *e, int tag, uint64_t v) {
  unsigned char *p = room(e, 1 + MAXVARINT);
  p[0] = (unsigned char)tag;
  e->b->len += 1 + varint(p + 1, v);
}

static void put_byte(Enc *e, int c) {
  *room(e, 1) = (unsigned char)c;
  e->b->len++;
}

static void put_int(Enc *e, lua_Integer i) {
  uint64_t u = (uint64_t)i;
  if (i >= 0 && i < 0x80) put_byte(e, T_FIXINT | (int)i);
  else put_tagged(e, T_INT, (u << 1) ^ (0 - (u >> 63)));
}

static void put_flt(Enc *e, lua_Number x) {
  unsigned char *p = room(e, 9);
  uint64_t u;
  memcpy(&u, &x, 8);
  p[0] = T_FLT;
  put32(p + 1, (uint32_t)u);
  put32(p + 5, (uint32_t)(u >> 32));
  e->b->len += 9;
}

static void put_str(Enc *e, const char *s, size_t n) {
  unsigned char *p = room(e, 1 + MAXVARINT + n);
  if (n < 0x40) {
    *p = (unsigned char)(T_FIXSTR | n);
    e->b->len++;
  } else {
    put_tagged(e, T_STR, n);
  }
  memcpy(e->b->data + e->b->len, s, n);
  e->b->len += n;
}

static int is_name(const char *s, size_t n) {
  static const char *const reserved[] = {
    "and", "break", "do", "else", "elseif", "end", "false", "for",
    "function", "goto", "if", "in", "local", "nil", "not", "or", "repeat",
    "return", "then", "true", "until", "while", NULL};
  const char *const *r;
  size_t i;
  if (n == 0 || (s[0] >= '0' && s[0] <= '9')) return 0;
  for (i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '_')) return 0;
  }
  for (r = reserved; *r != NULL; r++)
    if (strcmp(*r, s) == 0) return 0;
  return 1;
}

/* ["..."], escaped, cut after 40 bytes */
static void add_quoted(luaL_Buffer *B, const char *s, size_t n) {
  size_t i, shown = n > 40 ? 40 : n;
  char esc[8];
  luaL_addstring(B, "[\"");
  for (i = 0; i < shown; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"' || c == '\\') {
      luaL_addchar(B, '\\');
      luaL_addchar(B, (char)c);
    } else if (c >= 0x20 && c < 0x7f) {
      luaL_addchar(B, (char)c);
    } else {
      snprintf(esc, sizeof esc, "\\%03u", c);
      luaL_addstring(B, esc);
    }
  }
  if (shown < n) luaL_addstring(B, "...");
  luaL_addstring(B, "\"]");
}

static void add_key(Enc *e, luaL_Buffer *B, int d) {
  lua_State *L = e->L;
  int k = e->key[d];
  char s[64];
  size_t n;
  const char *str;
  if (k == 0)
    snprintf(s, sizeof s, "[" LUA_INTEGER_FMT "]", (LUAI_UACINT)e->index[d]);
  else if (lua_type(L, k) == LUA_TSTRING) {
    str = lua_tolstring(L, k, &n);
    if (!is_name(str, n)) {
      add_quoted(B, str, n);
      return;
    }
    luaL_addchar(B, '.');
    luaL_addlstring(B, str, n);
    return;
  } else if (lua_isinteger(L, k))
    snprintf(s, sizeof s, "[" LUA_INTEGER_FMT "]", (LUAI_UACINT)lua_tointeger(L, k));
  else if (lua_type(L, k) == LUA_TNUMBER)
    snprintf(s, sizeof s, "[%.17g]", (double)lua_tonumber(L, k));
  else if (lua_type(L, k) == LUA_TBOOLEAN)
    snprintf(s, sizeof s, "[%s]", lua_toboolean(L, k) ? "true" : "false");
  else
    snprintf(s, sizeof s, "[<%s>]", luaL_typename(L, k));
  luaL_addstring(B, s);
}

/* the root's name and n keys; a long path keeps its first 8 and last 4 */
static void add_path(Enc *e, luaL_Buffer *B, int n) {
  int d;
  luaL_addstring(B, e->root);
  for (d = 0; d < n; d++) {
    if (n > 12 && d == 8) {
      luaL_addstring(B, " ... ");
      d = n - 4;
    }
    add_key(e, B, d);
  }
}

/* "cannot checkpoint <what><path> (<why>)", and the hint for a value that
** transient can leave out */
static _Noreturn void enc_fail(Enc *e, const char *what, int n, const char *why,
                               int hint) {
  luaL_Buffer B;
  luaL_checkstack(e->L, 4, NULL);
  luaL_buffinit(e->L, &B);
  luaL_addstring(&B, e->checkpoint ? "cannot checkpoint "
                                   : "pf.serialize: cannot serialize ");
  luaL_addstring(&B, what);
  add_path(e, &B, n);
  luaL_addstring(&B, " (");
  luaL_addstring(&B, why);
  luaL_addchar(&B, ')');
  if (hint && e->checkpoint) luaL_addstring(&B, "; list it in transient");
  luaL_pushresult(&B);
  lua_error(e->L);
  abort();  /* not reached */
}

/* Writes a reference if the table at t was written before, else numbers it. */
static int seen(Enc *e, int t) {
  lua_State *L = e->L;
  lua_pushvalue(L, t);
  if (lua_rawget(L, e->seen) == LUA_TNUMBER) {
    lua_Integer id = lua_tointeger(L, -1);
    lua_pop(L, 1);
    put_tagged(e, T_REF, (uint64_t)id);
    return 1;
  }
  lua_pop(L, 1);
  lua_pushvalue(L, t);
  lua_pushinteger(L, ++e->ntables);
  lua_rawset(L, e->seen);
  return 0;
}

static void enc_value(Enc *e, int idx, int depth, int iskey);

static void enc_array(Enc *e, int t, lua_Integer n, int depth) {
  lua_State *L = e->L;
  lua_Integer i;
  e->key[depth] = 0;
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, t, i);
    e->index[depth] = i;
    enc_value(e, lua_gettop(L), depth + 1, 0);
    lua_pop(L, 1);
  }
}

/* keys written in the array part, and root keys left out */
static int passed(Enc *e, int k, lua_Integer n, int depth) {
  lua_State *L = e->L;
  int skipped;
  if (lua_isinteger(L, k)) {
    lua_Integer i = lua_tointeger(L, k);
    if (i >= 1 && i <= n) return 1;
  }
  if (depth > 0 || e->skip == 0) return 0;
  lua_pushvalue(L, k);
  lua_rawget(L, e->skip);
  skipped = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return skipped;
}

/* pairs in next order; with tables_only, those whose keys are tables */
static uint32_t enc_pairs(Enc *e, int t, lua_Integer n, int depth,
                          int tables_only) {
  lua_State *L = e->L;
  uint32_t m = 0;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    int k = lua_gettop(L) - 1;
    if ((!tables_only || lua_type(L, k) == LUA_TTABLE) && !passed(e, k, n, depth)) {
      e->key[depth] = k;
      enc_value(e, k, depth + 1, 1);
      enc_value(e, k + 1, depth + 1, 0);
      m++;  /* a Lua table holds far fewer than 2^32 pairs */
    }
    lua_pop(L, 1);
  }
  return m;
}

typedef struct SKey {
  const unsigned char *p;   /* the key's bytes */
  size_t off, len;
  lua_Integer i;            /* in the keys table */
} SKey;

static int skey_cmp(const void *a, const void *b) {
  const SKey *x = (const SKey *)a, *y = (const SKey *)b;
  int c = memcmp(x->p, y->p, x->len < y->len ? x->len : y->len);
  return c != 0 ? c : (x->len > y->len) - (x->len < y->len);
}

/* The keys that are not tables, into a new table on top; their count. */
static lua_Integer collect_keys(Enc *e, int t, lua_Integer n, int depth) {
  lua_State *L = e->L;
  lua_Integer c = 0;
  lua_newtable(L);
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TTABLE && !passed(e, lua_gettop(L), n, depth)) {
      lua_pushvalue(L, -1);
      lua_rawseti(L, -3, ++c);
    }
  }
  return c;
}

/* Pairs in the order of their keys' bytes (a key that is not a table
** writes the same bytes wherever it is), then those with table keys. */
static uint32_t enc_sorted(Enc *e, int t, lua_Integer n, int depth) {
  lua_State *L = e->L;
  size_t start = e->b->len, total;
  lua_Integer c = collect_keys(e, t, n, depth), i;
  int keys = lua_gettop(L);
  SKey *sk = (SKey *)lua_newuserdatauv(L, (size_t)c * sizeof *sk + 1, 0);
  unsigned char *copy;
  for (i = 0; i < c; i++) {  /* each key's bytes, at the end of the output */
    lua_rawgeti(L, keys, i + 1);
    e->key[depth] = lua_gettop(L);
    sk[i].off = e->b->len;
    enc_value(e, lua_gettop(L), depth + 1, 1);
    sk[i].len = e->b->len - sk[i].off;
    sk[i].i = i + 1;
    lua_pop(L, 1);
  }
  total = e->b->len - start;
  copy = (unsigned char *)lua_newuserdatauv(L, total + 1, 0);
  memcpy(copy, e->b->data + start, total);
  for (i = 0; i < c; i++) sk[i].p = copy + (sk[i].off - start);
  qsort(sk, (size_t)c, sizeof *sk, skey_cmp);
  e->b->len = start;
  for (i = 0; i < c; i++) {
    memcpy(room(e, sk[i].len), sk[i].p, sk[i].len);
    e->b->len += sk[i].len;
    lua_rawgeti(L, keys, sk[i].i);
    e->key[depth] = lua_gettop(L);
    lua_pushvalue(L, -1);
    lua_rawget(L, t);
    enc_value(e, lua_gettop(L), depth + 1, 0);
    lua_pop(L, 2);
  }
  lua_pop(L, 3);
  return (uint32_t)c + enc_pairs(e, t, n, depth, 1);
}
/* the length of the array part: a border, or with sorted the first one,
** so that equal tables write the same bytes */
static lua_Integer array_length(Enc *e, int t, int depth) {
  lua_Integer n = 0;
  if (depth == 0 && e->skip) return 0;  /* all through the pairs */
  if (!e->sorted) return (lua_Integer)lua_rawlen(e->L, t);
  while (lua_rawgeti(e->L, t, n + 1) != LUA_TNIL) {
    lua_pop(e->L, 1);
    n++;
  }
  lua_pop(e->L, 1);
  return n;
}

static void enc_table(Enc *e, int t, int depth) {
  lua_State *L = e->L;
  lua_Integer n;
  size_t at;
  uint32_t m;
  if (seen(e, t)) return;
  if (depth >= PF_SERIAL_MAXDEPTH) enc_fail(e, "", depth, TOO_DEEP, 0);
  luaL_checkstack(L, 12, "pf.serialize: too many nested tables");
  n = array_length(e, t, depth);
  put_tagged(e, T_TABLE, (uint64_t)n);
  at = e->b->len;
  room(e, 4);
  e->b->len += 4;           /* m, once counted */
  enc_array(e, t, n, depth);
  m = e->sorted ? enc_sorted(e, t, n, depth) : enc_pairs(e, t, n, depth, 0);
  put32(e->b->data + at, m);
}

/* the value at idx, reached by depth keys (the last one is idx itself
** when iskey) */
static void enc_value(Enc *e, int idx, int depth, int iskey) {
  lua_State *L = e->L;
  switch (lua_type(L, idx)) {
    case LUA_TNIL: put_byte(e, T_NIL); return;
    case LUA_TBOOLEAN: put_byte(e, lua_toboolean(L, idx) ? T_TRUE : T_FALSE); return;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) put_int(e, lua_tointeger(L, idx));
      else put_flt(e, lua_tonumber(L, idx));
      return;
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      put_str(e, s, n);
      return;
    }
    case LUA_TTABLE: enc_table(e, idx, depth); return;
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(L, idx) == NULL) {
        put_byte(e, T_NULL);
        return;
      }
      break;
    default: break;
  }
  if (iskey) enc_fail(e, "a key of ", depth - 1, luaL_typename(L, idx), 1);
  enc_fail(e, "", depth, luaL_typename(L, idx), 1);
}

/* opts.skip, a list of keys or a set of keys = true, as a set on top */
static void skip_set(lua_State *L, int list) {
  int set;
  lua_newtable(L);
  set = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, list)) {
    int v = lua_type(L, -1);
    if (v == LUA_TBOOLEAN) {
      lua_pushvalue(L, -2);
    } else if (lua_isinteger(L, -2) && (v == LUA_TSTRING || lua_isinteger(L, -1))) {
      lua_pushvalue(L, -1);
    } else {
      luaL_error(L, "pf.serialize: opts.skip must be a list of keys or a set "
                    "of key = true");
    }
    lua_pushboolean(L, v != LUA_TBOOLEAN || lua_toboolean(L, -2));
    lua_rawset(L, set);
    lua_pop(L, 1);
  }
}

static void check_opt_names(lua_State *L) {
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
    if (strcmp(k, "root") && strcmp(k, "skip") && strcmp(k, "checkpoint") &&
        strcmp(k, "sorted"))
      luaL_error(L, "pf.serialize: unknown option '%s'", k);
    lua_pop(L, 1);
  }
}

/* opts as a table: root at 3, the skip set or nil at 4 */
static void read_opt_table(lua_State *L, Enc *e) {
  int t;
  check_opt_names(L);
  lua_pushliteral(L, "root");
  t = lua_rawget(L, 2);
  if (t == LUA_TNIL) {
    lua_pop(L, 1);
    lua_pushliteral(L, "value");
  } else if (t != LUA_TSTRING) {
    luaL_error(L, "pf.serialize: opts.root must be a string (got %s)",
               luaL_typename(L, -1));
  }
  lua_pushliteral(L, "skip");
  t = lua_rawget(L, 2);
  if (t == LUA_TTABLE) {
    skip_set(L, 4);
    lua_replace(L, 4);
  } else if (t != LUA_TNIL) {
    luaL_error(L, "pf.serialize: opts.skip must be a table (got %s)",
               luaL_typename(L, -1));
  }
  lua_pushliteral(L, "checkpoint");
  lua_rawget(L, 2);
  e->checkpoint = lua_toboolean(L, -1);
  lua_pushliteral(L, "sorted");
  lua_rawget(L, 2);
  e->sorted = lua_toboolean(L, -1);
  lua_pop(L, 2);
}

/* Leaves at 3 the root's name and at 4 the skip set or nil. */
static void read_opts(lua_State *L, Enc *e) {
  int t = lua_type(L, 2);
  lua_settop(L, 2);
  e->checkpoint = e->sorted = 0;
  if (t == LUA_TTABLE) {
    read_opt_table(L, e);
  } else if (t == LUA_TNONE || t == LUA_TNIL || t == LUA_TSTRING) {
    if (t != LUA_TSTRING) lua_pushliteral(L, "value");
    else lua_pushvalue(L, 2);
    lua_pushnil(L);
  } else {
    luaL_error(L, "pf.serialize: opts must be a table or a root name (got %s)",
               luaL_typename(L, 2));
  }
  e->root = lua_tostring(L, 3);
  e->skip = lua_isnil(L, 4) ? 0 : 4;
}

/* The header before the payload: the length varint ends where the
** payload starts, 18 bytes in, so the blob starts 8 + its size before. */
static int enc_finish(lua_State *L, Enc *e) {
  unsigned char len[MAXVARINT];
  size_t payload = e->b->len - HEAD - MAXVARINT, nlen = varint(len, payload);
  unsigned char *h = e->b->data + MAXVARINT - nlen;
  size_t n = HEAD + nlen + payload;
  memcpy(h, "PFS", 3);
  h[3] = PF_SERIAL_VERSION;
  memcpy(h + HEAD, len, nlen);
  put32(h + 4, blob_crc(L, h, n));
  lua_pushlstring(L, (const char *)h, n);
  return 1;
}

static int l_serialize(lua_State *L) {
  Enc e;
  e.L = L;
  read_opts(L, &e);
  lua_newtable(L);
  e.seen = 5;
  e.ntables = 0;
  e.b = new_buf(L);
  room(&e, HEAD + MAXVARINT);
  e.b->len = HEAD + MAXVARINT;
  enc_value(&e, 1, 0, 0);
  return enc_finish(L, &e);
}

/* }======================================================== */


/* {======================== Decoder ======================== */

typedef struct Dec {
  lua_State *L;
  const unsigned char *s, *p, *end;
  lua_Integer nrefs;      /* tables so far, at 2[1..nrefs] */
  size_t budget;          /* table slots left to presize */
} Dec;

#define D_REFS 2

static _Noreturn void corrupt(Dec *d, const char *why) {
  luaL_error(d->L, "pf.deserialize: corrupt data (%s at byte %I)", why,
             (lua_Integer)(d->p - d->s));
  abort();  /* not reached */
}

static size_t left(Dec *d) {
  return (size_t)(d->end - d->p);
}

static unsigned get_byte(Dec *d) {
  if (d->p == d->end) corrupt(d, "truncated");
  return *d->p++;
}

static uint64_t get_varint(Dec *d) {
  uint64_t v = 0;
  int shift;
  for (shift = 0; shift < 64; shift += 7) {
    unsigned b = get_byte(d);
    if (shift == 63 && b > 1) break;
    v |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) return v;
  }
  corrupt(d, "varint too long");
}

/* a count of things of at least 'each' bytes that must follow */
static uint64_t get_count(Dec *d, size_t each, const char *what) {
  uint64_t n = get_varint(d);
  if (n > left(d) / each) corrupt(d, what);
  return n;
}

static void dec_string(Dec *d, size_t n) {
  if (n > left(d)) corrupt(d, "string past the end");
  lua_pushlstring(d->L, (const char *)d->p, n);
  d->p += n;
}

static void dec_float(Dec *d) {
  uint64_t u;
  lua_Number x;
  if (left(d) < 8) corrupt(d, "truncated");
  u = get32(d->p) | (uint64_t)get32(d->p + 4) << 32;
  d->p += 8;
  memcpy(&x, &u, 8);
  lua_pushnumber(d->L, x);
}

static void dec_ref(Dec *d) {
  uint64_t k = get_varint(d);
  if (k < 1 || k > (uint64_t)d->nrefs) corrupt(d, "reference to no table");
  lua_rawgeti(d->L, D_REFS, (lua_Integer)k);
}

/* slots to presize: all claimed, while the budget lasts */
static int presize(Dec *d, uint64_t n) {
  size_t m = n < d->budget ? (size_t)n : d->budget;
  if (m > (size_t)1 << 26) m = (size_t)1 << 26;
  d->budget -= m;
  return (int)m;
}

static void dec_value(Dec *d, int depth);

static void dec_pairs(Dec *d, int t, uint32_t m, int depth) {
  lua_State *L = d->L;
  for (; m > 0; m--) {
    dec_value(d, depth + 1);
    if (lua_isnil(L, -1)) corrupt(d, "nil key");
    if (lua_type(L, -1) == LUA_TNUMBER && !lua_isinteger(L, -1)) {
      lua_Number x = lua_tonumber(L, -1);
      if (x != x) corrupt(d, "NaN key");
    }
    dec_value(d, depth + 1);
    if (lua_isnil(L, -1)) corrupt(d, "nil value");
    lua_rawset(L, t);
  }
}

static void dec_table(Dec *d, int depth) {
  lua_State *L = d->L;
  uint64_t n, i;
  uint32_t m;
  int t;
  if (depth >= PF_SERIAL_MAXDEPTH) corrupt(d, TOO_DEEP);
  n = get_count(d, 1, "array past the end");
  if (left(d) < 4) corrupt(d, "truncated");
  m = get32(d->p);
  d->p += 4;
  if (m > left(d) / 2) corrupt(d, "pairs past the end");
  luaL_checkstack(L, 4, "pf.deserialize: too many nested tables");
  lua_createtable(L, presize(d, n), presize(d, m));
  t = lua_gettop(L);
  lua_pushvalue(L, t);
  lua_rawseti(L, D_REFS, ++d->nrefs);
  for (i = 1; i <= n; i++) {
    dec_value(d, depth + 1);
    if (lua_isnil(L, -1)) lua_pop(L, 1);
    else lua_rawseti(L, t, (lua_Integer)i);
  }
  dec_pairs(d, t, m, depth);
}

/* pushes the next value; depth: tables around it */
static void dec_value(Dec *d, int depth) {
  lua_State *L = d->L;
  unsigned tag = get_byte(d);
  if (tag >= T_FIXINT) {
    lua_pushinteger(L, (lua_Integer)(tag - T_FIXINT));
    return;
  }
  if (tag >= T_FIXSTR) {
    dec_string(d, tag - T_FIXSTR);
    return;
  }
  switch (tag) {
    case T_NIL: lua_pushnil(L); return;
    case T_FALSE: lua_pushboolean(L, 0); return;
    case T_TRUE: lua_pushboolean(L, 1); return;
    case T_INT: {
      uint64_t z = get_varint(d);
      lua_pushinteger(L, (lua_Integer)((z >> 1) ^ (0 - (z & 1))));
      return;
    }
    case T_FLT: dec_float(d); return;
    case T_STR: dec_string(d, get_count(d, 1, "string past the end")); return;
    case T_TABLE: dec_table(d, depth); return;
    case T_REF: dec_ref(d); return;
    case T_NULL: lua_pushlightuserdata(L, NULL); return;
    default: d->p--; corrupt(d, "unknown tag");
  }
}

static _Noreturn void bad_head(lua_State *L, const char *fmt, lua_Integer a,
                               lua_Integer b) {
  lua_pushfstring(L, fmt, a, b);
  luaL_error(L, "pf.deserialize: corrupt data (%s)", lua_tostring(L, -1));
  abort();  /* not reached */
}

/* the payload's length (a varint at HEAD); returns where the payload starts */
static size_t check_length(lua_State *L, const unsigned char *s, size_t n) {
  uint64_t len = 0;
  size_t off = HEAD;
  int shift;
  for (shift = 0;; shift += 7) {
    if (off >= n) bad_head(L, "truncated: %I bytes", (lua_Integer)n, 0);
    if (shift > 63) bad_head(L, "bad length", 0, 0);
    len |= (uint64_t)(s[off] & 0x7f) << shift;
    if (!(s[off++] & 0x80)) break;
  }
  if (len >= (uint64_t)1 << 62) bad_head(L, "bad length", 0, 0);
  if (len != n - off)
    bad_head(L, len > n - off ? "truncated: %I bytes where the header says %I"
                              : "trailing data: %I bytes where the header says %I",
             (lua_Integer)n, (lua_Integer)(off + len));
  return off;
}

/* Checks the header and the CRC; returns where the payload starts. Bytes
** 0-7 (magic, version, CRC of all the rest) mean the same in every
** version, so a newer blob is told from a damaged one. */
static size_t check_head(lua_State *L, const unsigned char *s, size_t n) {
  int crc_ok;
  size_t off;
  if (n == 0) bad_head(L, "empty string", 0, 0);
  if (memcmp(s, "PFS", n < 3 ? n : 3) != 0)
    bad_head(L, "not made by pf.serialize", 0, 0);
  if (n <= HEAD) bad_head(L, "truncated: %I bytes", (lua_Integer)n, 0);
  crc_ok = get32(s + 4) == blob_crc(L, s, n);
  if (crc_ok && s[3] != PF_SERIAL_VERSION)
    luaL_error(L, "pf.deserialize: format version %d is not supported (this "
                  "build reads version %d)", s[3], PF_SERIAL_VERSION);
  off = check_length(L, s, n);
  if (!crc_ok || s[3] != PF_SERIAL_VERSION)
    bad_head(L, "checksum mismatch", 0, 0);
  return off;
}

static int l_deserialize(lua_State *L) {
  Dec d;
  size_t n;
  const unsigned char *s;
  if (lua_type(L, 1) != LUA_TSTRING)
    return luaL_error(L, "pf.deserialize: expected a string (got %s)",
                      luaL_typename(L, 1));
  s = (const unsigned char *)lua_tolstring(L, 1, &n);
  lua_settop(L, 1);
  d.L = L;
  d.s = s;
  d.p = s + check_head(L, s, n);
  d.end = s + n;
  d.nrefs = 0;
  d.budget = n;
  lua_newtable(L);  /* D_REFS */
  dec_value(&d, 0);
  if (d.p != d.end) corrupt(&d, "bytes after the value");
  return 1;
}

/* }======================================================== */


void pf_open_serial(lua_State *L) {
  pf_crc_tables *tab = (pf_crc_tables *)lua_newuserdatauv(L, sizeof *tab, 0);
  pf_crc32_init(tab);
  lua_createtable(L, 0, 2);  /* Buf's metatable */
  lua_pushcfunction(L, buf_free);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, buf_free);
  lua_setfield(L, -2, "__close");
  lua_pushvalue(L, -2);
  lua_pushvalue(L, -2);
  lua_pushcclosure(L, l_serialize, 2);
  lua_setfield(L, -4, "serialize");
  lua_pushvalue(L, -2);
  lua_pushcclosure(L, l_deserialize, 1);
  lua_setfield(L, -4, "deserialize");
  lua_pop(L, 2);
}

/*
** pf.deserialize against hostile input (src/serial.c), without libFuzzer:
** for several valid blobs, every truncation and every single-byte change
** (each must raise: the CRC catches them), then the same changes with the
** length and CRC fixed up so they reach the payload decoder (each must
** raise a "corrupt data" error or decode to a value that serializes
** again), then random payloads behind valid headers and random strings.
** Run under ASan (asan.c.serial) it proves no input reads out of bounds.
** usage: serial_test [random-inputs]   (default 100000)
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "../src/serial.h"
#include "check.h"

static long inputs, decoded;

/* values to serialize: each chunk returns one */
static const char *const samples[] = {
  "return { name = 'x', n = 42, f = -0.0, nan = 0/0, inf = 1/0, ninf = -1/0,"
  "  s = 'bin\\0ary\\255', list = { 1, 2, 3, nil, 5 }, t = true, no = false,"
  "  nested = { a = { b = { c = 1.5 } } }, [1.25] = 'k', [true] = 0 }",
  "local t = {} t.self = t local k = { 1 } t[k] = k t.k2 = k t[t] = t return t",
  "local t = {} local c = t for i = 1, 40 do c.a = { i } c = c.a end return t",
  "return { string.rep('long string ', 30), math.mininteger, math.maxinteger,"
  "  -1, 127, 128, -129, 2^53, 1e-300, { {}, {}, { {} } } }",
  "local r = {} for i = 1, 30 do r[i] = { id = i, v = i * 0.5 } end return r",
  "return 'just a string'", "return nil", "return 7", "return -0.0",
};

typedef struct blob {
  unsigned char *s;
  size_t n;
} blob;

/* pushes the result of S(arg) or its error; returns the pcall status */
static int call(lua_State *L, const char *fname, const unsigned char *s,
                size_t n) {
  lua_getglobal(L, "S");
  lua_getfield(L, -1, fname);
  lua_remove(L, -2);
  if (s != NULL) lua_pushlstring(L, (const char *)s, n);
  else lua_insert(L, -2);  /* the value is below the function */
  return lua_pcall(L, 1, 1, 0);
}

static int starts(lua_State *L, const char *prefix) {
  const char *m = lua_tostring(L, -1);
  return m != NULL && strncmp(m, prefix, strlen(prefix)) == 0;
}

/* decodes; a success must serialize and decode again. 1 when decoded */
static int try_decode(lua_State *L, const unsigned char *s, size_t n) {
  int ok = call(L, "deserialize", s, n) == LUA_OK;
  inputs++;
  if (!ok) {
    if (!starts(L, "pf.deserialize: corrupt data (") &&
        !starts(L, "pf.deserialize: format version")) {
      size_t i;
      fprintf(stderr, "unexpected error: %s\ninput:", lua_tostring(L, -1));
      for (i = 0; i < n; i++) fprintf(stderr, " %02x", s[i]);
      fprintf(stderr, "\n");
      failures++;
    }
    lua_pop(L, 1);
    return 0;
  }
  decoded++;
  CHECK(call(L, "serialize", NULL, 0) == LUA_OK);
  CHECK(lua_type(L, -1) == LUA_TSTRING);
  if (lua_type(L, -1) == LUA_TSTRING) {
    size_t m;
    const unsigned char *t = (const unsigned char *)lua_tolstring(L, -1, &m);
    CHECK(call(L, "deserialize", t, m) == LUA_OK);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return 1;
}

static void must_fail(lua_State *L, const unsigned char *s, size_t n) {
  CHECK(try_decode(L, s, n) == 0);
}

/* A blob around payload p (HEAD = 8 bytes, varint length, payload). */
static blob wrap(const pf_crc_tables *tab, const unsigned char *p, size_t m,
                 unsigned char version) {
  blob b;
  size_t k = 8, v = m;
  uint32_t crc;
  b.s = (unsigned char *)malloc(m + 18);
  memcpy(b.s, "PFS", 3);
  b.s[3] = version;
  for (; v >= 0x80; v >>= 7) b.s[k++] = (unsigned char)(v | 0x80);
  b.s[k++] = (unsigned char)v;
  memcpy(b.s + k, p, m);
  b.n = k + m;
  crc = pf_crc32(tab, pf_crc32(tab, 0, b.s, 4), b.s + 8, b.n - 8);
  b.s[4] = (unsigned char)crc;
  b.s[5] = (unsigned char)(crc >> 8);
  b.s[6] = (unsigned char)(crc >> 16);
  b.s[7] = (unsigned char)(crc >> 24);
  return b;
}

static size_t payload_at(const blob *b) {
  size_t k = 8;
  while (b->s[k] & 0x80) k++;
  return k + 1;
}

static uint64_t next_rand(uint64_t *x) {
  *x ^= *x << 13;
  *x ^= *x >> 7;
  *x ^= *x << 17;
  return *x;
}

/* truncations and single-byte changes, raw then with the CRC fixed */
static void sweep(lua_State *L, const pf_crc_tables *tab, const blob *b) {
  size_t i, off = payload_at(b), m = b->n - off;
  unsigned char *c = (unsigned char *)malloc(b->n);
  unsigned x;
  for (i = 0; i < b->n; i++) must_fail(L, b->s, i);
  for (i = 0; i < b->n; i++) {
    memcpy(c, b->s, b->n);
    for (x = 1; x < 256; x++) {
      c[i] = (unsigned char)(b->s[i] ^ x);
      must_fail(L, c, b->n);
    }
  }
  for (i = 0; i <= m; i++) {  /* payload cut at i, header fixed */
    blob w = wrap(tab, b->s + off, i, PF_SERIAL_VERSION);
    if (i < m) must_fail(L, w.s, w.n);
    else CHECK(try_decode(L, w.s, w.n) == 1);
    free(w.s);
  }
  for (i = 0; i < m; i++) {
    memcpy(c, b->s + off, m);
    for (x = 1; x < 256; x++) {
      blob w;
      c[i] = (unsigned char)(b->s[off + i] ^ x);
      w = wrap(tab, c, m, PF_SERIAL_VERSION);
      try_decode(L, w.s, w.n);
      free(w.s);
    }
  }
  free(c);
}

/* payloads of random bytes, or of a valid payload with random bytes in */
static void random_inputs(lua_State *L, const pf_crc_tables *tab,
                          const blob *bs, int nb, long count) {
  uint64_t seed = 0x9e3779b97f4a7c15u;
  unsigned char buf[512];
  long k;
  for (k = 0; k < count; k++) {
    size_t n = next_rand(&seed) % sizeof buf, i;
    const blob *b = &bs[k % nb];
    blob w;
    if (k % 3 == 0) {  /* a real payload, a few bytes changed */
      size_t off = payload_at(b);
      n = b->n - off < sizeof buf ? b->n - off : sizeof buf;
      memcpy(buf, b->s + off, n);
      for (i = next_rand(&seed) % 4 + 1; i > 0 && n > 0; i--)
        buf[next_rand(&seed) % n] = (unsigned char)next_rand(&seed);
    } else {
      for (i = 0; i < n; i++) buf[i] = (unsigned char)next_rand(&seed);
    }
    if (k % 7 == 0) {
      must_fail(L, buf, n);  /* no header at all */
      continue;
    }
    w = wrap(tab, buf, n, PF_SERIAL_VERSION);
    try_decode(L, w.s, w.n);
    free(w.s);
  }
}

/* an allocator that counts live bytes (ud: a size_t) */
static void *counting_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  size_t *live = (size_t *)ud;
  if (ptr != NULL) *live -= osize;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  ptr = realloc(ptr, nsize);
  if (ptr != NULL) *live += nsize;
  else if (osize > 0) *live += osize;  /* the old block stays */
  return ptr;
}

/* A failing serialize frees its output buffer before pcall returns (a
** to-be-closed slot), not at some later collection; a non-NULL light
** userdata is refused like userdata. */
static void check_error_frees(void) {
  size_t live = 0, before;
  lua_State *L = lua_newstate(counting_alloc, &live);
  lua_newtable(L);
  pf_open_serial(L);
  lua_getfield(L, -1, "serialize");
  lua_gc(L, LUA_GCSTOP);
  lua_createtable(L, 2, 0);
  lua_pushlightuserdata(L, &live);
  lua_rawseti(L, -2, 2);
  luaL_checkstack(L, 1, NULL);
  lua_pushlstring(L, NULL, 0);
  {
    luaL_Buffer B;  /* a 4 MB string at t[1] */
    char *p = luaL_buffinitsize(L, &B, 4 << 20);
    memset(p, 'x', 4 << 20);
    luaL_pushresultsize(&B, 4 << 20);
  }
  lua_rawseti(L, -3, 1);
  lua_pop(L, 1);
  before = live;
  lua_pushvalue(L, -2);
  lua_pushvalue(L, -2);
  CHECK(lua_pcall(L, 1, 1, 0) != LUA_OK);
  CHECK(strcmp(lua_tostring(L, -1),
               "pf.serialize: cannot serialize value[2] (userdata)") == 0);
  CHECK(live < before + 65536);  /* the 8 MB buffer is gone */
  lua_close(L);
  CHECK(live == 0);
}

static void check_crc(void) {
  static pf_crc_tables tab;
  const unsigned char *s = (const unsigned char *)"123456789";
  pf_crc32_init(&tab);
  CHECK(pf_crc32(&tab, 0, s, 9) == 0xcbf43926u);
  CHECK(pf_crc32(&tab, pf_crc32(&tab, 0, s, 5), s + 5, 4) == 0xcbf43926u);
  CHECK(pf_crc32(&tab, 0, s, 0) == 0);
}

int main(int argc, char **argv) {
  static pf_crc_tables tab;
  long count = argc > 1 ? atol(argv[1]) : 100000;
  int nb = (int)(sizeof samples / sizeof samples[0]), i;
  blob *bs = (blob *)calloc((size_t)nb, sizeof *bs);
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  lua_newtable(L);
  pf_open_serial(L);
  lua_setglobal(L, "S");
  check_crc();
  check_error_frees();
  pf_crc32_init(&tab);
  for (i = 0; i < nb; i++) {
    size_t n;
    const char *s;
    CHECK(luaL_dostring(L, samples[i]) == LUA_OK);
    CHECK(call(L, "serialize", NULL, 0) == LUA_OK);
    s = lua_tolstring(L, -1, &n);
    bs[i].s = (unsigned char *)malloc(n);
    memcpy(bs[i].s, s, n);
    bs[i].n = n;
    lua_pop(L, 1);
    CHECK(try_decode(L, bs[i].s, n) == 1);
    sweep(L, &tab, &bs[i]);
  }
  random_inputs(L, &tab, bs, nb, count);
  for (i = 0; i < nb; i++) free(bs[i].s);
  free(bs);
  CHECK(lua_gettop(L) == 0);
  lua_close(L);
  printf("serial_test: %ld inputs, %ld decoded to a value, %d failures\n",
         inputs, decoded, failures);
  return failures ? 1 : 0;
}

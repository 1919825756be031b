/*
** The hot path of trace = file (lua/pocketflow/trace.lua): a span's JSON
** line goes from its pieces to the trace file's stdio buffer in one
** fwrite, with no Lua string made for the line or its numbers (the
** number formatting and the concatenation were half a span's cost).
*/
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "pf.h"
#include "pf_sched.h"

#define LINE_MAX_BUF 1024

typedef struct line_out {
  FILE *f;
  int err;        /* errno of the first failed fwrite, or 0 */
  size_t n;
  char b[LINE_MAX_BUF];
} line_out;

static void out_flush(line_out *o) {
  if (o->n > 0 && fwrite(o->b, 1, o->n, o->f) != o->n && o->err == 0)
    o->err = errno ? errno : EIO;
  o->n = 0;
}

static void out_add(line_out *o, const char *s, size_t len) {
  if (len > sizeof o->b - o->n) {
    out_flush(o);
    if (len > sizeof o->b) {  /* a huge piece goes as it is */
      if (fwrite(s, 1, len, o->f) != len && o->err == 0) o->err = errno ? errno : EIO;
      return;
    }
  }
  memcpy(o->b + o->n, s, len);
  o->n += len;
}

/* decimal digits of v, two at a time, without snprintf */
static void out_integer(line_out *o, lua_Integer v) {
  static const char pairs[] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";
  char d[24];
  char *p = d + sizeof d;
  lua_Unsigned u = v < 0 ? 0u - (lua_Unsigned)v : (lua_Unsigned)v;
  while (u >= 100) {
    p -= 2;
    memcpy(p, pairs + 2 * (u % 100), 2);
    u /= 100;
  }
  if (u >= 10) {
    p -= 2;
    memcpy(p, pairs + 2 * u, 2);
  } else {
    *--p = (char)('0' + u);
  }
  if (v < 0) *--p = '-';
  out_add(o, p, (size_t)(d + sizeof d - p));
}

/* writes the line; true, or nil and the message of the first failure */
static int write_out(lua_State *L, line_out *o) {
  out_flush(o);
  if (o->err != 0) {
    luaL_pushfail(L);
    lua_pushstring(L, strerror(o->err));
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* unix nanoseconds of the loop time at argument i: offset + floor(t *
** 1e9), as the Lua expression with math.floor gives it */
static lua_Integer nanos(lua_State *L, int i, lua_Integer offset) {
  lua_Number x = floor(luaL_checknumber(L, i) * 1e9);
  luaL_argcheck(L, x >= -9.2e18 && x <= 9.2e18, i, "time out of range");
  return (lua_Integer)((lua_Unsigned)offset + (lua_Unsigned)(lua_Integer)x);
}

#define ADD(o, lit) out_add(o, lit, sizeof(lit) - 1)

static void out_string(line_out *o, lua_State *L, int i) {
  size_t len;
  const char *p = lua_tolstring(L, i, &len);
  out_add(o, p, len);
}

/* an optional attribute: nothing for nil, else key, value and a comma;
** the value an integer or a string of JSON (check_value) */
static void out_attr(line_out *o, lua_State *L, int i, const char *key, size_t klen) {
  if (lua_isnil(L, i)) return;
  out_add(o, key, klen);
  if (lua_type(L, i) == LUA_TSTRING) out_string(o, L, i);
  else out_integer(o, lua_tointeger(L, i));
  ADD(o, ",");
}

/* the arguments of a span writer; A_ATTEMPT and A_ITEM are values */
enum { A_HEAD = 1, A_SPAN, A_PARENT, A_NAME, A_OFFSET, A_START, A_END,
       A_STATUS, A_ATTEMPT, A_FALLBACK, A_ITEM, A_KIND, A_PATH, A_TAIL,
       A_LAST, A_N = A_LAST };

/* an integer stays, nil stays, any other value becomes the string of
** JSON the writer's to_json (upvalue 2) makes of it */
static void check_value(lua_State *L, int i) {
  if (lua_isnil(L, i) || lua_isinteger(L, i)) return;
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_pushvalue(L, i);
  lua_call(L, 1, 1);
  if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "trace: to_json gave no string");
  lua_replace(L, i);
}

static void check_span_args(lua_State *L) {
  static const int strings[] = { A_HEAD, A_SPAN, A_PARENT, A_NAME, A_STATUS,
                                 A_KIND, A_PATH, A_TAIL, A_LAST };
  size_t i;
  for (i = 0; i < sizeof strings / sizeof strings[0]; i++)
    luaL_checktype(L, strings[i], LUA_TSTRING);
  check_value(L, A_ATTEMPT);
  check_value(L, A_ITEM);
}

static void out_fields(line_out *o, lua_State *L, lua_Integer start, lua_Integer end) {
  out_string(o, L, A_HEAD);
  out_string(o, L, A_SPAN);
  ADD(o, "\",\"parent_span_id\":\"");
  out_string(o, L, A_PARENT);
  ADD(o, "\",\"name\":");
  out_string(o, L, A_NAME);
  ADD(o, ",\"start_time_unix_nano\":");
  out_integer(o, start);
  ADD(o, ",\"end_time_unix_nano\":");
  out_integer(o, end);
  ADD(o, ",\"status\":");
  out_string(o, L, A_STATUS);
  ADD(o, ",\"attributes\":{");
  out_attr(o, L, A_ATTEMPT, "\"pf.attempt\":", 13);
  if (lua_toboolean(L, A_FALLBACK)) ADD(o, "\"pf.fallback\":true,");
  out_attr(o, L, A_ITEM, "\"pf.item\":", 10);
  ADD(o, "\"pf.kind\":\"");
  out_string(o, L, A_KIND);
  ADD(o, "\",");
  out_string(o, L, A_PATH);
  out_string(o, L, A_TAIL);
  out_string(o, L, A_LAST);
}

/* writer(head, span_id, parent_id, name, offset, start, end, status,
** attempt, fallback, item, kind, path, tail, last): one JSON line of
** trace = file (lua/pocketflow/trace.lua, file_handler, says what each
** piece is) written to the writer's file. Returns true, or nil and the
** system's message (as file:write). */
static int write_span(lua_State *L) {
  luaL_Stream *s = (luaL_Stream *)lua_touserdata(L, lua_upvalueindex(1));
  lua_Integer offset = luaL_checkinteger(L, A_OFFSET), start, end;
  line_out o;
  if (s->closef == NULL) return luaL_error(L, "attempt to use a closed file");
  lua_settop(L, A_N);
  check_span_args(L);   /* a bad call writes nothing */
  start = nanos(L, A_START, offset);
  end = nanos(L, A_END, offset);
  o.f = s->f, o.err = 0, o.n = 0;
  errno = 0;
  out_fields(&o, L, start, end);
  return write_out(L, &o);
}

/* core.span_writer(file, to_json) -> writer, bound to an open Lua file */
static int l_span_writer(lua_State *L) {
  luaL_checkudata(L, 1, LUA_FILEHANDLE);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 2);
  lua_pushcclosure(L, write_span, 2);
  return 1;
}

/* core.spawn_detached(fn) -> task: a task of no parent, as pf.spawn
** outside any task makes. The OTLP sink's sender and timer: a child of
** the task whose span filled a batch would be cancelled with it (a
** sibling's failure in a parallel batch), losing the batch. The running
** pf.run still waits for it. */
static int l_spawn_detached(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  pf_spawn_task(L, NULL, 0);
  return 1;
}

void pf_open_trace(lua_State *L) {
  static const luaL_Reg fns[] = {
    {"span_writer", l_span_writer}, {"spawn_detached", l_spawn_detached},
    {NULL, NULL}
  };
  luaL_setfuncs(L, fns, 0);
}

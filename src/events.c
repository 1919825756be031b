/*
** The event bus, C side: the flag the walk tests, the call into the
** bus (lua/pocketflow/events.lua), and the call of a handler, made
** without a continuation so that a handler cannot wait.
*/
#include <string.h>
#include <unistd.h>

#include "events.h"
#include "walk.h"

static const char DISPATCH_KEY = 0;  /* registry: the bus's dispatch(ev) */
static const char HOOKS_KEY = 0;     /* registry: the bus's walk hooks */
enum { H_GUARD = 1, H_FINISH, H_BARS };  /* events.lua, set_hooks */

/* Pushes a new event table { type = type } and returns 1 when someone
** listens; pushes nothing and returns 0 otherwise. */
int pf_event_begin(lua_State *L, const char *type) {
  pf_sched *S = pf_sched_get(L);
  if (S == NULL || !S->events) return 0;
  lua_createtable(L, 0, 16);  /* room for what the bus adds */
  lua_pushstring(L, type);
  lua_setfield(L, -2, "type");
  return 1;
}

/* Hands the event table at the top to the bus and pops it. The bus fills
** t, run_id, span_id, parent_id, dur and catches its handlers' errors;
** an error of the bus itself becomes a warning. */
void pf_emit(lua_State *L) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &DISPATCH_KEY);
  if (!lua_isfunction(L, -1)) {
    lua_pop(L, 2);
    return;
  }
  lua_insert(L, -2);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    lua_pushfstring(L, "event bus failed: %s", pf_tostring(L, -1));
    pf_warn(L, lua_tostring(L, -1));
    lua_pop(L, 3);  /* the error, its string form, the message */
  }
}

/* core.set_dispatch(fn | nil): fn while anyone listens, else nil */
static int l_set_dispatch(lua_State *L) {
  pf_sched *S = pf_sched_get(L);
  lua_settop(L, 1);
  if (!lua_isnil(L, 1)) luaL_checktype(L, 1, LUA_TFUNCTION);
  S->events = !lua_isnil(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &DISPATCH_KEY);
  return 0;
}

/* core.listening(): the flag the walk tests */
static int l_listening(lua_State *L) {
  pf_sched *S = pf_sched_get(L);
  lua_pushboolean(L, S != NULL && S->events);
  return 1;
}

/* core.event(ev): what the walk does, for the Lua side and the specs */
static int l_event(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  pf_emit(L);
  return 0;
}

/* core.event_new(type) -> the table pf_event_begin makes, or nil when
** nobody listens: the walk's own steps, for Lua code and the bench */
static int l_event_new(lua_State *L) {
  if (!pf_event_begin(L, luaL_checkstring(L, 1))) lua_pushnil(L);
  return 1;
}

static int call_handler(lua_State *L);

/* Whether a handler is being called on L: then a wait fails with the
** handlers' own message (api.c, pf_check_yield). Only on that error path. */
int pf_in_handler(lua_State *L) {
  lua_Debug ar;
  int level;
  for (level = 0; lua_getstack(L, level, &ar); level++) {
    lua_CFunction f;
    lua_getinfo(L, "f", &ar);
    f = lua_tocfunction(L, -1);
    lua_pop(L, 1);
    if (f == call_handler) return 1;
  }
  return 0;
}

/* core.call_handler(fn, ev) -> true | false, message. lua_pcall with no
** continuation: the stack is not yieldable while fn runs. */
static int call_handler(lua_State *L) {
  lua_settop(L, 2);
  if (lua_pcall(L, 1, 0, 0) == LUA_OK) {
    lua_pushboolean(L, 1);
    return 1;
  }
  pf_tostring(L, -1);  /* pushes the message */
  lua_pushboolean(L, 0);
  lua_insert(L, -2);
  return 2;
}

/* core.warn(msg): a warning through pf.on_warning */
static int l_warn(lua_State *L) {
  pf_warn(L, luaL_checkstring(L, 1));
  return 0;
}

/* core.task_threads(): the current task's thread, then those of the tasks
** above it; nothing outside a task. Spans follow the task tree. */
static int l_task_threads(lua_State *L) {
  pf_task *t = pf_current(L);
  int n = 0;
  for (; t != NULL; t = t->parent) {
    if (t->co == NULL) continue;
    luaL_checkstack(L, 1, "task_threads");
    lua_pushthread(t->co);
    lua_xmove(t->co, L, 1);
    n++;
  }
  return n;
}

/* core.wall(): the wall clock in seconds, for the traces' unix times */
static int l_wall(lua_State *L) {
  uv_timeval64_t tv;
  if (uv_gettimeofday(&tv) != 0) return luaL_error(L, "clock failed");
  lua_pushinteger(L, (lua_Integer)tv.tv_sec);
  lua_pushinteger(L, (lua_Integer)tv.tv_usec);
  return 2;
}

/* core.set_hooks(guard, finish, bars): the bus's functions the walk
** calls (events.lua) */
static int l_set_hooks(lua_State *L) {
  int i;
  lua_settop(L, 3);
  lua_createtable(L, 3, 0);
  for (i = 1; i <= 3; i++) {
    luaL_checktype(L, i, LUA_TFUNCTION);
    lua_pushvalue(L, i);
    lua_rawseti(L, -2, i);
  }
  lua_rawsetp(L, LUA_REGISTRYINDEX, &HOOKS_KEY);
  return 0;
}

/* core.set_env_sinks(on): PF_TRACE or PF_PROGRESS asks every run for
** sinks, listeners or not */
static int l_set_env_sinks(lua_State *L) {
  pf_sched_get(L)->env_sinks = lua_toboolean(L, 1);
  return 0;
}

static int callable(lua_State *L, int idx) {
  int ok;
  if (lua_isfunction(L, idx)) return 1;
  ok = luaL_getmetafield(L, idx, "__call") != LUA_TNIL;
  if (ok) lua_pop(L, 1);
  return ok;
}

/* A value as a bad option shows it: a string quoted, else its type. */
static const char *shown(lua_State *L, int idx) {
  if (lua_type(L, idx) == LUA_TSTRING)
    return lua_pushfstring(L, "\"%s\"", lua_tostring(L, idx));
  return luaL_typename(L, idx);
}

/* Checks run option name (an observing one), its value at vidx, which
** is under the key on top; raises at run's caller. */
void pf_ev_check_option(lua_State *L, const char *name, int vidx) {
  int v = lua_absindex(L, vidx), t = lua_type(L, v), ok;
  const char *want;
  if (strcmp(name, "on_event") == 0) {
    ok = callable(L, v);
    want = "a function";
  } else if (strcmp(name, "trace") == 0) {
    ok = t == LUA_TNIL || (t == LUA_TBOOLEAN && !lua_toboolean(L, v)) ||
         (t == LUA_TSTRING && lua_rawlen(L, v) > 0);
    want = "a file path or an http:// URL";
  } else if (strcmp(name, "capture") == 0) {
    ok = t == LUA_TNIL || t == LUA_TBOOLEAN;
    want = "a boolean";
  } else if (strcmp(name, "progress") == 0) {
    ok = t == LUA_TNIL || t == LUA_TBOOLEAN || callable(L, v) ||
         (t == LUA_TSTRING && strcmp(lua_tostring(L, v), "json") == 0);
    want = "true, \"json\" or a function";
  } else {
    return;   /* not an observing option */
  }
  if (!ok)
    luaL_error(L, "run: %s must be %s (got %s)", name, want, shown(L, v));
}

/* Pushes hook h; returns 0 (nothing pushed) before events.lua set them. */
static int push_hook(lua_State *L, int h) {
  luaL_checkstack(L, 8, "events");
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &HOOKS_KEY) != LUA_TTABLE) {
    lua_pop(L, 1);
    return 0;
  }
  lua_rawgeti(L, -1, h);
  lua_remove(L, -2);
  return 1;
}

/* ------------------------------------------------------- the walk's events
** A walk keeps a guard in its slot GUARD (walk.h), marked to be closed:
** events.lua's record of the spans the walk opened on its thread. Its
** __close ends them, with status error (an error leaving the walk) or
** cancelled (the task's thread reset), and closes the run's sinks; a
** walk that ends normally calls finish instead (pf_ev_walk_end). */

/* Sets the guard of the walk whose frames are about to start: a run (its
** options in slot 4, x) opens a run span and its sinks when it is a new
** run; an item of a parallel batch opens its item span. */
void pf_ev_walk_begin(lua_State *L, int run) {
  pf_task *t = pf_current(L);
  int item = !run && t != NULL && t->group != NULL;
  if (!push_hook(L, H_GUARD)) {
    lua_pushnil(L);
  } else {
    lua_pushstring(L, run ? "run" : item ? "item" : "walk");
    lua_pushvalue(L, 4);   /* x: a run's options */
    lua_pushstring(L, pf_node_name(L, 2));
    if (item) lua_pushinteger(L, t->group_idx);
    else lua_pushnil(L);
    lua_call(L, 4, 1);   /* a run's bad option raises, at the run */
  }
  lua_replace(L, GUARD);
  if (!lua_isnil(L, GUARD)) lua_toclose(L, GUARD);
}

/* The walk ended normally, its result on top: its spans end ok (an item
** then tells its batch's progress), its sinks close. */
void pf_ev_walk_end(lua_State *L) {
  pf_task *t = pf_current(L);
  int n = 2;
  if (!push_hook(L, H_FINISH)) return;
  lua_pushvalue(L, GUARD);
  if (t != NULL && t->group != NULL) {
    lua_Integer total, done, running;
    pf_group_counts(t->group, &total, &done, &running);
    lua_pushinteger(L, done + 1);   /* this one, not counted yet */
    lua_pushinteger(L, total);
    lua_pushinteger(L, running - 1);
    n += 3;
  }
  if (lua_pcall(L, n - 1, 0, 0) != LUA_OK) {
    lua_pushfstring(L, "event bus failed: %s", pf_tostring(L, -1));
    pf_warn(L, lua_tostring(L, -1));
    lua_pop(L, 3);
  }
}

/* Pushes the name of the node at idx: its 'name' as the walk reads
** fields (through __index, the common case of a class's name), else as
** where.c reads it (raw: __name, "node"). */
static void push_node_name(lua_State *L, int idx) {
  if (lua_getfield(L, idx, "name") == LUA_TSTRING) return;
  lua_pop(L, 1);
  lua_pushstring(L, pf_node_name(L, idx));
}

/* A walk that started while nobody listened gets its guard when it
** first emits. */
static void need_guard(lua_State *L) {
  if (lua_isnil(L, GUARD)) pf_ev_walk_begin(L, 0);
}

/* hook: node start. A batch kind with a progress option opens its bars
** first (they listen, so the node_start follows). */
void pf_ev_node_start(lua_State *L, pf_sched *S, int b, int kind) {
  int bars = 0;
  if (kind != PF_K_NODE && kind != PF_K_FLOW) {
    lua_getfield(L, b + F_SELF, "progress");
    if (lua_toboolean(L, -1) && push_hook(L, H_BARS)) {
      lua_insert(L, -2);
      lua_call(L, 1, 1);   /* a bad mode raises, at the node */
      bars = !lua_isnil(L, -1);
    }
    if (!bars) lua_pop(L, 1);
  }
  if (!S->events) {
    if (bars) lua_pop(L, 1);
    return;
  }
  need_guard(L);
  if (!pf_event_begin(L, "node_start")) {
    if (bars) lua_pop(L, 1);
    return;
  }
  push_node_name(L, b + F_SELF);
  lua_setfield(L, -2, "node");
  lua_pushinteger(L, 1);
  lua_setfield(L, -2, "attempt");
  if (bars) {
    lua_insert(L, -2);
    lua_setfield(L, -2, "bars");   /* the bus takes it off */
  }
  pf_emit(L);
}

/* hook: node end, after post: the results go along for capture */
void pf_ev_node_end(lua_State *L, int b) {
  if (!pf_event_begin(L, "node_end")) return;
  push_node_name(L, b + F_SELF);
  lua_setfield(L, -2, "node");
  lua_pushliteral(L, "ok");
  lua_setfield(L, -2, "status");
  lua_pushvalue(L, b + F_PREP);
  lua_setfield(L, -2, "prep_res");
  lua_pushvalue(L, b + F_RES);
  lua_setfield(L, -2, "exec_res");
  pf_emit(L);
}

/* hook: item start and end, of a sequential batch (node or flow) at b */
void pf_ev_item(lua_State *L, int b, lua_Integer i, int start) {
  if (start) need_guard(L);
  if (!pf_event_begin(L, start ? "item_start" : "item_end")) return;
  if (start) {
    push_node_name(L, b + F_SELF);
    lua_setfield(L, -2, "node");
    lua_pushinteger(L, i);
    lua_setfield(L, -2, "item");
  } else {
    lua_pushliteral(L, "ok");
    lua_setfield(L, -2, "status");
  }
  pf_emit(L);
}

/* A batch's progress; node, path and span are its span's (the bus). */
void pf_ev_progress(lua_State *L, lua_Integer done, lua_Integer total,
                    lua_Integer in_flight) {
  if (!pf_event_begin(L, "progress")) return;
  lua_pushinteger(L, done);
  lua_setfield(L, -2, "done");
  lua_pushinteger(L, 0);
  lua_setfield(L, -2, "failed");
  lua_pushinteger(L, total);
  lua_setfield(L, -2, "total");
  lua_pushinteger(L, in_flight);
  lua_setfield(L, -2, "in_flight");
  pf_emit(L);
}

/* the failed attempt's error, as a string, into the event on top */
static void set_error(lua_State *L, int b) {
  pf_tostring(L, b + F_ERROR);
  lua_setfield(L, -2, "error");
}

/* hook: retry wait. attempt: the one that follows the wait */
void pf_ev_retry(lua_State *L, int b, lua_Integer attempt, lua_Number delay) {
  if (!pf_event_begin(L, "retry")) return;
  lua_pushinteger(L, attempt);
  lua_setfield(L, -2, "attempt");
  lua_pushnumber(L, delay);
  lua_setfield(L, -2, "delay");
  set_error(L, b);
  pf_emit(L);
}

/* hook: fallback, after the last attempt (F_FAILS of them) failed */
void pf_ev_fallback(lua_State *L, int b) {
  if (!pf_event_begin(L, "fallback")) return;
  lua_pushinteger(L, lua_tointeger(L, b + F_FAILS));
  lua_setfield(L, -2, "attempt");
  set_error(L, b);
  pf_emit(L);
}

/* core.isatty(fd) */
static int l_isatty(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1);
  lua_pushboolean(L, uv_guess_handle(fd) == UV_TTY);
  return 1;
}

void pf_open_events(lua_State *L) {
  static const luaL_Reg fns[] = {
    {"set_dispatch", l_set_dispatch}, {"event", l_event},
    {"call_handler", call_handler}, {"warn", l_warn},
    {"task_threads", l_task_threads}, {"wall", l_wall},
    {"isatty", l_isatty}, {"listening", l_listening},
    {"event_new", l_event_new}, {"set_hooks", l_set_hooks},
    {"set_env_sinks", l_set_env_sinks}, {NULL, NULL}
  };
  luaL_setfuncs(L, fns, 0);
}

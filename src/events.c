/*
** The event bus, C side: the flag the walk tests, the call into the
** bus (lua/pocketflow/events.lua), and the call of a handler, made
** without a continuation so that a handler cannot wait.
*/
#include <unistd.h>

#include "events.h"
#include "pf_sched.h"

static const char DISPATCH_KEY = 0;  /* registry: the bus's dispatch(ev) */

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
    {"event_new", l_event_new}, {NULL, NULL}
  };
  luaL_setfuncs(L, fns, 0);
}

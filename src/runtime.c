/*
** The runtime functions of pf: sleep, await, spawn, task:wait,
** task:cancel, timeout, gather, now. Each waiting call made outside any
** task runs itself as the main task of an implicit pf.run.
*/

#include "events.h"
#include "pf.h"
#include "pf_sched.h"

static lua_Number check_seconds(lua_State *L, int arg, const char *fname) {
  int isnum;
  lua_Number s = lua_tonumberx(L, arg, &isnum);
  if (!isnum)
    luaL_error(L, "%s: seconds must be a non-negative number (got %s)",
               fname, luaL_typename(L, arg));
  if (!(s >= 0))  /* also NaN */
    luaL_error(L, "%s: seconds must be a non-negative number (got %f)",
               fname, (double)s);
  return s;
}

/* pf.now() */
static int l_now(lua_State *L) {
  lua_pushnumber(L, (lua_Number)uv_hrtime() / 1e9);
  return 1;
}

/* pf.sleep(seconds) */
static int l_sleep(lua_State *L) {
  lua_Number s = check_seconds(L, 1, "pf.sleep");
  pf_task *t = pf_wait_begin(L, "pf.sleep");
  if (t == NULL) return pf_wait_outside(L, l_sleep, "pf.sleep");
  if (s == 0) {
    pf_wait_pass(t);
  } else {
    if (pf_wait_deadline(t, s) < 0)
      return luaL_error(L, "pf.sleep: out of memory");
    pf_wait_park(t, NULL, NULL);
  }
  return pf_wait_yield(L, t, 0, NULL);
}

/* ------------------------------------------------------------- pf.await */

/* t->await_setup: where pf.await's setup function stands */
enum { AWAIT_NONE, AWAIT_SETUP, AWAIT_RESUMED };

static void await_cancel(pf_task *t, void *data) {
  (void)t; (void)data;  /* the resume closure checks the task's state */
}

/* resume(...): the closure pf.await hands out. Wakes the task with the
** arguments once; later or stale calls return false. */
static int await_resume(lua_State *L) {
  pf_task *t = (pf_task *)lua_touserdata(L, lua_upvalueindex(1));
  unsigned seq = (unsigned)lua_tointeger(L, lua_upvalueindex(2));
  int n = lua_gettop(L);
  if (t->state == PF_DONE || t->wait_seq != seq) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (t->state == PF_WAITING && t->cancel == await_cancel) {
    if (!lua_checkstack(t->co, n + LUA_MINSTACK))
      return luaL_error(L, "resume: too many values");
    lua_xmove(L, t->co, n);
    pf_wait_wake(t, n);
  } else if (t->state == PF_RUNNING && t->await_setup == AWAIT_SETUP) {
    /* called before pf.await parked: keep the values for it */
    pf_pack(L, L, n);
    pf_push_task(L, t);
    lua_insert(L, -2);
    lua_setiuservalue(L, -2, PF_UV_AUX);
    t->await_setup = AWAIT_RESUMED;
    t->wait_seq++;
  } else {
    lua_pushboolean(L, 0);
    return 1;
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int l_await(lua_State *L) {
  pf_task *t;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  t = pf_wait_begin(L, "pf.await");
  if (t == NULL) return pf_wait_outside(L, l_await, "pf.await");
  lua_settop(L, 1);
  pf_push_task(L, t);
  lua_pushinteger(L, t->wait_seq);
  lua_pushcclosure(L, await_resume, 2);
  t->await_setup = AWAIT_SETUP;
  /* the setup function itself cannot wait (no continuation) */
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    /* its resume must not count for a later wait of this task */
    t->await_setup = AWAIT_NONE;
    t->wait_seq++;
    pf_push_task(L, t);
    lua_pushnil(L);
    lua_setiuservalue(L, -2, PF_UV_AUX);
    lua_pop(L, 1);
    return lua_error(L);
  }
  if (t->await_setup == AWAIT_RESUMED) {
    t->await_setup = AWAIT_NONE;
    pf_push_task(L, t);
    lua_getiuservalue(L, -1, PF_UV_AUX);
    lua_pushnil(L);
    lua_setiuservalue(L, -3, PF_UV_AUX);
    return pf_unpack(L, -1);
  }
  t->await_setup = AWAIT_NONE;
  pf_wait_park(t, await_cancel, NULL);
  return pf_wait_yield(L, t, 0, NULL);
}

/* ------------------------------------------------------------ tasks */

/* pf.spawn(fn, ...) */
static int l_spawn(lua_State *L) {
  pf_task *t;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  t = pf_spawn_task(L, pf_current(L), lua_gettop(L) - 1);
  t->keep_results = 1;
  return 1;
}

static int wait_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status; (void)ctx;
  return pf_task_outcome(L, (pf_task *)lua_touserdata(L, 1), 1);
}

/* task:wait() */
static int l_wait(lua_State *L) {
  pf_task *t = (pf_task *)luaL_checkudata(L, 1, PF_TASK_MT);
  pf_task *me = pf_current(L);
  lua_settop(L, 1);
  if (me == NULL) {
    if (t->state == PF_DONE) return wait_k(L, LUA_OK, 0);
    return pf_wait_outside(L, l_wait, "task:wait");
  }
  if (t == me) return luaL_error(L, "task:wait: a task cannot wait for itself");
  if (t->state != PF_DONE) {
    pf_wait_begin(L, "task:wait");
    pf_wait_on(me, t);
    return pf_wait_yield(L, me, 0, wait_k);
  }
  return wait_k(L, LUA_OK, 0);
}

/* task:cancel() */
static int l_cancel(lua_State *L) {
  pf_cancel((pf_task *)luaL_checkudata(L, 1, PF_TASK_MT));
  return 0;
}

/* "running", "done", "failed" or "cancelled" */
static const char *status_name(const pf_task *t) {
  static const char *const names[] = {"running", "done", "failed",
                                      "cancelled"};
  return t->state == PF_DONE ? names[t->outcome] : names[0];
}

static int l_task_tostring(lua_State *L) {
  pf_task *t = (pf_task *)luaL_checkudata(L, 1, PF_TASK_MT);
  lua_pushfstring(L, "pocketflow.task (%s): %p", status_name(t), t);
  return 1;
}

/* task:status() */
static int l_status(lua_State *L) {
  pf_task *t = (pf_task *)luaL_checkudata(L, 1, PF_TASK_MT);
  lua_pushstring(L, status_name(t));
  return 1;
}

/* ---------------------------------------------------------- pf.timeout */

static int timeout_k(lua_State *L, int status, lua_KContext ctx) {
  pf_task *me = pf_current(L);
  pf_task *child = (pf_task *)lua_touserdata(L, 2);
  (void)status; (void)ctx;
  if (me->timed_out) {
    me->timed_out = 0;
    pf_cancel(child);
    pf_forget_lost(L, child->S, 2);  /* it may have failed since: not reported */
    return luaL_error(L, "pf.timeout: timeout after %f s",
                      (double)lua_tonumber(L, 1));
  }
  return pf_task_outcome(L, child, 2);
}

/* pf.timeout(seconds, fn, ...) */
static int l_timeout(lua_State *L) {
  lua_Number s = check_seconds(L, 1, "pf.timeout");
  pf_task *me, *child;
  luaL_checktype(L, 2, LUA_TFUNCTION);
  me = pf_wait_begin(L, "pf.timeout");
  if (me == NULL) return pf_wait_outside(L, l_timeout, "pf.timeout");
  child = pf_spawn_task(L, me, lua_gettop(L) - 2);
  child->keep_results = 1;
  if (pf_wait_deadline(me, s) < 0) {
    pf_cancel(child);
    return luaL_error(L, "pf.timeout: out of memory");
  }
  pf_wait_on(me, child);
  return pf_wait_yield(L, me, 0, timeout_k);
}

/* ----------------------------------------------------------- pf.gather */

static int gather_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status; (void)ctx;
  return pf_group_finish(L, 2);
}

/* pf.gather({fn, ...}) */
static int l_gather(lua_State *L) {
  lua_Integer i, n;
  pf_task *me;
  luaL_checktype(L, 1, LUA_TTABLE);
  n = (lua_Integer)lua_rawlen(L, 1);
  for (i = 1; i <= n; i++) {
    if (lua_rawgeti(L, 1, i) != LUA_TFUNCTION)
      return luaL_error(L, "pf.gather: item %d is a %s, not a function",
                        (int)i, luaL_typename(L, -1));
    lua_pop(L, 1);
  }
  me = pf_wait_begin(L, "pf.gather");
  if (me == NULL) return pf_wait_outside(L, l_gather, "pf.gather");
  lua_settop(L, 1);
  if (pf_group_start(L, PF_G_GATHER, 1, 0, 0, 0, 0))
    return pf_wait_yield(L, me, 0, gather_k);
  return gather_k(L, LUA_OK, 0);
}

/* ----------------------------------------------------------- registry */

static const luaL_Reg task_methods[] = {
  {"wait", l_wait},
  {"cancel", l_cancel},
  {"status", l_status},
  {NULL, NULL}
};

static const luaL_Reg runtime_funcs[] = {
  {"spawn", l_spawn},
  {"gather", l_gather},
  {"sleep", l_sleep},
  {"await", l_await},
  {"timeout", l_timeout},
  {"now", l_now},
  {NULL, NULL}
};

void pf_open_runtime(lua_State *L) {
  if (luaL_newmetatable(L, PF_TASK_MT)) {
    luaL_newlib(L, task_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_task_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, runtime_funcs, 0);
}

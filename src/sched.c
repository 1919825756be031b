/*
** The scheduler: one per Lua state. Tasks are Lua threads owned by a
** task userdata; every wait parks the task (state WAITING, with one
** cancel fn) and whatever completes the wait calls pf_wait_wake, which
** puts it on the ready list (the protocol: pf_sched.h). One uv_idle
** drains the ready list: every task is resumed from this flat driver,
** never from inside another resume.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <luv/luv.h>

#include "pf.h"
#include "pf_sched.h"
#include "io/buf.h"

static const char SCHED_KEY = 'S';
static const char WARN_KEY = 'W';

#define POOL_MAX 4096

pf_sched *pf_sched_get(lua_State *L) {
  pf_sched *S;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &SCHED_KEY);
  S = (pf_sched *)lua_touserdata(L, -1);
  lua_pop(L, 1);
  return S;
}

/* The task running on L, or NULL. Only one task runs at a time, so it
** is the one being resumed, if L is its thread: a coroutine of the
** user's inside a task is not a task. (Thread extra space would be
** cheaper, but threads made before the module loaded hold garbage there.) */
pf_task *pf_current(lua_State *L) {
  pf_sched *S = pf_sched_get(L);
  pf_task *t = S ? S->current : NULL;
  return (t && t->co == L) ? t : NULL;
}

uv_loop_t *pf_loop(lua_State *L) {
  return pf_sched_get(L)->loop;
}

static int loop_busy(pf_sched *S) {
  return S->running > 0 || luv_context(S->L)->mode != -1;
}

/* True where a waiting call may start the loop itself: the main thread,
** with no loop running (not from a luv callback, not from a coroutine of
** the user's). */
static int pf_outside(lua_State *L) {
  pf_sched *S = pf_sched_get(L);
  return L == S->L && !loop_busy(S);
}

/* Raises the error of a waiting call made where no task runs. */
static int not_in_task(lua_State *L, const char *fname) {
  pf_sched *S = pf_sched_get(L);
  if (S->closing)
    return luaL_error(L, "%s: cannot wait in a __close of a task that failed "
                         "or was cancelled: its variables are closed after "
                         "the task ended", fname);
  return luaL_error(L, "%s: not inside a pocketflow task; use pf.spawn or "
                       "pf.run to start one", fname);
}

/* ---------------------------------------------------------------- ready */

static void idle_cb(uv_idle_t *h);

static void ready_push(pf_sched *S, pf_list *n) {
  pf_list_push_tail(&S->ready, n);
  if (!uv_is_active((uv_handle_t *)S->idle))
    uv_idle_start(S->idle, idle_cb);
}

static void make_ready(pf_task *t, int nvalues) {
  t->state = PF_READY;
  t->nresume = nvalues;
  ready_push(t->S, &t->ready);
}

/* ---------------------------------------------------------- the wait */

/* The task running on L, its stack checked for a yield; NULL outside
** any task. Waits need a yieldable stack: checked before anything is
** registered. */
/* Whether an event handler runs on L (events.c tells): its waits fail
** with the handlers' own message. Asked on error paths only. */
static int in_handler(lua_State *L) {
  pf_sched *S = pf_sched_get(L);
  return S != NULL && S->in_handler != NULL && S->in_handler(L);
}

pf_task *pf_wait_begin(lua_State *L, const char *fname) {
  pf_task *t = pf_current(L);
  if (!lua_isyieldable(L) && in_handler(L))
    luaL_error(L, "%s: event handlers may not wait; use pf.spawn", fname);
  if (t != NULL && !lua_isyieldable(L))
    luaL_error(L, "%s: cannot wait here: a C function that cannot "
                  "yield is on the stack (table.sort comparator, "
                  "string.gsub callback, __tostring, require)", fname);
  return t;
}

void pf_wait_park(pf_task *t, pf_cancel_fn fn, void *data) {
  t->state = PF_WAITING;
  t->cancel = fn;
  t->cancel_data = data;
  t->timed_out = 0;
}

/* The wait of t also ends after 'seconds' (set before pf_wait_park or
** pf_wait_on): then its cancel fn runs and t wakes with 'timed_out'. */
int pf_wait_deadline(pf_task *t, double seconds) {
  return pf_sleep_push(&t->S->sleeps, &t->sleep, pf_ms_from_seconds(seconds));
}

/* No wait: the task goes behind the tasks ready now (pf.sleep(0)). */
void pf_wait_pass(pf_task *t) {
  make_ready(t, 0);
}

void pf_wait_wake(pf_task *t, int nvalues) {
  t->cancel = NULL;
  t->cancel_data = NULL;
  t->wait_seq++;
  make_ready(t, nvalues);
}

/* Wakes t with the values push(L) returns, called under a pcall on the
** scheduler's state with 'ud' as its argument: a libuv callback runs
** outside any pcall, and an error there (out of memory) would cross
** uv_run. If making them fails, t wakes with that error instead, which
** its wait raises (guard_k): the error on t's stack (wake_error 1), or
** Lua's own memory message when even that has no room (2). */
void pf_wait_wake_with(pf_task *t, lua_CFunction push, void *ud) {
  lua_State *L = t->S->L, *co = t->co;
  int top = lua_gettop(L), n, status = LUA_ERRMEM;
  if (lua_checkstack(L, 2)) {
    lua_pushcfunction(L, push);
    lua_pushlightuserdata(L, ud);
    status = lua_pcall(L, 1, LUA_MULTRET, 0);
  }
  n = lua_gettop(L) - top;
  if (status == LUA_OK && lua_checkstack(co, n)) {
    lua_xmove(L, co, n);
    pf_wait_wake(t, n);
    return;
  }
  t->wake_error = 2;
  if (status != LUA_OK && n == 1 && lua_checkstack(co, 1)) {
    lua_xmove(L, co, 1);
    t->wake_error = 1;
  }
  lua_settop(L, top);
  pf_wait_wake(t, t->wake_error == 1);
}

/* the sleep queue's wake-up: the deadline of t's wait has come */
static void deadline_fire(pf_sleepq *q, pf_sleeper *s) {
  pf_task *t = pf_list_entry(s, pf_task, sleep);
  (void)q;
  t->timed_out = 1;
  if (t->cancel) {  /* the event's own cleanup goes with the deadline */
    pf_cancel_fn fn = t->cancel;
    t->cancel = NULL;
    fn(t, t->cancel_data);
  }
  pf_wait_wake(t, 0);
}

/* ---------------------------------------------------------- task records */

/* Pushes on L {n = n, the top n values of 'from'} (L itself or another
** thread), leaving those values where they are. */
void pf_pack(lua_State *L, lua_State *from, int n) {
  int i, base = lua_gettop(from) - n;
  lua_createtable(L, n, 1);
  luaL_checkstack(L, 2, NULL);
  for (i = 1; i <= n; i++) {
    lua_pushvalue(from, base + i);
    lua_xmove(from, L, 1);
    lua_rawseti(L, -2, i);
  }
  lua_pushinteger(L, n);
  lua_setfield(L, -2, "n");
}

/* Pushes the values of the table at idx made by pf_pack; their count. */
int pf_unpack(lua_State *L, int idx) {
  int n, i;
  idx = lua_absindex(L, idx);
  lua_getfield(L, idx, "n");
  n = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  luaL_checkstack(L, n, "too many values");
  for (i = 1; i <= n; i++) lua_rawgeti(L, idx, i);
  return n;
}

void pf_push_task(lua_State *L, pf_task *t) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->S->anchors);
  lua_rawgeti(L, -1, t->anchor);
  lua_remove(L, -2);
}

/* The pool's array is sized ahead, in pf_spawn_task where an error is
** still harmless, so that returning a thread to it (release_thread, at
** the end of a task, where nothing may fail) never allocates. */
static void grow_pool(lua_State *L, pf_sched *S) {
  int cap = S->pool_cap ? 2 * S->pool_cap : 16, i;
  if (cap > POOL_MAX) cap = POOL_MAX;
  luaL_checkstack(L, 3, "spawning a task");
  lua_createtable(L, cap, 0);
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->pool);
  for (i = 1; i <= S->pool_n; i++) {
    lua_rawgeti(L, -1, i);
    lua_rawseti(L, -3, i);
  }
  lua_pop(L, 1);
  lua_rawseti(L, LUA_REGISTRYINDEX, S->pool);
  S->pool_cap = cap;
}

static lua_State *take_thread(lua_State *L, pf_sched *S) {
  lua_State *co;
  if (S->pool_n > 0) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, S->pool);
    lua_rawgeti(L, -1, S->pool_n);
    lua_pushnil(L);
    lua_rawseti(L, -3, S->pool_n--);
    lua_remove(L, -2);
    co = lua_tothread(L, -1);
    /* user code may have resumed a pooled thread: take only clean ones */
    if (lua_status(co) == LUA_OK && lua_gettop(co) == 0) return co;
    lua_pop(L, 1);
    co = lua_newthread(L);
  } else {
    co = lua_newthread(L);
  }
  return co;  /* left on L's stack */
}

/* Warns about the error a __close raised; protected: ending a task must
** not fail. */
static int close_warning_f(lua_State *L) {
  const char *what = (const char *)lua_touserdata(L, 1);
  pf_tostring(L, 2);
  lua_pushfstring(L, "error closing a variable of a %s task: %s", what,
                  lua_tostring(L, -1));
  pf_warn(L, lua_tostring(L, -1));
  return 0;
}

/* Resets co, closing its pending to-be-closed variables; an error a
** __close raises is warned about. After an error, 5.4.4's reset returns
** that error again (its status, and its value unless a __close raised
** another): only a new value is warned about, and a memory error, whose
** value Lua replaces with its own message, never. */
static void reset_thread(pf_sched *S, pf_task *t, lua_State *co) {
  lua_State *L = S->L;
  int before = lua_gettop(L), died = lua_status(co), status;
  pf_task *outer = S->closing;
  if (t->outcome == PF_ERROR) {
    lua_pushvalue(co, -1);
    lua_xmove(co, L, 1);
  }
  S->closing = t;
  if ((status = lua_resetthread(co)) != LUA_OK) {
    lua_pushvalue(co, -1);
    lua_xmove(co, L, 1);
    /* a memory error comes back as Lua's own message, not the task's
    ** value (which has its traceback): the same error */
    if (status == LUA_ERRMEM && died == LUA_ERRMEM) {
      S->closing = outer;
      lua_settop(L, before);
      return;
    }
    if (lua_gettop(L) == before + 1 || !lua_rawequal(L, -1, -2)) {
      lua_pushcfunction(L, close_warning_f);
      lua_pushlightuserdata(L, (void *)(t->outcome == PF_ERROR ? "failed"
                                                               : "cancelled"));
      lua_pushvalue(L, -3);
      lua_pcall(L, 2, 0, 0);   /* a failure (memory) loses the warning */
    }
  }
  S->closing = outer;
  lua_settop(L, before);
}

/* A finished thread goes back to the pool if it ended normally. One that
** failed or was cancelled is reset, which closes its pending to-be-closed
** variables, and dropped: 5.4.4's reset leaves the error handler of a
** pcall it was waiting in (L->errfunc) set, and a later task on that
** thread would call that stale handler on its first error. */
static void release_thread(pf_sched *S, pf_task *t, int reset) {
  lua_State *L = S->L, *co = t->co;
  t->co = NULL;
  if (reset) reset_thread(S, t, co);
  lua_settop(co, 0);
  pf_push_task(L, t);
  if (!reset && S->pool_n < S->pool_cap) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, S->pool);
    lua_pushthread(co);
    lua_xmove(co, L, 1);
    lua_rawseti(L, -2, ++S->pool_n);
    lua_pop(L, 1);
  }
  lua_pushnil(L);
  lua_setiuservalue(L, -2, PF_UV_THREAD);
  lua_pop(L, 1);
}

static void unanchor_if_free(pf_sched *S, pf_task *t) {
  if (t->state == PF_DONE && pf_list_empty(&t->children) &&
      t->anchor != LUA_NOREF) {
    lua_rawgeti(S->L, LUA_REGISTRYINDEX, S->anchors);
    luaL_unref(S->L, -1, t->anchor);
    lua_pop(S->L, 1);
    t->anchor = LUA_NOREF;
  }
}

static void link_child(pf_task *parent, pf_task *t) {
  t->parent = parent;
  pf_list_push_head(&parent->children, &t->sibling);
}

static void unlink_from_parent(pf_sched *S, pf_task *t) {
  pf_task *p = t->parent;
  if (p == NULL) return;
  pf_list_remove(&t->sibling);
  t->parent = NULL;
  unanchor_if_free(S, p);
}

/* Creates a task whose body is the function below the top 'nargs' values
** of L (all popped), child of 'parent' (NULL for a root task), ready to
** run. Leaves the task userdata on L. */
pf_task *pf_spawn_task(lua_State *L, pf_task *parent, int nargs) {
  pf_sched *S = pf_sched_get(L);
  pf_task *t;
  lua_State *co;
  luaL_checkstack(L, 6, "spawning a task");
  if (S->live >= (size_t)S->pool_cap && S->pool_cap < POOL_MAX)
    grow_pool(L, S);
  t = (pf_task *)lua_newuserdatauv(L, sizeof(pf_task), PF_UV_COUNT);
  memset(t, 0, sizeof *t);
  t->S = S;
  t->anchor = LUA_NOREF;
  pf_list_init(&t->children);
  pf_list_init(&t->sibling);
  pf_list_init(&t->ready);
  pf_list_init(&t->waiters);
  pf_list_init(&t->waiter);
  luaL_setmetatable(L, PF_TASK_MT);
  if (parent && parent->in_run) {   /* a durable run's tasks share its record */
    t->in_run = 1;
    pf_push_task(L, parent);
    lua_getiuservalue(L, -1, PF_UV_RUN);
    lua_setiuservalue(L, -3, PF_UV_RUN);
    lua_pop(L, 1);
  }
  co = take_thread(L, S);
  t->co = co;
  /* lua_xmove does not grow the target: a pooled thread has 20 slots */
  if (!lua_checkstack(co, nargs + 1))
    luaL_error(L, "spawning a task: too many arguments (%d)", nargs);
  lua_setiuservalue(L, -2, PF_UV_THREAD);
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->anchors);
  lua_pushvalue(L, -2);
  t->anchor = luaL_ref(L, -2);
  lua_pop(L, 1);
  /* move the body and its arguments under the userdata onto the thread */
  lua_rotate(L, -(nargs + 2), 1);
  lua_xmove(L, co, nargs + 1);
  if (parent) link_child(parent, t);
  S->live++;
  make_ready(t, nargs);
  return t;
}

/* ---------------------------------------------------------------- errors */

int pf_has_traceback(lua_State *L, int idx) {
  const char *s = lua_tostring(L, idx);
  return s != NULL && strstr(s, "\nstack traceback:\n") != NULL;
}

/* The error on top of co gains, once, the traceback of the task: the one
** an exec attempt saved for this very value, or co's own stack. */
static void add_traceback(lua_State *L, pf_task *t, lua_State *co) {
  if (lua_type(co, -1) != LUA_TSTRING || pf_has_traceback(co, -1)) return;
  pf_push_task(L, t);
  if (lua_getiuservalue(L, -1, PF_UV_TRACE) == LUA_TTABLE) {
    lua_rawgeti(L, -1, 1);
    lua_pushvalue(co, -1);
    lua_xmove(co, L, 1);
    if (lua_rawequal(L, -1, -2)) {
      lua_rawgeti(L, -3, 2);
      lua_pushfstring(L, "%s\n%s", lua_tostring(L, -2), lua_tostring(L, -1));
      lua_xmove(L, co, 1);
      lua_replace(co, -2);
      lua_pop(L, 5);
      return;
    }
    lua_pop(L, 2);
  }
  lua_pop(L, 2);
  if (t->S->add_where) t->S->add_where(L, t, co);
  luaL_traceback(co, co, lua_tostring(co, -1), 0);
  lua_replace(co, -2);
}

static int tostring_f(lua_State *L) {
  luaL_tolstring(L, 1, NULL);
  return 1;
}

/* Pushes the value at idx as a string, calling its __tostring under a
** pcall: the scheduler never runs a user metamethod unprotected. */
const char *pf_tostring(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  if (lua_type(L, idx) == LUA_TSTRING) {
    lua_pushvalue(L, idx);
    return lua_tostring(L, -1);
  }
  luaL_checkstack(L, 3, "formatting an error");
  lua_pushcfunction(L, tostring_f);
  lua_pushvalue(L, idx);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    lua_pop(L, 1);
    lua_pushfstring(L, "(a %s value whose __tostring failed)",
                    luaL_typename(L, idx));
  }
  return lua_tostring(L, -1);
}

/* libuv's UV_HANDLE_INTERNAL (uv-common.h, 0x10 throughout 1.x): uv_walk
** skips such handles, so luv's uv.walk, which takes every handle it sees
** for one of its own, sees only luv's. uv_loop_close ignores them too:
** the scheduler closes its handles itself (sched_gc). */
#define PF_UV_HANDLE_INTERNAL 0x10

void pf_handle_internal(uv_handle_t *h) {
  h->flags |= PF_UV_HANDLE_INTERNAL;
}

static int warn_f(lua_State *L) {
  const char *msg = (const char *)lua_touserdata(L, 1);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &WARN_KEY);
  if (lua_isfunction(L, -1)) {
    lua_pushstring(L, msg);
    if (lua_pcall(L, 1, 0, 0) == LUA_OK) return 0;
    fprintf(stderr, "pocketflow: warning: pf.on_warning failed: %s\n",
            pf_tostring(L, -1));
  } else {
    fprintf(stderr, "pocketflow: warning: %s\n", msg);
  }
  return 0;
}

/* Hands msg to pf.on_warning, or prints it. Protected: it is called from
** libuv callbacks and while tasks end, where an error (out of memory)
** must not escape; then the message is printed. */
void pf_warn(lua_State *L, const char *msg) {
  if (lua_checkstack(L, 2)) {
    lua_pushcfunction(L, warn_f);
    lua_pushlightuserdata(L, (void *)msg);
    if (lua_pcall(L, 1, 0, 0) == LUA_OK) return;
    lua_pop(L, 1);
  }
  fprintf(stderr, "pocketflow: warning: %s\n", msg);
}

/* set_warn(f): the Lua layer routes engine warnings to pf.on_warning */
static int l_set_warn(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &WARN_KEY);
  return 0;
}

/* -------------------------------------------------------------- finishing */

static void waiters_remove(pf_task *w) {
  pf_list_remove(&w->waiter);
  w->waiting_on = NULL;
}

static void waiter_cancel(pf_task *w, void *data) {
  (void)data;
  if (w->waiting_on) waiters_remove(w);
}

/* Parks w until target ends. */
void pf_wait_on(pf_task *w, pf_task *target) {
  pf_list_push_head(&target->waiters, &w->waiter);
  w->waiting_on = target;
  pf_wait_park(w, waiter_cancel, NULL);
}

/* newest waiter first */
static void wake_waiters(pf_task *t) {
  while (!pf_list_empty(&t->waiters)) {
    pf_task *w = pf_list_entry(t->waiters.next, pf_task, waiter);
    waiters_remove(w);
    if (pf_sleep_queued(&w->sleep)) pf_sleep_remove(&t->S->sleeps, &w->sleep);
    pf_wait_wake(w, 0);
  }
}

/* Keeps an ended handle's results (a table) or error in its user value. */
static void keep_outcome(pf_sched *S, pf_task *t, int nres) {
  lua_State *L = S->L, *co = t->co;
  pf_push_task(L, t);
  if (t->outcome == PF_OK) {
    pf_pack(L, co, nres);
  } else {
    lua_pushvalue(co, -1);
    lua_xmove(co, L, 1);
    if (pf_list_empty(&t->waiters)) {
      /* nobody waits yet: reported at the end of pf.run unless waited
      ** (pf.run forgets its own main task: it raises that error) */
      lua_rawgeti(L, LUA_REGISTRYINDEX, S->lost);
      lua_pushvalue(L, -3);
      lua_pushboolean(L, 1);
      lua_rawset(L, -3);
      lua_pop(L, 1);
    }
  }
  lua_setiuservalue(L, -2, PF_UV_AUX);
  lua_pop(L, 1);
}

static void end_task(pf_sched *S, pf_task *t, int reset) {
  t->state = PF_DONE;
  t->wait_seq++;
  t->cancel = NULL;
  wake_waiters(t);
  release_thread(S, t, reset);
  S->live--;
  unlink_from_parent(S, t);
  unanchor_if_free(S, t);
}

static void finish_task(pf_sched *S, pf_task *t, int status, int nres) {
  lua_State *co = t->co;
  if (t->cancel_pending) {
    t->outcome = PF_CANCELLED;
    end_task(S, t, 1);
    return;
  }
  if (status == LUA_OK) {
    t->outcome = PF_OK;
    if (t->group) S->child_done(t->group, t, nres, co);
    else if (t->keep_results) keep_outcome(S, t, nres);
    end_task(S, t, 0);
  } else {
    t->outcome = PF_ERROR;
    if (status != LUA_ERRMEM) add_traceback(S->L, t, co);
    if (t->group) S->child_done(t->group, t, -1, co);
    else if (t->keep_results) keep_outcome(S, t, 1);
    else {
      lua_pushvalue(co, -1);
      lua_xmove(co, S->L, 1);
      lua_pushfstring(S->L, "task failed: %s", pf_tostring(S->L, -1));
      pf_warn(S->L, lua_tostring(S->L, -1));
      lua_pop(S->L, 3);
    }
    end_task(S, t, 1);
  }
}

/* Releases what t waits on, so that nothing wakes it. */
static void unpark(pf_sched *S, pf_task *t) {
  if (t->state == PF_WAITING && t->cancel) {
    pf_cancel_fn fn = t->cancel;
    t->cancel = NULL;
    fn(t, t->cancel_data);
  }
  if (pf_sleep_queued(&t->sleep)) pf_sleep_remove(&S->sleeps, &t->sleep);
  if (t->waiting_on) waiters_remove(t);
}

/* Cancels t alone. A task cancelled while it runs (itself or an
** ancestor) is killed at its next wait. */
static void cancel_one(pf_sched *S, pf_task *t) {
  if (t->state == PF_DONE) return;
  if (t->state == PF_RUNNING) {
    t->cancel_pending = 1;
    return;
  }
  unpark(S, t);
  if (t->state == PF_READY) pf_list_remove(&t->ready);
  t->cancel_pending = 0;
  t->outcome = PF_CANCELLED;
  end_task(S, t, 1);
}

static pf_task *deepest_first(pf_task *c) {
  while (!pf_list_empty(&c->children))
    c = pf_list_entry(c->children.next, pf_task, sibling);
  return c;
}

/* Cancels t and the tasks it spawned, each after its own: whatever each
** waits on is released and none is resumed again. Ending a task runs
** user code (__close, warning handlers) that may cancel, end or spawn
** others, so the tree is first listed, each task pinned in a table, and
** then walked: no recursion, and no pointer read after user code ran. */
static void cancel_tree(pf_task *t, int self) {
  pf_sched *S = t->S;
  lua_State *L = S->L;
  lua_Integer n = 0, i;
  pf_task *c = t;
  if (pf_list_empty(&t->children)) {
    if (self) cancel_one(S, t);
    return;
  }
  luaL_checkstack(L, 3, "cancelling tasks");
  lua_newtable(L);
  c = deepest_first(t);
  for (;;) {  /* post-order: children before their parent */
    pf_push_task(L, c);
    lua_rawseti(L, -2, ++n);
    if (c == t) break;
    if (c->sibling.next != &c->parent->children)
      c = deepest_first(pf_list_entry(c->sibling.next, pf_task, sibling));
    else
      c = c->parent;
  }
  for (i = 1; i <= n - !self; i++) {
    lua_rawgeti(L, -1, i);
    cancel_one(S, (pf_task *)lua_touserdata(L, -1));
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

void pf_cancel(pf_task *t) {
  cancel_tree(t, 1);
}

/* ---------------------------------------------------------------- driver */

/* coroutine.yield called on a task's own thread, outside any coroutine of
** the user's, would suspend the task with nothing to wake it. Instead the
** task is resumed at once and the yield raises Lua's own error where it
** was called, so a pcall around it catches it: a return hook on the
** yield puts the thread's own hook back and raises. */
static void yield_error_hook(lua_State *co, lua_Debug *ar) {
  pf_sched *S = pf_sched_get(co);
  (void)ar;
  lua_sethook(co, S->user_hook, S->user_mask, S->user_count);
  lua_pushliteral(co, "attempt to yield from outside a coroutine");
  lua_error(co);
}

static void arm_yield_error(pf_sched *S, lua_State *co) {
  S->user_hook = lua_gethook(co);
  S->user_mask = lua_gethookmask(co);
  S->user_count = lua_gethookcount(co);
  lua_sethook(co, yield_error_hook, LUA_MASKRET, 0);
}

/* ---------------------------------------------------------- yielding */

static const char HIJACK_MSG[] =
  "cannot resume a pocketflow task's thread: the task waits on pocketflow "
  "and only the scheduler resumes it (the task fails with this error)";

/* The task's thread was resumed by user code (coroutine.resume on the
** thread of coroutine.running()): the wait is dropped and the task ends
** failed, without being resumed again (see resume_task). */
static int hijacked(lua_State *L, pf_task *t) {
  if (!t->hijacked) {
    t->hijacked = 1;
    if (t->state == PF_WAITING) {
      unpark(t->S, t);
      pf_wait_wake(t, 0);
    }
  }
  return luaL_error(L, HIJACK_MSG);
}

/* Every wait resumes here first: only the scheduler's resume goes on. */
static int guard_k(lua_State *L, int status, lua_KContext ctx) {
  pf_task *t = (pf_task *)ctx;
  if (t->S->current != t || t->co != L) return hijacked(L, t);
  if (t->wake_error) {   /* see pf_wait_wake_with */
    if (t->wake_error == 2) lua_pushliteral(L, "not enough memory");
    t->wake_error = 0;
    return lua_error(L);
  }
  if (t->k) return t->k(L, status, t->kctx);
  return lua_gettop(L) - t->ktop;
}

/* Yields the task t, parked or made ready by the caller, to the
** scheduler; k(L, status, ctx) continues the call when it resumes;
** without k, the resume's values are returned. */
int pf_wait_yield(lua_State *L, pf_task *t, lua_KContext ctx, lua_KFunction k) {
  t->k = k;
  t->kctx = ctx;
  t->ktop = lua_gettop(L);
  return lua_yieldk(L, 0, (lua_KContext)t, guard_k);
}

/* A task whose thread user code resumed or closed: it ends failed, and
** what it spawned for its wait (a timeout's call, gather's items) with
** it. */
static void end_broken(pf_sched *S, pf_task *t) {
  lua_State *co = t->co;
  S->doing = t;
  t->state = PF_RUNNING;   /* out of the ready list (see recover) */
  if (!lua_checkstack(co, 2)) luaL_error(S->L, "not enough memory");
  cancel_tree(t, 0);
  lua_pushstring(co, HIJACK_MSG);
  finish_task(S, t, LUA_ERRRUN, 0);
}

static void resume_task(pf_sched *S, pf_task *t) {
  int nres = 0, status, armed = 0;
  lua_State *co = t->co;
  if (t->hijacked || (t->started && lua_status(co) != LUA_YIELD)) {
    end_broken(S, t);
    return;
  }
  t->started = 1;
  S->current = t;
  t->state = PF_RUNNING;
  status = lua_resume(co, S->L, t->nresume, &nres);
  while (status == LUA_YIELD && t->state == PF_RUNNING) {  /* foreign */
    lua_pop(co, nres);
    arm_yield_error(S, co);
    armed = 1;
    status = lua_resume(co, S->L, 0, &nres);
  }
  S->current = NULL;
  S->doing = t;
  if (armed && lua_gethook(co) == yield_error_hook)  /* it did not run */
    lua_sethook(co, S->user_hook, S->user_mask, S->user_count);
  if (status == LUA_YIELD) {
    lua_pop(co, nres);
    if (t->cancel_pending) {
      t->cancel_pending = 0;
      pf_cancel(t);
    }
  } else {
    finish_task(S, t, status, nres);   /* a failed thread is not pooled */
  }
}

static int drain_f(lua_State *L) {
  pf_sched *S = (pf_sched *)lua_touserdata(L, 1);
  pf_list *mark = (pf_list *)lua_touserdata(L, 2);
  luaL_checkstack(L, 2 * LUA_MINSTACK, "running tasks");
  while (S->ready.next != mark) {
    pf_task *t = pf_list_entry(S->ready.next, pf_task, ready);
    pf_list_remove(&t->ready);
    resume_task(S, t);
    S->doing = NULL;
  }
  return 0;
}

static int recover_f(lua_State *L) {
  pf_sched *S = (pf_sched *)lua_touserdata(L, 1);
  pf_task *t = S->doing;
  if (t->state == PF_RUNNING) {
    lua_xmove(L, t->co, 1);
    finish_task(S, t, LUA_ERRMEM, 0);
  } else {
    pf_cancel(t);
  }
  return 0;
}

/* Ends t, whose bookkeeping raised the error on L's top (out of memory,
** or a stack overflow), as failed with that error. The bookkeeping
** raises before it changes anything (finish_task's steps are
** all-or-nothing, end_task allocates nothing), so it is done again with
** that error as the outcome; a task that was to be cancelled is
** cancelled again. A second failure cancels t alone, allocating nothing,
** and pf.run raises "not enough memory". */
static void recover(pf_sched *S, pf_task *t) {
  lua_State *L = S->L;
  S->doing = NULL;
  if (t->state != PF_DONE &&
      (t->state != PF_RUNNING || lua_checkstack(t->co, 1))) {
    lua_pushcfunction(L, recover_f);
    lua_pushlightuserdata(L, S);
    lua_rotate(L, -3, 2);   /* recover_f, S, error */
    S->doing = t;
    if (lua_pcall(L, 2, 0, 0) == LUA_OK) {
      S->doing = NULL;
      return;
    }
    S->doing = NULL;
  }
  lua_pop(L, 1);
  if (t->state == PF_DONE) return;
  S->oom = 1;
  if (t->state == PF_RUNNING) t->state = PF_WAITING;   /* on nothing */
  t->group = NULL;
  cancel_one(S, t);
}

/* Runs the tasks ready now; those made ready meanwhile wait for the next
** turn, so pf.sleep(0) lets I/O callbacks in. The end of this turn is a
** sentinel queued behind them: remembering the last task instead fails
** when that task is cancelled meanwhile (it leaves the list), and then
** tasks looping on pf.sleep(0) would keep the drain from ever ending.
** The drain runs under a pcall on the scheduler's state: an error of
** its bookkeeping (out of memory keeping results or launching items)
** never crosses uv_run; 'recover' ends the task it was ending. */
static void drain(pf_sched *S) {
  lua_State *L = S->L;
  pf_list mark;
  int top = lua_gettop(L);
  pf_task *closing = S->closing;
  if (pf_list_empty(&S->ready)) {
    uv_idle_stop(S->idle);
    return;
  }
  ready_push(S, &mark);
  S->draining++;
  while (lua_checkstack(L, 3)) {
    lua_pushcfunction(L, drain_f);
    lua_pushlightuserdata(L, S);
    lua_pushlightuserdata(L, &mark);
    if (lua_pcall(L, 2, 0, 0) == LUA_OK) break;
    S->current = NULL;
    S->closing = closing;
    if (S->doing == NULL) break;   /* nothing started: the next turn */
    recover(S, S->doing);
  }
  lua_settop(L, top);
  S->draining--;
  pf_list_remove(&mark);
  if (pf_list_empty(&S->ready)) uv_idle_stop(S->idle);
}

/* luv's uv.run does not refuse to re-enter the loop: called inside a
** task, it would get here with that task still running, and resuming the
** others from inside its resume clobbers S->current (crash). Called from
** user code the scheduler runs between resumes (__close, a warning
** handler), a second drain would take the first one's sentinel. Such a
** uv.run is stopped instead; the tasks run when the task waits. */
static void idle_cb(uv_idle_t *h) {
  pf_sched *S = (pf_sched *)h->data;
  if (S->current != NULL || S->draining) {
    uv_stop(h->loop);
    pf_warn(S->L, "uv.run called inside a pocketflow task: the loop is "
                  "already running; wait with pf.sleep or pf.await");
    return;
  }
  drain(S);
}

/* ---------------------------------------------------------------- pf.run */

static void report_lost(pf_sched *S) {
  lua_State *L = S->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->lost);
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    lua_pop(L, 1);
    lua_getiuservalue(L, -1, PF_UV_AUX);
    pf_tostring(L, -1);
    lua_pushfstring(L, "error in a task nobody waited on: %s",
                    lua_tostring(L, -1));
    pf_warn(L, lua_tostring(L, -1));
    lua_pop(L, 3);
    lua_pushvalue(L, -1);
    lua_pushnil(L);
    lua_rawset(L, -4);
  }
  lua_pop(L, 1);
}

/* Cancels every task still alive: they wait on nothing that can wake
** them, or the state is closing. Root tasks are collected first, since
** cancelling changes the anchor table; an ended root is kept while its
** children live, so those are reached through it. */
static void cancel_all(pf_sched *S) {
  lua_State *L = S->L;
  lua_Integer n = 0, i;
  lua_newtable(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->anchors);
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    pf_task *t = (pf_task *)luaL_testudata(L, -1, PF_TASK_MT);
    if (t && t->parent == NULL)
      lua_rawseti(L, -4, ++n);
    else
      lua_pop(L, 1);
  }
  lua_pop(L, 1);
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, -1, i);
    pf_cancel((pf_task *)lua_touserdata(L, -1));
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

static int cancel_all_f(lua_State *L) {
  cancel_all((pf_sched *)lua_touserdata(L, 1));
  return 0;
}

/* Runs the loop until every task has ended. Returns 0, or -1 on deadlock
** with the number of stranded tasks in *stranded. Raises only once the
** loop is marked as stopped again. */
static int run_loop(lua_State *L, pf_sched *S, size_t *stranded) {
  luv_ctx_t *ctx = luv_context(S->L);
  int result = 0, status = LUA_OK;
  S->running++;
  ctx->mode = UV_RUN_DEFAULT;  /* uv.run from a task would re-enter */
  drain(S);
  while (S->live > 0) {
    if (uv_run(S->loop, UV_RUN_ONCE) == 0 && pf_list_empty(&S->ready) &&
        S->live > 0) {
      *stranded = S->live;
      status = -1;   /* cancel_all allocates: protected */
      if (lua_checkstack(S->L, 2)) {
        lua_pushcfunction(S->L, cancel_all_f);
        lua_pushlightuserdata(S->L, S);
        status = lua_pcall(S->L, 1, 0, 0);
      }
      result = -1;
      break;
    }
  }
  ctx->mode = -1;
  S->running--;
  if (status != LUA_OK) {
    if (status < 0) lua_pushliteral(L, "not enough memory");
    else lua_xmove(S->L, L, 1);
    lua_error(L);
  }
  return result;
}

/* Pushes an ended task's results, or raises its error. */
int pf_task_outcome(lua_State *L, pf_task *t, int tidx) {
  switch (t->outcome) {
    case PF_OK:
      lua_getiuservalue(L, tidx, PF_UV_AUX);
      return pf_unpack(L, -1);
    case PF_ERROR:
      pf_forget_lost(L, t->S, tidx);
      lua_getiuservalue(L, tidx, PF_UV_AUX);
      return lua_error(L);
    default:
      return luaL_error(L, "task was cancelled");
  }
}

/* Pushes fn's results (kept in the main task's user value) or raises its
** error after the loop ran out of tasks. */
static int main_outcome(lua_State *L, pf_task *t, int tidx) {
  if (t->outcome == PF_CANCELLED)
    return luaL_error(L, "pf.run: the main task was cancelled");
  return pf_task_outcome(L, t, tidx);
}

/* The ended task at tidx is waited on: its error is not reported. */
void pf_forget_lost(lua_State *L, pf_sched *S, int tidx) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->lost);
  lua_pushvalue(L, tidx);
  lua_pushnil(L);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

static int run_main(lua_State *L, int nargs) {
  pf_sched *S = pf_sched_get(L);
  pf_task *t;
  size_t stranded = 0;
  int tidx;
  t = pf_spawn_task(L, NULL, nargs);
  t->keep_results = 1;
  tidx = lua_gettop(L);
  if (run_loop(L, S, &stranded) < 0) {
    pf_forget_lost(L, S, tidx);
    report_lost(S);
    return luaL_error(L, "pf.run: deadlock: %d task(s) wait on nothing that "
                         "can wake them (cancelled)", (int)stranded);
  }
  pf_forget_lost(L, S, tidx);
  report_lost(S);
  if (S->oom) {   /* a task's end could not be recorded (see recover) */
    S->oom = 0;
    lua_pushliteral(L, "not enough memory");
    return lua_error(L);
  }
  return main_outcome(L, t, tidx);
}

static int call_k(lua_State *L, int status, lua_KContext base) {
  (void)status;
  return lua_gettop(L) - (int)base;
}

/* pf.run(fn, ...) */
static int l_run(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  if (pf_current(L)) {
    lua_callk(L, lua_gettop(L) - 1, LUA_MULTRET, 0, call_k);
    return call_k(L, LUA_OK, 0);
  }
  if (loop_busy(pf_sched_get(L)))
    return luaL_error(L, "pf.run: the event loop is already running (in a "
                         "luv callback?): not inside a pocketflow task; use "
                         "pf.spawn");
  return run_main(L, lua_gettop(L) - 1);
}

/* A waiting call made outside any task: runs itself (f) as the main task
** of an implicit pf.run, or says why it cannot (always, without f). */
int pf_wait_outside(lua_State *L, lua_CFunction f, const char *fname) {
  if (in_handler(L))  /* an event handler outside any task */
    return luaL_error(L, "%s: event handlers may not wait; use pf.spawn", fname);
  if (f == NULL || !pf_outside(L)) return not_in_task(L, fname);
  lua_pushcfunction(L, f);
  lua_insert(L, 1);
  return run_main(L, lua_gettop(L) - 1);
}

/* The handles always open: the loop's own, inside the uv_loop_t
** (libuv's async for its thread pool, its SIGCHLD watcher), and the
** scheduler's idle and its sleep queue's timer. */
static int always_open(pf_sched *S, void *h) {
  return (uintptr_t)h - (uintptr_t)S->loop < sizeof *S->loop ||
         h == (void *)S->idle || h == (void *)S->sleeps.timer;
}

/* core.debug_counts(), for the specs' after_each (spec/support/hygiene.lua):
** the tasks not ended, the handles active (started: a timer armed, a
** process, a poll, a server) and the handles not closed, the always open
** ones left out. Every owner's handles count, ours (which uv_walk skips:
** pf_handle_internal) and luv's alike, as libuv lists them:
** uv_print_all_handles writes "[RAI] type address" a handle, the format
** its docs give (for debugging; the binary's signal watchers count as
** active). */
static int l_debug_counts(lua_State *L) {
  pf_sched *S = pf_sched_get(L);
  char *text = NULL, *p;
  size_t len = 0, nactive = 0, nopen = 0;
  FILE *f = open_memstream(&text, &len);
  void *h;
  if (f == NULL) return luaL_error(L, "debug_counts: out of memory");
  uv_print_all_handles(S->loop, f);
  fclose(f);
  for (p = text; p != NULL && *p == '[';) {
    if (sscanf(p + 5, "%*s %p", &h) == 1 && !always_open(S, h)) {
      nopen++;
      if (p[2] == 'A') nactive++;
    }
    p = strchr(p, '\n');
    if (p != NULL) p++;
  }
  free(text);
  lua_pushinteger(L, (lua_Integer)S->live);
  lua_pushinteger(L, (lua_Integer)nactive);
  lua_pushinteger(L, (lua_Integer)nopen);
  return 3;
}

/* ----------------------------------------------------------- life cycle */

static int sched_gc(lua_State *L) {
  pf_sched *S = (pf_sched *)lua_touserdata(L, 1);
  if (S->closed) return 0;
  S->closed = 1;
  cancel_all(S);
  uv_close((uv_handle_t *)S->idle, pf_close_free_cb);
  uv_close((uv_handle_t *)S->sleeps.timer, pf_close_free_cb);
  pf_sleep_free(&S->sleeps);
  /* one more turn so the close callbacks run before the loop goes */
  uv_run(S->loop, UV_RUN_NOWAIT);
  if (S->own_loop) uv_loop_close(S->loop);
  return 0;
}

static int new_ref(lua_State *L) {
  lua_newtable(L);
  return luaL_ref(L, LUA_REGISTRYINDEX);
}

/* The loop is libuv's default loop, handed to luv before luv opens; if
** luv was opened first, its loop is the one both use. */
static uv_loop_t *shared_loop(lua_State *L, lua_State *main, int *own) {
  luv_ctx_t *ctx;
  int luv_open;
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  luv_open = lua_getfield(L, -1, "luv") != LUA_TNIL;
  lua_pop(L, 2);
  ctx = luv_context(main);
  if (luv_open && ctx->loop != NULL) {
    *own = 0;
    return ctx->loop;
  }
  luv_set_loop(main, uv_default_loop());
  ctx->mode = -1;
  *own = 1;
  return ctx->loop;
}

/* The state's scheduler, made on first use: loading the module again
** (busted does, per spec file) finds the same one. */
pf_sched *pf_sched_open(lua_State *L) {
  pf_sched *S = pf_sched_get(L);
  lua_State *main;
  uv_timer_t *timer;
  if (S) return S;
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  main = lua_tothread(L, -1);
  lua_pop(L, 1);
  S = (pf_sched *)lua_newuserdatauv(L, sizeof(pf_sched), 0);
  memset(S, 0, sizeof *S);
  S->L = main;
  S->anchors = new_ref(L);
  S->pool = new_ref(L);
  S->lost = new_ref(L);
  S->loop = shared_loop(L, main, &S->own_loop);
  pf_list_init(&S->ready);
  S->idle = (uv_idle_t *)malloc(sizeof(uv_idle_t));
  timer = (uv_timer_t *)malloc(sizeof(uv_timer_t));
  if (S->idle == NULL || timer == NULL) {
    free(S->idle);
    free(timer);
    S->idle = NULL;
    luaL_error(L, "pocketflow: out of memory");
  }
  uv_idle_init(S->loop, S->idle);
  uv_timer_init(S->loop, timer);
  pf_handle_internal((uv_handle_t *)S->idle);
  pf_handle_internal((uv_handle_t *)timer);
  S->idle->data = S;
  pf_sleep_init(&S->sleeps, S->loop, timer, deadline_fire, S);
  lua_newtable(L);
  lua_pushcfunction(L, sched_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &SCHED_KEY);
  return S;
}

static const luaL_Reg sched_funcs[] = {
  {"run", l_run},
  {"set_warn", l_set_warn},
  {"debug_counts", l_debug_counts},
  {NULL, NULL}
};

void pf_open_sched(lua_State *L) {
  luaL_setfuncs(L, sched_funcs, 0);
}

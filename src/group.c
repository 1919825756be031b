/*
** Groups: N tasks over the items of an array, for an owner task that
** parks until every item has ended or one has failed. At most 'maxc'
** items run at once; the first failure cancels the items still running;
** the results come back in the items' order. What an item runs is the
** starter's: the walk's items and walks (walk.c), pf.gather's functions.
** An item that ends raising a "pending" value (a table whose metatable is
** the registry's PF_PENDING_MT: pf.interrupt's) does not fail the group:
** the others run to their end, then the group raises what is pending.
*/
#include <string.h>

#include "pf.h"
#include "pf_sched.h"

struct pf_group {
  pf_task *owner;
  pf_group_body body;   /* pushes item i's function and arguments */
  int ctx;              /* the starter's, for pf_group_owner */
  int ref;              /* registry ref while items run */
  int failed;
  lua_Integer n, next, running, done, maxc;
  lua_Integer pending;  /* items ended with a pending value (G_ERROR) */
};

/* user values of a group userdata; the starter's from PF_G_CTX on */
enum { G_ITEMS = 1, G_RESULTS, G_ERROR, G_NUV = PF_G_CTX + 3 };

static void push_group(lua_State *L, pf_group *g) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, g->ref);
}

/* items[i] */
void pf_group_push_item(lua_State *L, int gidx, lua_Integer i) {
  lua_getiuservalue(L, gidx, G_ITEMS);
  lua_rawgeti(L, -1, i);
  lua_remove(L, -2);
}

/* A body for items that are the functions to run, without arguments. */
int pf_group_call_item(lua_State *L, int gidx, lua_Integer i) {
  pf_group_push_item(L, gidx, i);
  return 0;
}

/* The owner still waits on g: cancelling it releases g (user code the
** scheduler runs, a __close or a warning handler, may do so any time). */
static int owner_waits(pf_group *g) {
  return g->ref != LUA_NOREF;
}

static void group_launch(lua_State *L, pf_group *g, int gidx) {
  while (owner_waits(g) && !g->failed && g->running < g->maxc &&
         g->next <= g->n) {
    lua_Integer i = g->next;
    pf_task *c;
    int nargs;
    luaL_checkstack(L, 8, "launching items");
    nargs = g->body(L, gidx, i);
    c = pf_spawn_task(L, g->owner, nargs);   /* may raise: nothing done */
    c->group = g;
    c->group_idx = i;
    g->next++;
    g->running++;
    lua_pop(L, 1);
  }
}

static int launch_f(lua_State *L) {
  group_launch(L, (pf_group *)lua_touserdata(L, 1), 2);
  return 0;
}

static void group_release(lua_State *L, pf_group *g);

/* Launching the first items failed (out of memory): those launched have
** not run, have no children and run no user code when cancelled. */
static void group_abandon(lua_State *L, pf_group *g) {
  pf_list *l, *next;
  for (l = g->owner->children.next; l != &g->owner->children; l = next) {
    pf_task *c = pf_list_entry(l, pf_task, sibling);
    next = l->next;
    if (c->group == g) {
      c->group = NULL;
      pf_cancel(c);
    }
  }
  group_release(L, g);
}

/* Pushes a group over the array at 'items' for the running task, whose
** items run body; ctx is the starter's (0 for none). The starter may set
** the user values from PF_G_CTX on, then calls pf_group_run. */
void pf_group_new(lua_State *L, int items, lua_Integer maxc,
                  pf_group_body body, int ctx) {
  pf_group *g;
  int gidx;
  luaL_checkstack(L, 4, "starting items");
  g = (pf_group *)lua_newuserdatauv(L, sizeof(pf_group), G_NUV);
  memset(g, 0, sizeof *g);
  gidx = lua_gettop(L);
  g->owner = pf_current(L);
  g->body = body;
  g->ctx = ctx;
  g->ref = LUA_NOREF;
  g->n = (lua_Integer)lua_rawlen(L, items);
  g->next = 1;
  g->maxc = maxc > 0 ? maxc : g->n;
  lua_pushvalue(L, items);
  lua_setiuservalue(L, gidx, G_ITEMS);
  lua_createtable(L, (int)(g->n < 1 << 24 ? g->n : 0), 0);
  lua_setiuservalue(L, gidx, G_RESULTS);
}

/* Starts the items of the group at gidx (on top). Returns 1 when the
** caller must yield until they end, 0 when there was nothing to run. */
int pf_group_run(lua_State *L, int gidx) {
  pf_group *g = (pf_group *)lua_touserdata(L, gidx);
  if (g->n == 0) return 0;
  luaL_checkstack(L, 3, "starting items");
  lua_pushvalue(L, gidx);
  g->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushcfunction(L, launch_f);
  lua_pushlightuserdata(L, g);
  lua_pushvalue(L, gidx);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
    group_abandon(L, g);
    return lua_error(L);
  }
  pf_wait_park(g->owner, pf_group_cancel, g);
  return 1;
}

/* pf_group_new and pf_group_run, for a starter without user values. */
int pf_group_start(lua_State *L, int items, lua_Integer maxc,
                   pf_group_body body, int ctx) {
  pf_group_new(L, items, maxc, body, ctx);
  return pf_group_run(L, lua_gettop(L));
}

/* The body of g's items, its owner and the starter's ctx, while the
** owner still lives (for the where line of an item's error); else NULL. */
pf_group_body pf_group_owner(pf_group *g, pf_task **owner, int *ctx) {
  if (g->owner->co == NULL) return NULL;
  *owner = g->owner;
  *ctx = g->ctx;
  return g->body;
}

/* g's items: how many, ended ok so far, running (a batch's progress) */
void pf_group_counts(pf_group *g, lua_Integer *total, lua_Integer *done,
                     lua_Integer *running) {
  *total = g->n;
  *done = g->done;
  *running = g->running;
}

static void group_release(lua_State *L, pf_group *g) {
  luaL_unref(L, LUA_REGISTRYINDEX, g->ref);
  g->ref = LUA_NOREF;
}

/* The owner was cancelled: its items were cancelled first, as its
** children; only the anchor is left. */
void pf_group_cancel(pf_task *owner, void *data) {
  group_release(owner->S->L, (pf_group *)data);
}

/* The first failure cancels the other items still running. Their
** __close may end tasks or cancel the owner: they are listed, pinned,
** before any is cancelled. */
static void group_fail(lua_State *L, pf_group *g, pf_task *child,
                       lua_State *co, int gidx) {
  pf_list *l, *kids = &g->owner->children;
  lua_Integer n = 0, i;
  for (l = kids->next; l != kids; l = l->next) {
    pf_task *c = pf_list_entry(l, pf_task, sibling);
    n += c->group == g && c != child && c->state != PF_DONE;
  }
  lua_createtable(L, (int)n, 0);   /* the one allocation, before any change */
  n = 0;
  for (l = kids->next; l != kids; l = l->next) {
    pf_task *c = pf_list_entry(l, pf_task, sibling);
    if (c->group == g && c != child && c->state != PF_DONE) {
      c->group = NULL;
      pf_push_task(L, c);
      lua_rawseti(L, -2, ++n);
    }
  }
  g->failed = 1;
  lua_pushvalue(co, -1);
  lua_xmove(co, L, 1);
  lua_setiuservalue(L, gidx, G_ERROR);
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, -1, i);
    pf_cancel((pf_task *)lua_touserdata(L, -1));
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  g->running = 0;
}

/* Pushes the metatable of pending values, made on first use. */
void pf_pending_mt(lua_State *L) {
  if (luaL_getmetatable(L, PF_PENDING_MT) == LUA_TNIL) {
    lua_pop(L, 1);
    luaL_newmetatable(L, PF_PENDING_MT);
  }
}

/* True if the value at idx is pending (see above). */
int pf_is_pending(lua_State *L, int idx) {
  int r = 0;
  if (lua_type(L, idx) == LUA_TTABLE && lua_checkstack(L, 2) &&
      lua_getmetatable(L, idx)) {
    luaL_getmetatable(L, PF_PENDING_MT);
    r = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
  }
  return r;
}

static int is_pending(lua_State *L, lua_State *co) {
  (void)L;
  return pf_is_pending(co, -1);
}

/* An item ended pending: its value is kept in order of ending. */
static void keep_pending(lua_State *L, pf_group *g, lua_State *co,
                         int gidx) {
  if (g->pending == 0) {
    lua_newtable(L);
    lua_setiuservalue(L, gidx, G_ERROR);
  }
  lua_getiuservalue(L, gidx, G_ERROR);
  lua_pushvalue(co, -1);
  lua_xmove(co, L, 1);
  lua_rawseti(L, -2, g->pending + 1);
  lua_pop(L, 1);
  g->pending++;
  g->running--;
}

/* hook: item end (parallel). An item ended: nres >= 0 results on co's
** top, or -1 for an error on co's top. Runs on the driver, with 'from'
** its scratch state. */
void pf_group_child_done(pf_group *g, pf_task *child, int nres,
                         lua_State *from) {
  pf_sched *S = child->S;
  lua_State *L = S->L, *co = child->co;
  int gidx;
  (void)from;
  if (g->ref == LUA_NOREF) {
    child->group = NULL;
    return;
  }
  luaL_checkstack(L, 8, "collecting results");
  push_group(L, g);
  gidx = lua_gettop(L);
  /* an error here (out of memory) leaves child in g: sched.c's recover
  ** ends it failed, and g fails, whatever was done for its result */
  if (nres < 0 && !g->failed && is_pending(L, co)) {
    keep_pending(L, g, co, gidx);
    group_launch(L, g, gidx);
  } else if (nres < 0) {
    group_fail(L, g, child, co, gidx);
  } else {
    lua_getiuservalue(L, gidx, G_RESULTS);
    if (nres > 0) {
      lua_pushvalue(co, -nres);
      lua_xmove(co, L, 1);
    } else {
      lua_pushnil(L);
    }
    lua_rawseti(L, -2, child->group_idx);
    lua_pop(L, 1);
    g->running--;
    g->done++;
    group_launch(L, g, gidx);
  }
  child->group = NULL;
  if (owner_waits(g) && g->running == 0 &&
      (g->failed || g->done + g->pending == g->n)) {
    group_release(L, g);
    pf_wait_wake(g->owner, 0);
  }
  lua_settop(L, gidx - 1);
}

/* In the owner, after the wait: pushes the results array or raises the
** first error, else what is pending: the one value, or for several a
** pending value { pending = { values in order of ending } }. */
int pf_group_finish(lua_State *L, int gidx) {
  pf_group *g = (pf_group *)lua_touserdata(L, gidx);
  if (g->failed) {
    lua_getiuservalue(L, gidx, G_ERROR);
    return lua_error(L);
  }
  if (g->pending > 0) {
    lua_getiuservalue(L, gidx, G_ERROR);
    if (g->pending == 1) {
      lua_rawgeti(L, -1, 1);
      return lua_error(L);
    }
    lua_createtable(L, 0, 1);
    lua_insert(L, -2);
    lua_setfield(L, -2, "pending");
    pf_pending_mt(L);
    lua_setmetatable(L, -2);
    return lua_error(L);
  }
  lua_getiuservalue(L, gidx, G_RESULTS);
  return 1;
}

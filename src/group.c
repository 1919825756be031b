/*
** Groups: the items of a parallel batch node, the walks of a parallel
** batch flow, the functions of pf.gather. The owner task parks until
** every item has ended or one has failed; at most 'maxc' items run at
** once; the first failure cancels the items still running.
*/
#include <string.h>

#include "pf.h"
#include "pf_sched.h"

struct pf_group {
  pf_task *owner;
  int kind;
  int ref;              /* registry ref while items run */
  int failed;
  int direct;           /* items run exec itself (see plain_exec) */
  int frame;            /* base of the owner's walk frame, or 0 */
  lua_Integer n, next, running, done, maxc;
};

/* user values of a group userdata */
enum { G_ITEMS = 1, G_RESULTS, G_SELF, G_SHARED, G_PARAMS, G_ERROR, G_EXEC,
       G_NUV };

static void push_group(lua_State *L, pf_group *g) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, g->ref);
}

/* items[i] */
static void push_item(lua_State *L, int gidx, lua_Integer i) {
  lua_getiuservalue(L, gidx, G_ITEMS);
  lua_rawgeti(L, -1, i);
  lua_remove(L, -2);
}

/* An item's own self: writes stay there, reads fall through to self. */
static void push_item_self(lua_State *L, int gidx) {
  lua_newtable(L);
  lua_getiuservalue(L, gidx, G_SELF);
  lua_setmetatable(L, -2);
}

/* {params..., batch params...}: a new table for walk i */
static void push_walk_params(lua_State *L, int gidx, lua_Integer i) {
  int top;
  lua_getiuservalue(L, gidx, G_PARAMS);
  push_item(L, gidx, i);
  top = lua_gettop(L);
  pf_push_merged(L, top - 1, top);
  lua_replace(L, top - 1);
  lua_pop(L, 1);
}

/* Pushes item i's body and arguments; returns the argument count. */
static int push_body(lua_State *L, pf_group *g, int gidx, lua_Integer i) {
  switch (g->kind) {
    case PF_G_ITEMS:
      if (g->direct) {
        lua_getiuservalue(L, gidx, G_EXEC);
        push_item_self(L, gidx);
        push_item(L, gidx, i);
        return 2;
      }
      lua_pushcfunction(L, pf_machine);
      lua_pushinteger(L, PF_K_EXEC);
      push_item_self(L, gidx);
      lua_pushnil(L);
      push_item(L, gidx, i);
      return 4;
    case PF_G_WALKS:
      lua_pushcfunction(L, pf_machine);
      lua_pushinteger(L, PF_K_ORCH);
      lua_getiuservalue(L, gidx, G_SELF);
      lua_getiuservalue(L, gidx, G_SHARED);
      push_walk_params(L, gidx, i);
      return 4;
    default:
      push_item(L, gidx, i);
      return 0;
  }
}

/* An item whose exec makes one attempt and whose fallback is the default
** needs no machine: the task runs exec(item_self, item) itself, and an
** error ends it unchanged, as the default fallback would. This saves a
** frame, a pcall and the stack growth they cause, per item. Decided once
** per group; exec is fetched once. */
static int plain_exec(lua_State *L, int self, int gidx) {
  int isnum = 0, plain;
  lua_Integer n;
  lua_getfield(L, self, "max_retries");
  n = lua_isnil(L, -1) ? 1 : lua_tointegerx(L, -1, &isnum);
  plain = (lua_isnil(L, -1) || isnum) && n == 1;
  lua_getfield(L, self, "exec_fallback");
  plain = plain && lua_tocfunction(L, -1) == pf_reraise;
  lua_pop(L, 2);
  if (!plain) return 0;
  lua_getfield(L, self, "exec");
  lua_setiuservalue(L, gidx, G_EXEC);
  return 1;
}

/* The owner still waits on g: cancelling it releases g (user code the
** scheduler runs, a __close or a warning handler, may do so any time). */
static int owner_waits(pf_group *g) {
  return g->ref != LUA_NOREF;
}

static void launch(lua_State *L, pf_group *g, int gidx) {
  while (owner_waits(g) && !g->failed && g->running < g->maxc &&
         g->next <= g->n) {
    lua_Integer i = g->next++;
    pf_task *c;
    int nargs;
    luaL_checkstack(L, 8, "launching items");
    nargs = push_body(L, g, gidx, i);
    c = pf_spawn_task(L, g->owner, nargs);
    c->group = g;
    c->group_idx = i;
    g->running++;
    lua_pop(L, 1);
  }
}

/* Starts the items of the array at 'items'. Leaves the group userdata
** on L. Returns 1 when the caller must yield until they end, 0 when
** there was nothing to run. */
int pf_group_start(lua_State *L, int kind, int items, int self, int shared,
                   int params, lua_Integer maxc) {
  pf_group *g;
  int gidx;
  pf_task *owner = pf_current(L);
  luaL_checkstack(L, 4, "starting items");
  g = (pf_group *)lua_newuserdatauv(L, sizeof(pf_group), G_NUV);
  memset(g, 0, sizeof *g);
  gidx = lua_gettop(L);
  g->owner = owner;
  g->kind = kind;
  g->ref = LUA_NOREF;
  g->n = (lua_Integer)lua_rawlen(L, items);
  g->next = 1;
  g->maxc = maxc > 0 ? maxc : g->n;
  g->frame = self;
  lua_pushvalue(L, items);
  lua_setiuservalue(L, gidx, G_ITEMS);
  lua_createtable(L, (int)(g->n < 1 << 24 ? g->n : 0), 0);
  lua_setiuservalue(L, gidx, G_RESULTS);
  if (self) {
    lua_pushvalue(L, self);
    if (kind == PF_G_ITEMS) {   /* items read self's fields through it */
      lua_pushliteral(L, "__index");
      lua_pushvalue(L, -2);
      lua_rawset(L, -3);
    }
    lua_setiuservalue(L, gidx, G_SELF);
    if (kind == PF_G_ITEMS) g->direct = plain_exec(L, self, gidx);
  }
  if (shared) {
    lua_pushvalue(L, shared);
    lua_setiuservalue(L, gidx, G_SHARED);
  }
  if (params) {
    lua_pushvalue(L, params);
    lua_setiuservalue(L, gidx, G_PARAMS);
  }
  if (g->n == 0) return 0;
  lua_pushvalue(L, gidx);
  g->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  launch(L, g, gidx);
  pf_wait_park(owner, pf_group_cancel, g);
  return 1;
}

/* For the where line of an item's error (walk.c): the owner, parked in
** the walk that started g, and that walk's frame. Returns the frame's
** kind, or 0 for a gather. */
int pf_group_frame(pf_group *g, pf_task **owner, int *frame, int *direct) {
  if (g->kind == PF_G_GATHER || g->frame == 0 || g->owner->co == NULL)
    return 0;
  *owner = g->owner;
  *frame = g->frame;
  *direct = g->direct;
  return g->kind == PF_G_ITEMS ? PF_K_PBATCH : PF_K_PBFLOW;
}

static void release(lua_State *L, pf_group *g) {
  luaL_unref(L, LUA_REGISTRYINDEX, g->ref);
  g->ref = LUA_NOREF;
}

/* The owner was cancelled: its items were cancelled first, as its
** children; only the anchor is left. */
void pf_group_cancel(pf_task *owner, void *data) {
  release(owner->S->L, (pf_group *)data);
}

/* The first failure cancels the other items still running. Their
** __close may end tasks or cancel the owner: they are listed, pinned,
** before any is cancelled. */
static void fail(lua_State *L, pf_group *g, pf_task *child, lua_State *co,
                 int gidx) {
  pf_list *l;
  lua_Integer n = 0, i;
  g->failed = 1;
  lua_pushvalue(co, -1);
  lua_xmove(co, L, 1);
  lua_setiuservalue(L, gidx, G_ERROR);
  lua_newtable(L);
  for (l = g->owner->children.next; l != &g->owner->children; l = l->next) {
    pf_task *c = pf_list_entry(l, pf_task, sibling);
    if (c->group == g && c != child && c->state != PF_DONE) {
      c->group = NULL;
      pf_push_task(L, c);
      lua_rawseti(L, -2, ++n);
    }
  }
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, -1, i);
    pf_cancel((pf_task *)lua_touserdata(L, -1));
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  g->running = 0;
}

/* An item ended: nres >= 0 results on co's top, or -1 for an error on
** co's top. Runs on the driver, with 'from' its scratch state. */
void pf_group_child_done(pf_group *g, pf_task *child, int nres,
                         lua_State *from) {
  pf_sched *S = child->S;
  lua_State *L = S->L, *co = child->co;
  int gidx;
  (void)from;
  child->group = NULL;
  if (g->ref == LUA_NOREF) return;
  luaL_checkstack(L, 8, "collecting results");
  push_group(L, g);
  gidx = lua_gettop(L);
  if (nres < 0) {
    fail(L, g, child, co, gidx);
  } else {
    g->running--;
    g->done++;
    lua_getiuservalue(L, gidx, G_RESULTS);
    if (nres > 0) {
      lua_pushvalue(co, -nres);
      lua_xmove(co, L, 1);
    } else {
      lua_pushnil(L);
    }
    lua_rawseti(L, -2, child->group_idx);
    lua_pop(L, 1);
    launch(L, g, gidx);
  }
  if (owner_waits(g) && g->running == 0 && (g->failed || g->done == g->n)) {
    release(L, g);
    pf_wait_wake(g->owner, 0);
  }
  lua_settop(L, gidx - 1);
}

/* In the owner, after the wait: pushes the results array or raises the
** first error. */
int pf_group_finish(lua_State *L, int gidx) {
  pf_group *g = (pf_group *)lua_touserdata(L, gidx);
  if (g->failed) {
    lua_getiuservalue(L, gidx, G_ERROR);
    return lua_error(L);
  }
  lua_getiuservalue(L, gidx, G_RESULTS);
  return 1;
}

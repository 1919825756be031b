/*
** Durable runs (API.md section 8), the walk's side: what a checkpoint
** keeps of a walk's frames, the idempotency keys, and the run record
** every task of a durable run reaches. The run's life, the store and the
** checkpoint's bytes are lua/pocketflow/durable.lua's.
**
** A durable walk has its task record in slot RUN (walk.h):
**
**   { run = R, prefix = P, path = D [, group = G, index = i] }
**
** R is the run (durable.lua), P the idempotency key prefix of the walk's
** first frame, D the path its checkpoints show. An item of a parallel
** batch has the group of its batch, G = { done = { [i] = { result } },
** live = { [i] = frames } }, and its index. The running task's
** PF_UV_RUN user value holds the same record; the tasks it spawns
** inherit it (sched.c), so code in any task of a run finds the run.
**
** A checkpoint saves each task's frames, from the first to the top, as an
** array of descriptors (k: the frame's kind):
**
**   walk            { k, node = the node to run (its name), action,
**                     params, visits }
**   flow            { k, name, prep }
**   batch kinds     { k, name, key, index }   (index: the item running)
**   parallel kinds  { k, name, key, live = G.live }
**
** A node's frame and an item's exec are not saved: they rerun from prep
** (from exec for an item). The run's root is the first task's array;
** the walks of a parallel batch flow are in its group's live. A batch's
** prep result (item 0) and each finished item are saved on their own,
** under the batch's key (its idempotency key), so that a checkpoint's
** size does not grow with the items done; durable.lua puts them back
** into the descriptors (prep, res, index, group) before a resume.
*/
#include "pf.h"
#include "pf_sched.h"
#include "walk.h"
#include "embed.h"

static const char KEY[] = "idempotency_key";

/* ----------------------------------------------------------------- keys */

static lua_Integer slot_int(lua_State *L, int b, int slot) {
  return lua_tointeger(L, b + slot);
}

/* Pushes the key prefix of the nodes walk w starts: its flow's key, and
** the item of a batch flow's walk; an item's walk has its record's. */
static void push_walk_prefix(lua_State *L, int w) {
  int p = w - FS;
  if (lua_type(L, w + F_KEY) == LUA_TSTRING) {
    lua_pushvalue(L, w + F_KEY);
    return;
  }
  if (w == ROOT) {
    lua_getfield(L, RUN, "prefix");
  } else {
    lua_pushstring(L, KEY);
    lua_rawget(L, p + F_SELF);
    if (ST_KIND(slot_int(L, p, F_STATE)) == PF_K_BFLOW) {
      lua_pushfstring(L, "%s[%I]", lua_tostring(L, -1),
                      (LUAI_UACINT)slot_int(L, p, F_INDEX));
      lua_remove(L, -2);
    }
  }
  lua_pushvalue(L, -1);
  lua_replace(L, w + F_KEY);
}

/* Pushes the key of the node whose frame is b: RUN-ID:Name for the
** first, else its walk's prefix, /Name#visit. */
static void push_node_key(lua_State *L, int b) {
  int w = b - FS;
  if (b == ROOT) {
    if (lua_getfield(L, RUN, "key") != LUA_TNIL) return;   /* a timed flow */
    lua_getfield(L, RUN, "prefix");
    lua_pushfstring(L, "%s:%s", lua_tostring(L, -1),
                    pf_node_name(L, b + F_SELF));
    lua_remove(L, -3);
  } else {
    push_walk_prefix(L, w);
    lua_pushfstring(L, "%s/%s#%I", lua_tostring(L, -1),
                    pf_node_name(L, w + F_NODE),
                    (LUAI_UACINT)slot_int(L, w, F_VISITS));
  }
  lua_remove(L, -2);
}

static void set_key(lua_State *L, int self) {
  lua_pushstring(L, KEY);
  lua_insert(L, -2);
  lua_rawset(L, self);
}

/* Walk w starts its node (count: a new visit, not a resumed one), the
** run's self of it on top: sets its idempotency key. */
void pf_ckpt_node_start(lua_State *L, int w, int count) {
  int self = lua_gettop(L);
  if (count) {
    lua_pushinteger(L, slot_int(L, w, F_VISITS) + 1);
    lua_replace(L, w + F_VISITS);
  }
  push_node_key(L, w + FS);
  set_key(L, self);
}

/* A batch's item i starts (0: its post): its self, which the items
** share, gets the item's key. */
void pf_ckpt_item_key(lua_State *L, int b, lua_Integer i) {
  push_node_key(L, b);
  if (i > 0) {
    lua_pushfstring(L, "%s[%I]", lua_tostring(L, -1), (LUAI_UACINT)i);
    lua_remove(L, -2);
  }
  set_key(L, b + F_SELF);
}

/* The walk starts: its task carries its record; a run's first frame gets
** its key. */
void pf_ckpt_begin(lua_State *L, int kind) {
  pf_task *t = pf_current(L);
  if (t != NULL) {
    t->in_run = 1;
    pf_push_task(L, t);
    lua_pushvalue(L, RUN);
    lua_setiuservalue(L, -2, PF_UV_RUN);
    lua_pop(L, 1);
  }
  if (kind < PF_K_WALK) {
    push_node_key(L, ROOT);
    set_key(L, ROOT + F_SELF);
  }
}

/* ---------------------------------------------------------- checkpoints */

static void desc_slot(lua_State *L, int b, int slot, const char *k) {
  lua_pushvalue(L, b + slot);
  lua_setfield(L, -2, k);
}

static void desc_name(lua_State *L, int idx, const char *k) {
  lua_pushstring(L, pf_node_name(L, idx));
  lua_setfield(L, -2, k);
}

/* Pushes the descriptor of frame b, of kind; 0 (nothing pushed) for a
** frame that reruns. */
static int push_desc(lua_State *L, int b, int kind) {
  if (kind == PF_K_NODE || kind == PF_K_EXEC) return 0;
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, kind);
  lua_setfield(L, -2, "k");
  if (kind == PF_K_WALK) {
    if (!lua_isnil(L, b + F_NODE)) desc_name(L, b + F_NODE, "node");
    desc_slot(L, b, F_ACTION, "action");
    desc_slot(L, b, F_PARAMS, "params");
    desc_slot(L, b, F_VISITS, "visits");
    return 1;
  }
  desc_name(L, b + F_SELF, "name");
  if (kind == PF_K_FLOW) {
    desc_slot(L, b, F_PREP, "prep");
    return 1;
  }
  push_node_key(L, b);
  lua_setfield(L, -2, "key");
  if (kind == PF_K_BATCH || kind == PF_K_BFLOW)
    desc_slot(L, b, F_INDEX, "index");
  return 1;
}

static int frame_kind(lua_State *L, int b, int top, int st) {
  return ST_KIND(b == top ? st : (int)slot_int(L, b, F_STATE));
}

/* Pushes the descriptors of the frames up to top, in state st. */
static void push_frames(lua_State *L, int top, int st) {
  int b, n = 0;
  luaL_checkstack(L, 8, "checkpoint");
  lua_newtable(L);
  for (b = ROOT; b <= top; b += FS) {
    if (!push_desc(L, b, frame_kind(L, b, top, st))) break;
    lua_rawseti(L, -2, ++n);
  }
}

/* Pushes the path a checkpoint shows: the record's, then the frames'
** nodes, a batch's item, and the node a walk on top runs next. */
static void push_path(lua_State *L, int top, int st) {
  int b = ROOT;
  lua_getfield(L, RUN, "path");
  if (lua_getfield(L, RUN, "key") != LUA_TNIL) b += FS;   /* a timed flow */
  lua_pop(L, 1);
  for (; b <= top; b += FS) {
    int kind = frame_kind(L, b, top, st), idx = b + F_SELF;
    const char *s = lua_tostring(L, -1);
    if (kind == PF_K_WALK) {
      if (b < top || lua_isnil(L, b + F_NODE)) continue;
      idx = b + F_NODE;
    }
    lua_pushfstring(L, "%s%s%s", s, *s ? " > " : "", pf_node_name(L, idx));
    if (kind == PF_K_BATCH || kind == PF_K_BFLOW)
      lua_pushfstring(L, "%s[%I]", lua_tostring(L, -1),
                      (LUAI_UACINT)slot_int(L, b, F_INDEX));
    else
      lua_pushvalue(L, -1);
    lua_replace(L, -3);
    lua_pop(L, 1);
  }
}

/* Pushes run.save, the record, the frames up to top (in state st) and
** their path: the walk calls it (sync: waits for the commit). */
int pf_ckpt_push_save(lua_State *L, int top, int st) {
  lua_getfield(L, RUN, "run");
  lua_getfield(L, -1, "save");
  lua_remove(L, -2);
  lua_pushvalue(L, RUN);
  push_frames(L, top, st);
  push_path(L, top, st);
  return 3;
}

/* The batch at b starts its items, in state st: saves its prep result
** (its item 0), then a checkpoint of the frames (the group's live walks,
** at live if not 0, on the top one's). Neither waits: the saves after
** them see them (a store writes in order). */
static void save_start(lua_State *L, int b, int st, int live) {
  lua_getfield(L, RUN, "run");
  lua_getfield(L, -1, "item");
  push_node_key(L, b);
  lua_pushinteger(L, 0);
  lua_pushvalue(L, b + F_PREP);
  lua_pushboolean(L, 1);
  lua_call(L, 4, 0);
  lua_getfield(L, -1, "save");
  lua_remove(L, -2);
  lua_pushvalue(L, RUN);
  push_frames(L, b, st);
  if (live) {
    lua_rawgeti(L, -1, (lua_Integer)lua_rawlen(L, -1));
    lua_pushvalue(L, live);
    lua_setfield(L, -2, "live");
    lua_pop(L, 1);
  }
  push_path(L, b, st);
  lua_pushboolean(L, 1);
  lua_call(L, 4, 0);
}

void pf_ckpt_prep(lua_State *L, int b, int st) {
  save_start(L, b, st, 0);
}

/* Item i of the batch at b ended, its result on top: pushes run.item, the
** batch's key, i and the result (moved). */
int pf_ckpt_push_item(lua_State *L, int b, lua_Integer i) {
  lua_getfield(L, RUN, "run");
  lua_getfield(L, -1, "item");
  lua_remove(L, -2);
  push_node_key(L, b);
  lua_pushinteger(L, i);
  lua_rotate(L, -4, -1);
  return 3;
}

/* The first frame ended, its result on top: an item of a parallel
** batch pushes run.item_done, its record and the result; the run's
** first task, run.save and frames that say the walk is over (a resume
** from them only ends the run), after the last post. */
int pf_ckpt_push_end(lua_State *L) {
  int inner = lua_getfield(L, RUN, "outer") != LUA_TNIL;   /* a timed flow */
  lua_pop(L, 1);
  if (inner) return 0;
  lua_getfield(L, RUN, "group");
  if (lua_isnil(L, -1)) {
    lua_getfield(L, RUN, "run");
    lua_getfield(L, -1, "save");
    lua_replace(L, -3);
    lua_pop(L, 1);
    lua_pushvalue(L, RUN);
    lua_createtable(L, 0, 1);
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "finished");
    lua_pushstring(L, pf_node_name(L, 2));
    return 3;
  }
  lua_getfield(L, RUN, "run");
  lua_getfield(L, -1, "item_done");
  lua_replace(L, -3);
  lua_pop(L, 1);
  lua_pushvalue(L, RUN);
  lua_pushvalue(L, -3);
  return 2;
}

/* ---------------------------------------------------------- timed flows */

/* The flow at b, in state st, runs its frame again as the first of a
** task of its own (walk.c, timed_flow): pushes that walk's record and
** the frames it restores (nil but in a resume). The record has the key
** and path of the flow here; its saves go through outer, ours, with
** base, our frames below the flow, in front of its own (durable.lua). */
int pf_ckpt_push_inner(lua_State *L, int b, int st) {
  luaL_checkstack(L, 8, "checkpoint");
  lua_createtable(L, 0, 5);
  lua_getfield(L, RUN, "run");
  lua_setfield(L, -2, "run");
  lua_pushvalue(L, RUN);
  lua_setfield(L, -2, "outer");
  if (b > ROOT)
    push_frames(L, b - FS, (int)slot_int(L, b - FS, F_STATE));
  else
    lua_newtable(L);
  lua_setfield(L, -2, "base");
  push_node_key(L, b);
  lua_setfield(L, -2, "key");
  push_path(L, b, st);
  lua_setfield(L, -2, "path");
  lua_getfield(L, RUN, "snap");
  lua_pushnil(L);
  lua_setfield(L, RUN, "snap");
  return 2;
}

/* A resume reached a timed flow, the i-th of the frames in SNAP: keeps
** them from there for its task (pf_ckpt_push_inner). */
void pf_ckpt_stash(lua_State *L, lua_Integer i) {
  lua_Integer j, n = (lua_Integer)lua_rawlen(L, SNAP);
  lua_createtable(L, (int)(n - i + 1), 0);
  for (j = i; j <= n; j++) {
    lua_rawgeti(L, SNAP, j);
    lua_rawseti(L, -2, j - i + 1);
  }
  lua_setfield(L, RUN, "snap");
}

/* --------------------------------------------------------------- groups */

/* The frame at b, in state st, starts the items of the group at gidx:
** the group's record is the one a resume saved, or new; the task's
** frames, that group on top, are its part of the checkpoints while the
** items run; the items' records come from the group's C_RUN. */
void pf_ckpt_group(lua_State *L, int b, int st, int gidx) {
  luaL_checkstack(L, 8, "checkpoint");
  if (lua_getfield(L, RUN, "resume") == LUA_TTABLE) {
    lua_pushnil(L);
    lua_setfield(L, RUN, "resume");
  } else {
    lua_pop(L, 1);
    lua_createtable(L, 0, 2);
    lua_newtable(L);
    lua_setfield(L, -2, "done");
    lua_newtable(L);
    lua_setfield(L, -2, "live");
  }
  push_node_key(L, b);
  lua_setfield(L, -2, "key");
  lua_getfield(L, -1, "live");
  save_start(L, b, st, lua_gettop(L));
  lua_pop(L, 1);
  lua_createtable(L, 0, 4);
  lua_getfield(L, RUN, "run");
  lua_setfield(L, -2, "run");
  lua_insert(L, -2);
  lua_setfield(L, -2, "group");
  push_node_key(L, b);
  lua_setfield(L, -2, "prefix");
  push_path(L, b, st);
  lua_setfield(L, -2, "path");
  lua_setiuservalue(L, gidx, C_RUN);
}

static int ret_args(lua_State *L) {
  return lua_gettop(L);
}

static int item_main_k(lua_State *L, int status, lua_KContext ctx) {
  if (status == LUA_OK || status == LUA_YIELD)
    return lua_gettop(L) - (int)ctx;
  if (!pf_is_pending(L, -1)) {   /* a question (pf.interrupt) fails nothing */
    lua_getfield(L, 2, "run");
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "failed");
    lua_pop(L, 1);
  }
  return lua_error(L);
}

/* The body of an item task of a durable run: the walk (kind, self,
** shared, x, rec, snap) under the walk's message handler (the error
** keeps its where line). An error that ends the item fails the run: no
** save after it, while its other items are being cancelled, may see
** what the failed node left in shared. */
static int item_main(lua_State *L) {
  lua_settop(L, 6);
  lua_pushcfunction(L, pf_walk_msgh);
  lua_insert(L, 1);
  lua_pushvalue(L, 6);
  lua_insert(L, 2);
  lua_pushcfunction(L, pf_walk_body);
  lua_insert(L, 3);
  return item_main_k(L, lua_pcallk(L, 6, LUA_MULTRET, 1, 2, item_main_k), 2);
}

/* The item body's function is item_main, not the walk's. */
static void use_item_main(lua_State *L, int nargs) {
  lua_pushcfunction(L, item_main);
  lua_replace(L, -(nargs + 2));
}

/* Item i of the group at gidx was done before the resume: pushes a
** function returning its result, and the result; else returns 0. */
int pf_ckpt_item_done(lua_State *L, int gidx, lua_Integer i) {
  lua_getiuservalue(L, gidx, C_RUN);
  lua_getfield(L, -1, "group");
  lua_getfield(L, -1, "done");
  if (lua_rawgeti(L, -1, i) != LUA_TTABLE) {
    lua_pop(L, 4);
    return 0;
  }
  lua_rawgeti(L, -1, 1);
  lua_replace(L, -5);
  lua_pop(L, 3);
  lua_pushcfunction(L, ret_args);
  lua_insert(L, -2);
  return 1;
}

/* Pushes item i's record and its saved frames (or nil); an item's own
** self (at self, if not 0) gets its key. */
int pf_ckpt_item_rec(lua_State *L, int gidx, lua_Integer i, int self) {
  int rec;
  lua_getiuservalue(L, gidx, C_RUN);
  lua_createtable(L, 0, 5);
  rec = lua_gettop(L);
  lua_getfield(L, rec - 1, "run");
  lua_setfield(L, rec, "run");
  lua_getfield(L, rec - 1, "group");
  lua_setfield(L, rec, "group");
  lua_pushinteger(L, i);
  lua_setfield(L, rec, "index");
  lua_getfield(L, rec - 1, "prefix");
  lua_pushfstring(L, "%s[%I]", lua_tostring(L, -1), (LUAI_UACINT)i);
  lua_remove(L, -2);
  if (self) {
    lua_pushvalue(L, -1);
    set_key(L, self);
  }
  lua_setfield(L, rec, "prefix");
  lua_getfield(L, rec - 1, "path");
  lua_pushfstring(L, "%s[%I]", lua_tostring(L, -1), (LUAI_UACINT)i);
  lua_setfield(L, rec, "path");
  lua_pop(L, 1);
  lua_getfield(L, rec, "group");
  lua_getfield(L, -1, "live");
  lua_rawgeti(L, -1, i);
  lua_replace(L, rec - 1);
  lua_pop(L, 2);
  lua_insert(L, -2);   /* rec, frames */
  use_item_main(L, 6);
  return 2;
}

/* ------------------------------------------------------------ the record */

/* Pushes t's run record, or nil if t is not part of a durable run. */
void pf_push_run(lua_State *L, pf_task *t) {
  if (t == NULL || !t->in_run) {
    lua_pushnil(L);
    return;
  }
  pf_push_task(L, t);
  lua_getiuservalue(L, -1, PF_UV_RUN);
  lua_remove(L, -2);
}

/* core.task_run([record]): the running task's run record; with an
** argument (nil clears it), sets it and returns the one before. */
static int l_task_run(lua_State *L) {
  pf_task *t = pf_current(L);
  int set = lua_gettop(L) > 0;
  if (set && !lua_isnil(L, 1)) luaL_checktype(L, 1, LUA_TTABLE);
  pf_push_run(L, t);
  if (set && t != NULL) {
    pf_push_task(L, t);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, PF_UV_RUN);
    lua_pop(L, 1);
    t->in_run = !lua_isnil(L, 1);
  }
  return 1;
}

/* core.run_context(): the running task's run record (nil outside a
** durable run), and the idempotency key of the node whose prep, exec or
** post is running (nil if none). */
static int l_run_context(lua_State *L) {
  pf_push_run(L, pf_current(L));
  if (lua_isnil(L, -1)) return 1;
  pf_push_running_self(L);
  if (lua_istable(L, -1)) {
    lua_pushstring(L, KEY);
    lua_rawget(L, -2);
    lua_remove(L, -2);
  }
  return 2;
}

static const char RUNNER_KEY = 'D';

/* core.set_durable(fn): the runner of node:run with a store */
static int l_set_durable(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &RUNNER_KEY);
  return 0;
}

static int ret_all_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  return lua_gettop(L) - (int)ctx;
}

/* node:run(shared, opts) with opts.store: durable.lua's run, which
** returns last, run. The arguments are node, shared, opts. */
int pf_ckpt_run(lua_State *L) {
  lua_settop(L, 3);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &RUNNER_KEY) != LUA_TFUNCTION)
    return luaL_error(L, "run: durable runs need require \"pocketflow\"");
  lua_insert(L, 1);
  lua_callk(L, 3, LUA_MULTRET, 0, ret_all_k);
  return ret_all_k(L, LUA_OK, 0);
}

static const luaL_Reg funcs[] = {
  {"task_run", l_task_run},
  {"run_context", l_run_context},
  {"set_durable", l_set_durable},
  {"walk_msgh", pf_walk_msgh},
  {NULL, NULL}
};

extern const pf_chunk pf_durable_lua;

void pf_open_checkpoint(lua_State *L) {
  pf_preload(L, "pocketflow.durable", &pf_durable_lua);
  luaL_setfuncs(L, funcs, 0);
  lua_pushinteger(L, PF_K_WALK);
  lua_setfield(L, -2, "walk_kind");
}

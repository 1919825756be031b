/*
** Names and the where line of errors (API.md section 5). A node's name
** is read raw; the where line is read off a walk's frames (walk.h).
*/
#include <stdarg.h>
#include <string.h>

#include "pf.h"
#include "pf_sched.h"
#include "walk.h"

/* ---------------------------------------------------------------- names */

/* Replaces the table on top by t[k], t's first field k along its
** __index chain, or nil. Raw reads only: no user code runs. */
static int raw_lookup(lua_State *L, const char *k) {
  int hops;
  for (hops = 0; hops < 100 && lua_istable(L, -1); hops++) {
    lua_pushstring(L, k);
    if (lua_rawget(L, -2) != LUA_TNIL) {
      lua_remove(L, -2);
      return lua_type(L, -1);
    }
    lua_pop(L, 1);
    if (!lua_getmetatable(L, -1)) break;
    lua_pushliteral(L, "__index");
    lua_rawget(L, -2);
    lua_remove(L, -2);
    lua_remove(L, -2);
  }
  lua_pop(L, 1);
  lua_pushnil(L);
  return LUA_TNIL;
}

/* Pushes the name of the node at idx (API.md section 5): its 'name' (the
** option, else its class's), else its class's __name, else "node".
** Returns 0 for "node". */
static int push_name(lua_State *L, int idx) {
  int found = 1;
  lua_pushvalue(L, idx);
  lua_pushvalue(L, -1);
  if (raw_lookup(L, "name") != LUA_TSTRING) {
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    if (raw_lookup(L, "__name") != LUA_TSTRING) {
      lua_pop(L, 1);
      lua_pushliteral(L, "node");
      found = 0;
    }
  }
  lua_remove(L, -2);
  return found;
}

/* The node's name, for messages: the string lives in the node's tables. */
const char *pf_node_name(lua_State *L, int idx) {
  const char *name = push_name(L, idx) ? lua_tostring(L, -1) : "node";
  lua_pop(L, 1);
  return name;
}


/* ---------------------------------------------------------------- where */

/* An error that leaves a node names where it happened (API.md section
** 5): "in Main > Research > Fetch (exec, attempt 3 of 3, item 7)". The
** line is made while the stack is as it was at the raise: by the
** message handler of exec and exec_fallback, by pf_walk_error, or by
** sched.c when an error leaves its task (prep and post run unprotected,
** at no cost). It goes into the task's error record, a table in its
** PF_UV_TRACE user value, {error, "where\ntraceback", kept}, which
** sched.c prints after the message. Frames are read through the debug
** interface, so the walk may be on another thread, suspended or dead:
** an item's path goes on in the walk that started the items. */

/* The phase of a frame in state st, for errors of the walk itself. */
static const char *phase_of(int st) {
  int kind = ST_KIND(st), p = ST_PHASE(st);
  if (p >= P_ATTEMPT) return "exec";
  if (kind == PF_K_WALK) return "walk";
  if (p <= 1) return "prep";
  return kind == PF_K_BATCH || kind == PF_K_PBATCH ? "exec" : "walk";
}

typedef struct Walk {
  lua_State *co;   /* the thread the walk runs on */
  lua_Debug ar;    /* its C function's record */
  pf_task *t;      /* co's task */
} Walk;

/* Pushes onto L slot i of the walk (nil if there is none). */
static void walk_slot(lua_State *L, Walk *w, int i) {
  if (!lua_checkstack(w->co, 1) || lua_getlocal(w->co, &w->ar, i) == NULL) {
    lua_pushnil(L);
    return;
  }
  lua_xmove(w->co, L, 1);
}

static lua_Integer walk_int(lua_State *L, Walk *w, int i) {
  lua_Integer v;
  walk_slot(L, w, i);
  v = lua_tointeger(L, -1);
  lua_pop(L, 1);
  return v;
}

/* The kind of the walk's frame f. A frame below the top keeps its state;
** the top one is the first (the walk's kind is slot 1) or its parent's
** child: a batch's item, a flow's walk, a walk's node. */
static int frame_kind(lua_State *L, Walk *w, int f, int top, int st) {
  int parent;
  if (f < top) return ST_KIND((int)walk_int(L, w, f + F_STATE));
  if (st >= 0) return ST_KIND(st);
  if (f == ROOT) return (int)walk_int(L, w, 1);
  parent = ST_KIND((int)walk_int(L, w, f - FS + F_STATE));
  if (parent == PF_K_BATCH) return PF_K_EXEC;
  if (parent != PF_K_WALK) return PF_K_WALK;
  walk_slot(L, w, f + F_SELF);   /* a walk's node: its class's kind */
  parent = raw_lookup(L, "__pfkind") == LUA_TNUMBER ? (int)lua_tointeger(L, -1)
                                                  : PF_K_NODE;
  lua_pop(L, 1);
  return parent;
}

/* Fills w with the innermost walk on co's stack; returns its level, or
** -1. Each lua_getstack walks the levels above its own, so the search
** stops at MAX_LEVEL: a stack overflow deep in user code gets no line. */
#define MAX_LEVEL 200
static int find_walk(lua_State *co, pf_task *t, Walk *w, int from) {
  int level;
  w->co = co;
  w->t = t;
  for (level = from; level < MAX_LEVEL && lua_getstack(co, level, &w->ar);
       level++) {
    lua_CFunction f;
    if (!lua_checkstack(co, 1)) break;
    lua_getinfo(co, "f", &w->ar);
    f = lua_tocfunction(co, -1);
    lua_pop(co, 1);
    if (f == pf_run_node || f == pf_walk_body) return level;
  }
  return -1;
}

/* The walk that started t as an item of a parallel batch: its top frame
** is the group's. Returns that frame's kind, or 0. */
static int owner_walk(pf_task *t, Walk *w, int *frame, int *direct) {
  pf_task *owner;
  pf_group_body body;
  int kind;
  if (t == NULL || t->group == NULL) return 0;
  body = pf_group_owner(t->group, &owner, frame);
  kind = body ? pf_item_kind(body, direct) : 0;
  if (kind == 0 || !lua_getstack(owner->co, 0, &w->ar)) return 0;
  w->co = owner->co;
  w->t = owner;
  return kind;
}

/* Pushes onto L the path of the frames ROOT..top of w (top in state st,
** or -1 if not known): their nodes' names joined by " > ", after the
** path of the parallel batch that started the walk as an item. A WALK
** frame repeats its flow's node and an EXEC frame its batch's. Sets
** *item to the innermost batch item. */
static void push_path(lua_State *L, Walk *w, int top, int st,
                      lua_Integer *item) {
  Walk ow;
  int f, frame, direct, kind, n = 0;
  luaL_checkstack(L, 4, "where");
  kind = frame_kind(L, w, ROOT, top, st);
  if ((kind == PF_K_WALK || kind == PF_K_EXEC) &&
      (kind = owner_walk(w->t, &ow, &frame, &direct)) != 0) {
    push_path(L, &ow, frame,
              kind == PF_K_PBATCH ? PBATCH_GATHERED : PBFLOW_GATHERED, item);
    *item = w->t->group_idx;
    n = 1;
  } else {
    lua_pushliteral(L, "");
  }
  for (f = ROOT; f <= top; f += FS) {
    kind = frame_kind(L, w, f, top, st);
    if (f < top && (kind == PF_K_BATCH || kind == PF_K_BFLOW))
      *item = walk_int(L, w, f + F_INDEX);
    if (kind == PF_K_WALK || kind == PF_K_EXEC) continue;
    walk_slot(L, w, f + F_SELF);
    push_name(L, -1);
    lua_remove(L, -2);
    if (n++ > 0) {
      lua_pushliteral(L, " > ");
      lua_insert(L, -2);
    }
    lua_concat(L, n > 1 ? 3 : 2);
  }
}

/* Pushes "in PATH (PHASE[, attempt A of M][, item I])" for frame top of
** w; child, if not 0, is an index on L of a node past the path's end.
** attempt 0 leaves the attempt out. */
static void push_where(lua_State *L, Walk *w, int top, int st, int child,
                       const char *phase, lua_Integer attempt) {
  lua_Integer item = 0;
  int n = 1;
  if (child) child = lua_absindex(L, child);
  push_path(L, w, top, st, &item);
  if (child) {
    lua_pushliteral(L, " > ");
    push_name(L, child);
    lua_concat(L, 3);
  }
  lua_pushfstring(L, "in %s (%s", lua_tostring(L, -1), phase);
  lua_remove(L, -2);
  if (attempt > 0) {
    lua_Integer max;
    walk_slot(L, w, top + F_SELF);
    raw_lookup(L, "max_retries");
    max = pf_retries(L, -1);
    lua_pop(L, 1);
    if (max > 0) lua_pushfstring(L, ", attempt %I of %I", (LUAI_UACINT)attempt,
                                 (LUAI_UACINT)max);
    else lua_pushfstring(L, ", attempt %I", (LUAI_UACINT)attempt);
    n++;
  }
  if (item > 0) {
    lua_pushfstring(L, ", item %I", (LUAI_UACINT)item);
    n++;
  }
  lua_pushliteral(L, ")");
  lua_concat(L, n + 1);
}

/* The phase of the method f (on L's top, popped) that frame top of w was
** calling; sets *attempt for exec and exec_fallback. */
static const char *call_phase(lua_State *L, Walk *w, int top, int kind,
                              lua_Integer *attempt) {
  static const char *const names[] = {"prep", "exec", "exec_fallback",
                                      "post"};
  int i, first = kind == PF_K_EXEC ? 1 : 0, last = kind == PF_K_EXEC ? 2 : 3;
  walk_slot(L, w, top + F_SELF);
  for (i = first; i < last; i++) {
    lua_pushvalue(L, -1);
    raw_lookup(L, names[i]);
    if (lua_rawequal(L, -1, -3)) break;
    lua_pop(L, 1);
  }
  lua_pop(L, i < last ? 3 : 2);
  *attempt = 0;
  if (i == last && (kind == PF_K_PBATCH || kind == PF_K_PBFLOW))
    return kind == PF_K_PBATCH ? "exec" : "walk";   /* distribute (queue.lua) */
  if (i == 1 || i == 2)   /* exec's own failure is not counted yet */
    *attempt = walk_int(L, w, top + F_FAILS) + (i == 1);
  return names[i];
}

/* The number of the walk's slots: they end below the method it calls,
** so the top frame ends there. */
static int count_slots(Walk *w) {
  int lo = 0, hi = 1;
  while (hi < (1 << 24) && lua_getlocal(w->co, &w->ar, hi) != NULL) {
    lua_pop(w->co, 1);
    lo = hi;
    hi *= 2;
  }
  while (hi - lo > 1) {
    int mid = lo + (hi - lo) / 2;
    if (lua_getlocal(w->co, &w->ar, mid) != NULL) {
      lua_pop(w->co, 1);
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return lo;
}

/* Pushes the where line of an error being raised on co, the thread of
** task t, whose stack is as it was at the raise (level 'first' raised
** it): the innermost walk on it was calling a method of its top frame,
** or t is an item that ran exec as its body (group.c). An error a walk
** raised itself (a run's bad argument) is its caller's: the walk above.
** Returns 0 if there is none. */
static int push_raise_where(lua_State *L, lua_State *co, pf_task *t,
                            int first) {
  Walk w;
  lua_Debug mar;
  lua_Integer attempt;
  const char *phase;
  int level, top, kind, frame, direct;
  level = find_walk(co, t, &w, first);
  if (level == first) level = find_walk(co, t, &w, first + 1);
  if (level < 0) {
    lua_Integer item = 0;
    if (owner_walk(t, &w, &frame, &direct) != PF_K_PBATCH || !direct)
      return 0;
    push_path(L, &w, frame, PBATCH_GATHERED, &item);
    lua_pushfstring(L, "in %s (exec, attempt 1 of 1, item %I)",
                    lua_tostring(L, -1), (LUAI_UACINT)t->group_idx);
    lua_remove(L, -2);
    return 1;
  }
  if (!lua_checkstack(co, 1)) return 0;
  top = count_slots(&w) - FS + 1;
  if (top < ROOT || (top - ROOT) % FS != 0) return 0;
  kind = frame_kind(L, &w, top, top, -1);
  if (kind == PF_K_WALK || !lua_getstack(co, level - 1, &mar)) return 0;
  lua_getinfo(co, "f", &mar);
  lua_xmove(co, L, 1);
  phase = call_phase(L, &w, top, kind, &attempt);
  push_where(L, &w, top, -1, 0, phase, attempt);
  return 1;
}

/* Pushes the self of the top frame of the innermost walk on L's stack:
** the run of the node (or item) whose prep, exec or post is running; nil
** if there is none (checkpoint.c: the running node's idempotency key). */
void pf_push_running_self(lua_State *L) {
  Walk w;
  int top;
  if (find_walk(L, NULL, &w, 0) < 0 || !lua_checkstack(L, 2)) {
    lua_pushnil(L);
    return;
  }
  top = count_slots(&w) - FS + 1;
  if (top < ROOT || (top - ROOT) % FS != 0) lua_pushnil(L);
  else walk_slot(L, &w, top + F_SELF);
}

/* An error on co's top leaves task t, unrecorded: the message gains the
** where line (sched.c calls this before adding the traceback). */
void pf_add_where(lua_State *L, pf_task *t, lua_State *co) {
  if (lua_type(co, -1) != LUA_TSTRING || !lua_checkstack(co, 1) ||
      !push_raise_where(L, co, t, 0))
    return;
  lua_pushfstring(L, "%s\n%s", lua_tostring(co, -1), lua_tostring(L, -1));
  lua_xmove(L, co, 1);
  lua_replace(co, -2);
  lua_pop(L, 1);
}

/* Pushes t's record if it is the one of the value at idx; returns 1 if
** it did. */
int pf_push_record(lua_State *L, pf_task *t, int idx) {
  idx = lua_absindex(L, idx);
  pf_push_task(L, t);
  if (lua_getiuservalue(L, -1, PF_UV_TRACE) == LUA_TTABLE) {
    lua_rawgeti(L, -1, 1);
    if (lua_rawequal(L, -1, idx)) {
      lua_pop(L, 1);
      lua_remove(L, -2);
      return 1;
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 2);
  return 0;
}

/* Makes the value at idx t's recorded error: the where line on top
** (popped), or none if nil, and L's traceback from level on. */
static void new_record(lua_State *L, pf_task *t, int idx, int level) {
  int where = lua_gettop(L);
  idx = lua_absindex(L, idx);
  pf_push_task(L, t);
  lua_createtable(L, 3, 0);
  lua_pushvalue(L, idx);
  lua_rawseti(L, -2, 1);
  if (lua_isstring(L, where)) {
    lua_pushvalue(L, where);
    lua_pushliteral(L, "\n");
    luaL_traceback(L, L, NULL, level);
    lua_concat(L, 3);
  } else {
    luaL_traceback(L, L, NULL, level);
  }
  lua_rawseti(L, -2, 2);
  lua_setiuservalue(L, -2, PF_UV_TRACE);
  lua_settop(L, where - 1);
}

/* True when the error being handled was raised by a walk: passed on
** from an inner run, or raised by pf_walk_error, not raised anew. */
static int raised_by_walk(lua_State *L) {
  lua_Debug ar;
  lua_CFunction f = NULL;
  if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "f", &ar)) {
    f = lua_tocfunction(L, -1);
    lua_pop(L, 1);
  }
  return f == pf_run_node || f == pf_walk_body;
}

/* The message handler of exec and exec_fallback: a string error gets a
** record with where it was raised, so that it reports the user's line
** when it leaves the task. The record of an error a walk passes on, or
** a fallback re-raises, is kept. The value is left unchanged. */
int pf_walk_msgh(lua_State *L) {
  pf_task *t = pf_current(L);
  if (t && lua_type(L, 1) == LUA_TSTRING && !pf_has_traceback(L, 1)) {
    int by_walk = raised_by_walk(L), kept = 0;
    if (pf_push_record(L, t, 1))
      kept = lua_rawgeti(L, -1, 3) != LUA_TNIL || by_walk;
    if (!kept) {
      if (!push_raise_where(L, L, t, 1)) lua_pushnil(L);
      new_record(L, t, 1, 1);
    }
  }
  lua_settop(L, 1);
  return 1;
}

/* Raises an error of the walk itself, at the caller's position, as one
** leaving the node of frame b in state st and phase (NULL: st's);
** child: see push_where. */
int pf_walk_error(lua_State *L, int b, int st, int child,
                  const char *phase, const char *fmt, ...) {
  va_list ap;
  pf_task *t = pf_current(L);
  luaL_where(L, 1);
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_concat(L, 2);
  if (t != NULL) {
    Walk w;
    w.co = L;
    w.t = t;
    if (child) child = lua_absindex(L, child);
    if (phase == NULL) phase = phase_of(st);
    if (lua_getstack(L, 0, &w.ar)) {
      push_where(L, &w, b, st, child, phase,
                 ST_PHASE(st) >= P_ATTEMPT ? lua_tointeger(L, b + F_FAILS)
                                           : 0);
      new_record(L, t, -2, 0);
    }
  }
  return lua_error(L);
}

/* The fallback took the error: its record is stale. */
void pf_drop_record(lua_State *L) {
  pf_task *t = pf_current(L);
  if (t) {
    pf_push_task(L, t);
    lua_pushnil(L);
    lua_setiuservalue(L, -2, PF_UV_TRACE);
    lua_pop(L, 1);
  }
}


/* ------------------------------------------------------------ the node here */

/* For pf.interrupt (lua/pocketflow/interrupt.lua): which node run the
** calling user code belongs to, read off the walks like the where line. */

/* Appends "[i]" to the string on top. */
static void add_item(lua_State *L, lua_Integer i) {
  lua_pushfstring(L, "%s[%I]", lua_tostring(L, -1), (LUAI_UACINT)i);
  lua_remove(L, -2);
}

/* Pushes the key of frame top of w (in state st, or -1): its path with
** every item on it, "Main/Docs[2]/Ask": the names joined by "/", a batch
** or batch flow followed by the item running in it; after the key of the
** walk that started w's task as an item. */
static void push_key(lua_State *L, Walk *w, int top, int st) {
  Walk ow;
  int f, frame, direct, kind, n = 0;
  luaL_checkstack(L, 4, "pf.interrupt");
  kind = frame_kind(L, w, ROOT, top, st);
  if ((kind == PF_K_WALK || kind == PF_K_EXEC) &&
      (kind = owner_walk(w->t, &ow, &frame, &direct)) != 0) {
    push_key(L, &ow, frame,
             kind == PF_K_PBATCH ? PBATCH_GATHERED : PBFLOW_GATHERED);
    add_item(L, w->t->group_idx);
    n = 1;
  } else {
    lua_pushliteral(L, "");
  }
  for (f = ROOT; f <= top; f += FS) {
    kind = frame_kind(L, w, f, top, st);
    if (kind == PF_K_WALK || kind == PF_K_EXEC) continue;
    walk_slot(L, w, f + F_SELF);
    push_name(L, -1);
    lua_remove(L, -2);
    if (n++ > 0) {
      lua_pushliteral(L, "/");
      lua_insert(L, -2);
    }
    lua_concat(L, n > 1 ? 3 : 2);
    if (f < top && (kind == PF_K_BATCH || kind == PF_K_BFLOW))
      add_item(L, walk_int(L, w, f + F_INDEX));
  }
}

/* Pushes the options of the run w belongs to: the third argument of the
** innermost node:run, through the walks that started items. */
static void push_run_opts(lua_State *L, Walk w) {
  int frame, direct;
  for (;;) {
    lua_CFunction f;
    if (!lua_checkstack(w.co, 1)) break;
    lua_getinfo(w.co, "f", &w.ar);
    f = lua_tocfunction(w.co, -1);
    lua_pop(w.co, 1);
    if (f == pf_run_node) {
      walk_slot(L, &w, 4);
      return;
    }
    if (owner_walk(w.t, &w, &frame, &direct) == 0) break;
  }
  lua_pushnil(L);
}

/* True if the function at level of thread co is the prep, exec,
** exec_fallback or post of frame top (of that kind) of w, or was
** replaced by a tail call. */
static int is_method(lua_State *L, lua_State *co, int level, Walk *w,
                     int top, int kind) {
  static const char *const names[] = {"prep", "post", "exec",
                                      "exec_fallback"};
  lua_Debug mar;
  int i, found = 0;
  if (level < 0 || !lua_getstack(co, level, &mar) || !lua_checkstack(co, 1))
    return 0;
  lua_getinfo(co, "tf", &mar);
  if (mar.istailcall) {   /* return pf.interrupt(...): the method is gone */
    lua_pop(co, 1);
    return 1;
  }
  lua_xmove(co, L, 1);
  walk_slot(L, w, top + F_SELF);
  for (i = kind == PF_K_EXEC ? 2 : 0; i < 4 && !found; i++) {
    lua_pushvalue(L, -1);
    raw_lookup(L, names[i]);
    found = lua_rawequal(L, -1, -3);
    lua_pop(L, 1);
  }
  lua_pop(L, 2);
  return found;
}

/* The top frame of the walk w: its base, or 0 if it is a walk's, or if
** the slots do not end on a frame. A walk waiting for a task may keep a
** few slots above its frames (with extra): the frame below them. */
static int top_frame(lua_State *L, Walk *w, int *kind, int extra) {
  int n = count_slots(w) - ROOT + 1, top;
  if (n < FS || (!extra && n % FS != 0)) return 0;
  top = ROOT + (n / FS - 1) * FS;
  *kind = frame_kind(L, w, top, top, -1);
  return *kind == PF_K_WALK ? 0 : top;
}

/* Task t has no walk: is its parent's walk waiting for it (a task the
** walk runs a method in, as an attempt with a timeout), with t running
** that method? Fills w and returns the top frame, else 0. */
static int waited_by_walk(lua_State *L, pf_task *t, Walk *w, int *kind) {
  lua_CFunction f;
  int top, deepest = 0;
  lua_Debug ar;
  pf_task *p = t->parent;
  if (p == NULL || p->co == NULL || !lua_checkstack(p->co, 1) ||
      !lua_getstack(p->co, 0, &w->ar))
    return 0;
  lua_getinfo(p->co, "f", &w->ar);
  f = lua_tocfunction(p->co, -1);
  lua_pop(p->co, 1);
  if (f != pf_run_node && f != pf_walk_body) return 0;
  w->co = p->co;
  w->t = p;
  if ((top = top_frame(L, w, kind, 1)) == 0) return 0;
  while (deepest < MAX_LEVEL && lua_getstack(L, deepest + 1, &ar)) deepest++;
  /* the task's body is the method, or a function that called it */
  return is_method(L, L, deepest, w, top, *kind) ||
         is_method(L, L, deepest - 1, w, top, *kind) ? top : 0;
}

/* core.node_here() -> opts, key, run, name: for user code that runs in
** a node's prep, exec, exec_fallback or post (in its task): the options
** of its run (or nil), the node's key (push_key), the table that stands
** for this run of the node (for a batch item: of the batch), a new one
** each time the node runs, and the node's name. Nothing elsewhere. */
int pf_node_here(lua_State *L) {
  Walk w;
  int level, top, kind, frame, direct;
  pf_task *t = pf_current(L);
  if (t == NULL) return 0;
  level = find_walk(L, t, &w, 1);
  if (level < 0 && owner_walk(t, &w, &frame, &direct) == PF_K_PBATCH &&
      direct) {   /* a parallel item running exec as its body */
    push_run_opts(L, w);
    push_key(L, &w, frame, PBATCH_GATHERED);
    add_item(L, t->group_idx);
    walk_slot(L, &w, frame + F_SELF);
    push_name(L, -1);
    return 4;
  }
  if (level < 0) {
    if ((top = waited_by_walk(L, t, &w, &kind)) == 0) return 0;
  } else {
    top = top_frame(L, &w, &kind, 0);
    if (top == 0 || !is_method(L, L, level - 1, &w, top, kind)) return 0;
  }
  push_run_opts(L, w);
  push_key(L, &w, top, -1);
  if (kind == PF_K_EXEC && top == ROOT &&
      owner_walk(w.t, &w, &frame, &direct) != 0)
    walk_slot(L, &w, frame + F_SELF);   /* a parallel item's batch */
  else
    walk_slot(L, &w, top + F_SELF);
  push_name(L, -1);
  return 4;
}

/* Errors that end a node's attempts at once, without retry or fallback
** (pf.interrupt's): the values about to be raised, as keys of a registry
** table, weak for tables. Keyed by value, not by thread, as exec may run
** in a task of its own (timeouts). A mark is taken when the walk sees
** it; a string left unseen (raised in prep or post, or caught) stays. */
static const char NO_RETRY_KEY = 'R';

/* core.no_retry(v): v is about to be raised and must not be retried. */
int pf_mark_no_retry(lua_State *L) {
  lua_settop(L, 1);
  if (lua_isnil(L, 1) || (lua_type(L, 1) == LUA_TNUMBER &&
                          lua_tonumber(L, 1) != lua_tonumber(L, 1)))
    return 0;   /* not a key */
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &NO_RETRY_KEY) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &NO_RETRY_KEY);
  }
  lua_pushvalue(L, 1);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  return 0;
}

/* True (and the mark is taken) if the error at idx was marked by
** core.no_retry. Called on the failure path only. */
int pf_no_retry(lua_State *L, int idx) {
  int r = 0;
  idx = lua_absindex(L, idx);
  if (lua_isnil(L, idx) || (lua_type(L, idx) == LUA_TNUMBER &&
                            lua_tonumber(L, idx) != lua_tonumber(L, idx)))
    return 0;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &NO_RETRY_KEY) == LUA_TTABLE) {
    lua_pushvalue(L, idx);
    r = lua_rawget(L, -2) != LUA_TNIL;
    lua_pop(L, 1);
    if (r) {
      lua_pushvalue(L, idx);
      lua_pushnil(L);
      lua_rawset(L, -3);
    }
  }
  lua_pop(L, 1);
  return r;
}

/* Pushes the record string the ended task at child (0: none) keeps for
** the value at err, or this thread's traceback. */
static void push_child_record(lua_State *L, int child, int err) {
  int top = lua_gettop(L);
  /* the child has ended: its userdata, not its anchor, holds the record */
  if (child && lua_getiuservalue(L, child, PF_UV_TRACE) == LUA_TTABLE &&
      lua_rawgeti(L, -1, 1) != LUA_TNIL && lua_rawequal(L, -1, err) &&
      lua_rawgeti(L, -2, 2) == LUA_TSTRING) {
    lua_replace(L, top + 1);
    lua_settop(L, top + 1);
    return;
  }
  lua_settop(L, top);
  luaL_traceback(L, L, NULL, 0);
}

/* The record string on top came from the task that ran the flow of
** frame b: its where line starts at that flow. The path of the frames
** below b goes in front. */
static void prefix_path(lua_State *L, Walk *w, int b) {
  lua_Integer item = 0;
  const char *rec = lua_tostring(L, -1);
  if (b <= ROOT || strncmp(rec, "in ", 3) != 0) return;
  push_path(L, w, b - FS, (int)walk_int(L, w, b - FS + F_STATE), &item);
  if (lua_rawlen(L, -1) > 0)
    lua_pushfstring(L, "in %s > %s", lua_tostring(L, -1), rec + 3);
  else
    lua_pushvalue(L, -2);
  lua_replace(L, -3);
  lua_pop(L, 1);
}

/* The error at err leaves a task the walk waited for, the ended one at
** child (0: the walk made the error itself), and becomes the running
** task's record. For an attempt (attempt > 0), the where line of frame
** b in state st, then the child's record or this thread's traceback;
** for a flow's task (attempt 0), the child's record, its where line
** gaining the path of the frames below b. */
void pf_adopt_record(lua_State *L, int err, int child, int b, int st,
                     lua_Integer attempt) {
  pf_task *t = pf_current(L);
  Walk w;
  err = lua_absindex(L, err);
  if (t == NULL || lua_type(L, err) != LUA_TSTRING ||
      pf_has_traceback(L, err) || !lua_checkstack(L, 8) ||
      !lua_getstack(L, 0, &w.ar))
    return;
  w.co = L;
  w.t = t;
  if (attempt > 0) {
    push_where(L, &w, b, st, 0, phase_of(st), attempt);
    lua_pushliteral(L, "\n");
    push_child_record(L, child, err);
    lua_concat(L, 3);
  } else {
    push_child_record(L, child, err);
    prefix_path(L, &w, b);
  }
  pf_push_task(L, t);
  lua_createtable(L, 3, 0);
  lua_pushvalue(L, err);
  lua_rawseti(L, -2, 1);
  lua_pushvalue(L, -3);
  lua_rawseti(L, -2, 2);
  lua_setiuservalue(L, -2, PF_UV_TRACE);
  lua_pop(L, 2);
}

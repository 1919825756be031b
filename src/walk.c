/*
** The walk: running nodes, flows and batches. One C function drives an
** explicit stack of frames kept on the task's Lua stack, so nesting costs
** stack slots, not C stack, and every call into user code is a
** lua_callk/lua_pcallk whose continuation re-enters the same loop: user
** code may wait anywhere.
**
** A frame is FS consecutive slots; the top frame is the one running. A
** phase that waits for a call's result finds it on top, above the frame.
*/
#include <stdarg.h>
#include <string.h>

#include "pf.h"
#include "pf_sched.h"

#define FS 8
enum { F_SELF, F_STATE, F_SHARED, F_PREP, F_RES, F_I, F_AUX, F_PARAMS };

#define MSGH 5      /* the message handler, below the first frame */
#define KEYS 6      /* the keys table */
#define ROOT 7      /* base of the first frame */

/* Field names, interned once in a table kept below the first frame: a
** lua_getfield with a C string pays a string-cache lookup (strcmp) on
** every step. */
enum { K_PREP = 1, K_EXEC, K_POST, K_FALLBACK, K_CUR_RETRY, K_SUCCESSORS,
       K_PARAMS, K_DEFAULT, K_INDEX, K_KIND, K_START, K_RETRIES, K_WAIT,
       K_MAXC, K_NKEYS };
static const char *const key_names[] = {
  NULL, "prep", "exec", "post", "exec_fallback", "cur_retry", "successors",
  "params", "default", "__index", "__pfkind", "start_node", "max_retries",
  "wait", "max_concurrency"};
static const char KEYS_KEY = 'K';

static void push_keys(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &KEYS_KEY) != LUA_TTABLE) {
    int i;
    lua_pop(L, 1);
    lua_createtable(L, K_NKEYS, 0);
    for (i = 1; i < K_NKEYS; i++) {
      lua_pushstring(L, key_names[i]);
      lua_rawseti(L, -2, i);
    }
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &KEYS_KEY);
  }
}

/* t[key] for the table at idx (metamethods apply) */
static int get_key(lua_State *L, int idx, int key) {
  lua_rawgeti(L, KEYS, key);
  return lua_gettable(L, idx < 0 ? idx - 1 : idx);
}

/* The default prep, exec and post: calls to it are skipped. */
int pf_noop(lua_State *L) {
  (void)L;
  return 0;
}

/* The default exec_fallback: re-raises err (self, prep_res, err) as is. */
int pf_reraise(lua_State *L) {
  lua_settop(L, 3);
  return lua_error(L);
}

#define ST(kind, phase) ((kind) << 5 | (phase))

/* Phases of exec, after those of the frame's own kind: a node runs them
** inline, an item's EXEC frame starts with them. */
enum { EX_ATTEMPT = 16, EX_RESULT };

/* The running frame's state is a C variable, carried through calls and
** yields in the continuation context with the frame's base; the F_STATE
** slot keeps the state of frames below the top only. */
#define ST_BITS 10   /* ST() values stay below 1 << ST_BITS */
#define CTX(b, st) ((lua_KContext)(b) << ST_BITS | (st))

static int walk(lua_State *L, int status, int b, int st);

static int walk_k(lua_State *L, int status, lua_KContext ctx) {
  return walk(L, status, (int)(ctx >> ST_BITS),
              (int)(ctx & ((1 << ST_BITS) - 1)));
}

/* --------------------------------------------------------------- frames */

static void set_state(lua_State *L, int b, int st) {
  lua_pushinteger(L, st);
  lua_replace(L, b + F_STATE);
}

static int get_state(lua_State *L, int b) {
  return (int)lua_tointeger(L, b + F_STATE);
}

static void set_int(lua_State *L, int b, int slot, lua_Integer v) {
  lua_pushinteger(L, v);
  lua_replace(L, b + slot);
}

static lua_Integer get_int(lua_State *L, int b, int slot) {
  return lua_tointeger(L, b + slot);
}

static int first_state(int kind) {
  return ST(kind, kind == PF_K_EXEC ? EX_ATTEMPT : 0);
}

/* Pushes a frame running self (a run's own table; 0 = the value on top)
** with the given shared and prep slots (0 = nil). Returns its base; the
** caller sets the state, first_state(kind). */
static int push_frame(lua_State *L, int self, int shared, int prep) {
  int b;
  /* lua_checkstack also fails when the stack cannot grow for memory */
  if (!lua_checkstack(L, FS + LUA_MINSTACK))
    luaL_error(L, lua_gettop(L) < LUAI_MAXSTACK - 2 * (FS + LUA_MINSTACK)
                  ? "not enough memory (flow frames)"
                  : "stack overflow (flow nesting too deep)");
  if (self) lua_pushvalue(L, self);
  b = lua_gettop(L);
  lua_pushinteger(L, 0);
  if (shared) lua_pushvalue(L, shared); else lua_pushnil(L);
  if (prep) lua_pushvalue(L, prep); else lua_pushnil(L);
  lua_pushnil(L);
  lua_pushinteger(L, 0);
  lua_pushnil(L);
  lua_pushnil(L);
  return b;
}

/* The frame at b is done; its result is on top. Returns the parent's
** base, with the result on top, or 0 when b was the first frame. */
static int pop_frame(lua_State *L, int b) {
  lua_replace(L, b);
  lua_settop(L, b);
  return b == ROOT ? 0 : b - FS;
}

/* ---------------------------------------------------------------- nodes */

/* The kind of a node object (its class's __pfkind), 0 if not a node.
** Outside the walk (no keys table yet) the field is looked up by name. */
static int node_kind(lua_State *L, int idx, int in_walk) {
  int kind = 0;
  if (lua_type(L, idx) == LUA_TTABLE && lua_getmetatable(L, idx)) {
    int type = in_walk ? get_key(L, -1, K_KIND)
                       : lua_getfield(L, -1, key_names[K_KIND]);
    if (type == LUA_TNUMBER) kind = (int)lua_tointeger(L, -1);
    lua_pop(L, 2);
  }
  /* the walk's own frame kinds (ORCH, EXEC) are not classes */
  return kind >= PF_K_NODE && kind <= PF_K_PBFLOW ? kind : 0;
}

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
static const char *node_name(lua_State *L, int idx) {
  const char *name = push_name(L, idx) ? lua_tostring(L, -1) : "node";
  lua_pop(L, 1);
  return name;
}

/* A run's own table: reads fall through to the node, writes stay here,
** so concurrent runs of one node keep their params and cur_retry apart.
** The node serves as the metatable, with __index pointing at itself. */
static void push_run_self(lua_State *L, int node, int params) {
  lua_createtable(L, 0, 2);
  lua_rawgeti(L, KEYS, K_INDEX);
  if (lua_rawget(L, node) != LUA_TTABLE) {
    lua_rawgeti(L, KEYS, K_INDEX);
    lua_pushvalue(L, node);
    lua_rawset(L, node);
  }
  lua_pop(L, 1);
  lua_rawgeti(L, KEYS, K_PARAMS);
  if (params) lua_pushvalue(L, params);
  else if (get_key(L, node, K_PARAMS) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
  }
  lua_rawset(L, -3);
  lua_pushvalue(L, node);
  lua_setmetatable(L, -2);
}

/* Pushes self's method and self, ready for the arguments, and returns 1;
** for the default no-op pushes its result (nil) instead and returns 0. */
static int push_method(lua_State *L, int b, int key) {
  get_key(L, b + F_SELF, key);
  if (lua_tocfunction(L, -1) == pf_noop) {
    lua_pop(L, 1);
    lua_pushnil(L);
    return 0;
  }
  lua_pushvalue(L, b + F_SELF);
  return 1;
}

/* Calls the method pushed with its nargs arguments; its result comes
** back to state st of the frame at b. An error goes on unprotected: the
** where line of a prep or post error is read off the stack (see where). */
static void call(lua_State *L, int b, int st, int nargs) {
  lua_callk(L, nargs + 1, 1, CTX(b, st), walk_k);
}

/* The same under the message handler, for exec and exec_fallback: the
** error and the status come back to st. */
static int pcall(lua_State *L, int b, int st, int nargs) {
  return lua_pcallk(L, nargs + 1, 1, MSGH, CTX(b, st), walk_k);
}

/* Calls post(self, shared, prep_res, exec_res) with exec_res on top; the
** frame ends with post's result. Returns the frame's new state. */
static int call_post(lua_State *L, int b) {
  lua_replace(L, b + F_RES);
  if (push_method(L, b, K_POST)) {
    lua_pushvalue(L, b + F_SHARED);
    lua_pushvalue(L, b + F_PREP);
    lua_pushvalue(L, b + F_RES);
    call(L, b, ST(PF_K_NODE, 3), 3);
  }
  return ST(PF_K_NODE, 3);
}

/* ---------------------------------------------------------------- where */

/* An error that leaves a node names where it happened (API.md section
** 5): "in Main > Research > Fetch (exec, attempt 3 of 3, item 7)". The
** line is made while the stack is as it was at the raise: by the
** message handler of exec and exec_fallback, by walk_error, or by
** sched.c when an error leaves its task (prep and post run unprotected,
** at no cost). It goes into the task's error record, a table in its
** PF_UV_TRACE user value, {error, "where\ntraceback", kept}, which
** sched.c prints after the message. Frames are read through the debug
** interface, so the walk may be on another thread, suspended or dead:
** an item's path goes on in the walk that started the items. */

/* The phase of a frame in state st, for errors of the walk itself. */
static const char *phase_of(int st) {
  int kind = st >> 5, p = st & 31;
  if (p >= EX_ATTEMPT) return "exec";
  if (kind == PF_K_ORCH) return "walk";
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
  if (f < top) return (int)walk_int(L, w, f + F_STATE) >> 5;
  if (st >= 0) return st >> 5;
  if (f == ROOT) return (int)walk_int(L, w, 1);
  parent = (int)walk_int(L, w, f - FS + F_STATE) >> 5;
  if (parent == PF_K_BATCH) return PF_K_EXEC;
  return parent == PF_K_ORCH ? PF_K_NODE : PF_K_ORCH;
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
    if (f == pf_run_node || f == pf_machine) return level;
  }
  return -1;
}

/* The walk that started t as an item of a parallel batch: its top frame
** is the group's. Returns that frame's kind, or 0. */
static int owner_walk(pf_task *t, Walk *w, int *frame, int *direct) {
  pf_task *owner;
  int kind;
  if (t == NULL || t->group == NULL) return 0;
  kind = pf_group_frame(t->group, &owner, frame, direct);
  if (kind == 0 || !lua_getstack(owner->co, 0, &w->ar)) return 0;
  w->co = owner->co;
  w->t = owner;
  return kind;
}

/* Pushes onto L the path of the frames ROOT..top of w (top in state st,
** or -1 if not known): their nodes' names joined by " > ", after the
** path of the parallel batch that started the walk as an item. An ORCH
** frame repeats its flow's node and an EXEC frame its batch's. Sets
** *item to the innermost batch item. */
static void push_path(lua_State *L, Walk *w, int top, int st,
                      lua_Integer *item) {
  Walk ow;
  int f, frame, direct, kind, n = 0;
  luaL_checkstack(L, 4, "where");
  kind = frame_kind(L, w, ROOT, top, st);
  if ((kind == PF_K_ORCH || kind == PF_K_EXEC) &&
      (kind = owner_walk(w->t, &ow, &frame, &direct)) != 0) {
    push_path(L, &ow, frame, ST(kind, 2), item);
    *item = w->t->group_idx;
    n = 1;
  } else {
    lua_pushliteral(L, "");
  }
  for (f = ROOT; f <= top; f += FS) {
    kind = frame_kind(L, w, f, top, st);
    if (f < top && (kind == PF_K_BATCH || kind == PF_K_BFLOW))
      *item = walk_int(L, w, f + F_I);
    if (kind == PF_K_ORCH || kind == PF_K_EXEC) continue;
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
    max = raw_lookup(L, "max_retries") == LUA_TNIL ? 1 : lua_tointeger(L, -1);
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
  if (i == 1 || i == 2)
    *attempt = walk_int(L, w, top + F_I) + (i == 1);  /* exec: not yet counted */
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
    push_path(L, &w, frame, ST(PF_K_PBATCH, 2), &item);
    lua_pushfstring(L, "in %s (exec, attempt 1 of 1, item %I)",
                    lua_tostring(L, -1), (LUAI_UACINT)t->group_idx);
    lua_remove(L, -2);
    return 1;
  }
  if (!lua_checkstack(co, 1)) return 0;
  top = count_slots(&w) - FS + 1;
  if (top < ROOT || (top - ROOT) % FS != 0) return 0;
  kind = frame_kind(L, &w, top, top, -1);
  if (kind == PF_K_ORCH || !lua_getstack(co, level - 1, &mar)) return 0;
  lua_getinfo(co, "f", &mar);
  lua_xmove(co, L, 1);
  phase = call_phase(L, &w, top, kind, &attempt);
  push_where(L, &w, top, -1, 0, phase, attempt);
  return 1;
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
static int push_record(lua_State *L, pf_task *t, int idx) {
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
** from an inner run, or raised by walk_error, not raised anew. */
static int raised_by_walk(lua_State *L) {
  lua_Debug ar;
  lua_CFunction f = NULL;
  if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "f", &ar)) {
    f = lua_tocfunction(L, -1);
    lua_pop(L, 1);
  }
  return f == pf_run_node || f == pf_machine;
}

/* The message handler of exec and exec_fallback: a string error gets a
** record with where it was raised, so that it reports the user's line
** when it leaves the task. The record of an error a walk passes on, or
** a fallback re-raises, is kept. The value is left unchanged. */
static int walk_msgh(lua_State *L) {
  pf_task *t = pf_current(L);
  if (t && lua_type(L, 1) == LUA_TSTRING && !pf_has_traceback(L, 1)) {
    int by_walk = raised_by_walk(L), kept = 0;
    if (push_record(L, t, 1))
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
static int walk_error(lua_State *L, int b, int st, int child,
                      const char *phase, const char *fmt, ...) {
  va_list ap;
  pf_task *t = pf_current(L);
  int p = st & 31;
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
                 p >= EX_ATTEMPT ? get_int(L, b, F_I) : 0);
      new_record(L, t, -2, 0);
    }
  }
  return lua_error(L);
}

/* ---------------------------------------------------------------- checks */

static lua_Integer checked_retries(lua_State *L, int b, int st) {
  int isnum;
  lua_Integer n;
  get_key(L, b + F_SELF, K_RETRIES);
  if (lua_isnil(L, -1)) n = 1, isnum = 1;
  else n = lua_tointegerx(L, -1, &isnum);
  lua_pop(L, 1);
  if (!isnum || n < 1)
    walk_error(L, b, st, 0, NULL, "%s: max_retries must be a positive "
               "integer", node_name(L, b + F_SELF));
  return n;
}

static lua_Number checked_wait(lua_State *L, int b, int st) {
  int isnum;
  lua_Number w;
  get_key(L, b + F_SELF, K_WAIT);
  if (lua_isnil(L, -1)) w = 0, isnum = 1;
  else w = lua_tonumberx(L, -1, &isnum);
  lua_pop(L, 1);
  if (!isnum || !(w >= 0))
    walk_error(L, b, st, 0, NULL, "%s: wait must be a non-negative number",
               node_name(L, b + F_SELF));
  return w;
}

/* Replaces the prep result on top with a copy of its array of items:
** nil gives an empty one; anything but a table is an error naming the
** node. The run reads the copy, so user code that changes prep's array
** while items run (replacing a param table, appending) changes nothing
** and cannot break what check_param_sets found. */
static void checked_items(lua_State *L, int b, int st, const char *what) {
  lua_Integer i, n;
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_newtable(L);
    return;
  }
  if (!lua_istable(L, -1))
    walk_error(L, b, st, 0, NULL, "%s: prep must return an array of %s "
               "(got %s)", node_name(L, b + F_SELF), what,
               luaL_typename(L, -1));
  n = (lua_Integer)lua_rawlen(L, -1);
  lua_createtable(L, n < (1 << 24) ? (int)n : 0, 0);
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, -2, i);
    lua_rawseti(L, -2, i);
  }
  lua_remove(L, -2);
}

static void check_param_sets(lua_State *L, int b, int st, int items) {
  lua_Integer i, n = (lua_Integer)lua_rawlen(L, items);
  for (i = 1; i <= n; i++) {
    if (lua_rawgeti(L, items, i) != LUA_TTABLE)
      walk_error(L, b, st, 0, NULL, "%s: prep must return an array of "
                 "param tables (item %d is a %s)", node_name(L, b + F_SELF),
                 (int)i, luaL_typename(L, -1));
    lua_pop(L, 1);
  }
}

/* ------------------------------------------------------------ successors */

/* "[a, b]": the node's known actions, sorted, for the flow-end warning. */
static void push_actions(lua_State *L, int succ) {
  luaL_Buffer B;
  lua_Integer n = 0, i;
  int list;
  lua_newtable(L);
  list = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, succ)) {
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    lua_rawseti(L, list, ++n);
  }
  if (lua_getglobal(L, "table") == LUA_TTABLE &&
      lua_getfield(L, -1, "sort") == LUA_TFUNCTION) {
    lua_pushvalue(L, list);
    lua_pcall(L, 1, 0, 0);  /* mixed key types stay unsorted */
  }
  lua_settop(L, list);
  luaL_buffinit(L, &B);
  luaL_addchar(&B, '[');
  for (i = 1; i <= n; i++) {
    if (i > 1) luaL_addstring(&B, ", ");
    lua_rawgeti(L, list, i);
    luaL_tolstring(L, -1, NULL);
    lua_remove(L, -2);
    luaL_addvalue(&B);
  }
  luaL_addchar(&B, ']');
  luaL_pushresult(&B);
  lua_remove(L, list);
}

/* A node with successors returned a value that cannot be an action. */
static void bad_action(lua_State *L, int b) {
  int res = b + F_RES, t = lua_type(L, res);
  const char *name = node_name(L, b + F_AUX);
  if (t == LUA_TNUMBER || t == LUA_TBOOLEAN) {
    luaL_tolstring(L, res, NULL);
    walk_error(L, b, ST(PF_K_ORCH, 2), b + F_AUX, "post", "%s: post "
               "returned a %s (%s); actions are strings", name,
               lua_typename(L, t), lua_tostring(L, -1));
  }
  walk_error(L, b, ST(PF_K_ORCH, 2), b + F_AUX, "post", "%s: post "
             "returned a %s; actions are strings", name, luaL_typename(L, res));
}

/* Replaces the node at b+F_AUX with its successor for the action in
** b+F_RES (nil means "default"), warning when the walk ends although the
** node has successors, and raising if the action was not a string. */
static void next_node(lua_State *L, int b) {
  int succ;
  if (get_key(L, b + F_AUX, K_SUCCESSORS) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_pushnil(L);
    lua_replace(L, b + F_AUX);
    return;
  }
  succ = lua_gettop(L);
  if (lua_isnil(L, b + F_RES)) lua_rawgeti(L, KEYS, K_DEFAULT);
  else lua_pushvalue(L, b + F_RES);
  if (lua_type(L, -1) == LUA_TNUMBER && lua_tonumber(L, -1) != lua_tonumber(L, -1))
    lua_pushnil(L);  /* NaN cannot be a key */
  else
    lua_rawget(L, succ);
  if (lua_isnil(L, -1)) {
    lua_pushnil(L);
    if (lua_next(L, succ)) {
      lua_pop(L, 2);
      if (!lua_isnil(L, b + F_RES) && lua_type(L, b + F_RES) != LUA_TSTRING)
        bad_action(L, b);
      if (lua_isnil(L, b + F_RES)) lua_pushliteral(L, "default");
      else lua_pushvalue(L, b + F_RES);
      push_actions(L, succ);
      luaL_tolstring(L, -2, NULL);
      lua_pushfstring(L, "%s: flow ends: '%s' not found in %s",
                      node_name(L, b + F_AUX), lua_tostring(L, -1),
                      lua_tostring(L, -2));
      pf_warn(L, lua_tostring(L, -1));
      lua_pop(L, 4);
    }
  }
  lua_replace(L, b + F_AUX);
  lua_settop(L, succ - 1);
}

static void copy_fields(lua_State *L, int from, int to) {
  lua_pushnil(L);
  while (lua_next(L, from)) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, to);
  }
}

/* Pushes {base..., over...}: a batch walk's params, the flow's merged
** under the batch's (base may be nil). Indices are absolute. */
void pf_push_merged(lua_State *L, int base, int over) {
  int t;
  lua_newtable(L);
  t = lua_gettop(L);
  if (lua_istable(L, base)) copy_fields(L, base, t);
  copy_fields(L, over, t);
}

/* ----------------------------------------------------------------- walk */

/* Starts the run of the node at b+F_AUX with the walk's params; the
** walk's own frame goes on at ORCH 2. Returns the new frame's base and
** sets *st to its state. */
static int start_child(lua_State *L, int b, int *st) {
  int kind = node_kind(L, b + F_AUX, 1);
  if (kind == 0)
    return walk_error(L, b, ST(PF_K_ORCH, 1), 0, NULL, "flow step: successor "
                      "is a %s, not a pocketflow node",
                      luaL_typename(L, b + F_AUX));
  set_state(L, b, ST(PF_K_ORCH, 2));
  push_run_self(L, b + F_AUX, b + F_PARAMS);
  *st = first_state(kind);
  return push_frame(L, 0, b + F_SHARED, 0);
}

/* exec's result is on top: a node calls post, an item's frame goes to
** its end phase. Returns the new state. */
static int exec_done(lua_State *L, int b, int st) {
  if (st >> 5 == PF_K_NODE) return call_post(L, b);
  return ST(PF_K_EXEC, EX_RESULT + 2);
}

/* Calls the frame's prep(self, shared), whose result comes back in st. */
static void call_prep(lua_State *L, int b, int st) {
  if (push_method(L, b, K_PREP)) {
    lua_pushvalue(L, b + F_SHARED);
    call(L, b, st, 1);
  }
}

/* exec failed for the last time, with the error in F_AUX: calls the
** fallback, whose result comes back in st; the default one re-raises
** the error unchanged, so the node is left without calling it. */
static int call_fallback(lua_State *L, int b, int st) {
  get_key(L, b + F_SELF, K_FALLBACK);
  if (lua_tocfunction(L, -1) == pf_reraise) {
    lua_pushvalue(L, b + F_AUX);
    return lua_error(L);
  }
  if (lua_type(L, b + F_AUX) == LUA_TSTRING) {
    pf_task *t = pf_current(L);
    if (t && push_record(L, t, b + F_AUX)) {  /* kept if re-raised */
      lua_pushboolean(L, 1);
      lua_rawseti(L, -2, 3);
      lua_pop(L, 1);
    }
  }
  lua_pushvalue(L, b + F_SELF);
  lua_pushvalue(L, b + F_PREP);
  lua_pushvalue(L, b + F_AUX);
  return pcall(L, b, st, 2);
}

/* The fallback took the error: its record is stale. */
static void drop_record(lua_State *L) {
  pf_task *t = pf_current(L);
  if (t) {
    pf_push_task(L, t);
    lua_pushnil(L);
    lua_setiuservalue(L, -2, PF_UV_TRACE);
    lua_pop(L, 1);
  }
}

static int retry_wait(lua_State *L, int b, int st, lua_Number w) {
  pf_task *t = pf_wait_begin(L, "retry wait");
  if (t == NULL) return pf_wait_outside(L, NULL, "retry wait");
  if (pf_wait_deadline(t, w) < 0)
    return luaL_error(L, "retry wait: out of memory");
  pf_wait_park(t, NULL, NULL);
  return pf_wait_yield(L, t, CTX(b, st), walk_k);
}

static int walk(lua_State *L, int status, int b, int st) {
  for (;;) {
    switch (st) {

    /* -------- a plain node: prep, exec with retries, post */
    case ST(PF_K_NODE, 0):
      st = ST(PF_K_NODE, 1);
      call_prep(L, b, st);
      break;
    case ST(PF_K_NODE, 1):
      lua_replace(L, b + F_PREP);
      st = ST(PF_K_NODE, EX_ATTEMPT);
      break;
    case ST(PF_K_NODE, 3):   /* post's result ends the frame */
    case ST(PF_K_EXEC, EX_RESULT + 2):
      b = pop_frame(L, b);
      if (b == 0) return 1;
      st = get_state(L, b);
      break;

    /* -------- exec: attempts, waits between, fallback. For an item
    ** (EXEC frame) the result ends the frame; for a node, post follows. */
    case ST(PF_K_NODE, EX_ATTEMPT):
    case ST(PF_K_EXEC, EX_ATTEMPT): {
      lua_Integer attempt = get_int(L, b, F_I);
      /* a node's first attempt reads the class's 0 through its fresh
      ** self; batch items share one self, so theirs is reset */
      if (attempt > 0 || st >> 5 == PF_K_EXEC) {
        lua_rawgeti(L, KEYS, K_CUR_RETRY);
        lua_pushinteger(L, attempt);
        lua_rawset(L, b + F_SELF);
      }
      st++;
      status = LUA_OK;
      if (push_method(L, b, K_EXEC)) {
        lua_pushvalue(L, b + F_PREP);
        status = pcall(L, b, st, 1);
      }
      break;
    }
    case ST(PF_K_NODE, EX_RESULT):
    case ST(PF_K_EXEC, EX_RESULT):
      if (status == LUA_OK || status == LUA_YIELD) {
        st = exec_done(L, b, st);
        break;
      }
      lua_replace(L, b + F_AUX);
      set_int(L, b, F_I, get_int(L, b, F_I) + 1);
      if (get_int(L, b, F_I) < checked_retries(L, b, st)) {
        lua_Number w = checked_wait(L, b, st);
        st--;
        status = LUA_OK;
        if (w > 0) return retry_wait(L, b, st, w);
        break;
      }
      st++;
      status = call_fallback(L, b, st);
      break;
    case ST(PF_K_NODE, EX_RESULT + 1):
    case ST(PF_K_EXEC, EX_RESULT + 1):
      if (status != LUA_OK && status != LUA_YIELD) return lua_error(L);
      if (lua_type(L, b + F_AUX) == LUA_TSTRING) drop_record(L);
      st = exec_done(L, b, st);
      break;

    /* -------- a batch node: exec per item, in order */
    case ST(PF_K_BATCH, 0):
    case ST(PF_K_PBATCH, 0):
    case ST(PF_K_FLOW, 0):
    case ST(PF_K_BFLOW, 0):
    case ST(PF_K_PBFLOW, 0):
      st++;
      call_prep(L, b, st);
      break;
    case ST(PF_K_BATCH, 1):
      lua_pushvalue(L, -1);
      lua_replace(L, b + F_PREP);
      checked_items(L, b, st, "items");
      lua_replace(L, b + F_AUX);
      lua_newtable(L);
      lua_replace(L, b + F_RES);
      set_int(L, b, F_I, 1);
      st = ST(PF_K_BATCH, 2);
      break;
    case ST(PF_K_BATCH, 2): {
      lua_Integer i = get_int(L, b, F_I);
      if (i > (lua_Integer)lua_rawlen(L, b + F_AUX)) {
        lua_pushvalue(L, b + F_RES);
        st = call_post(L, b);
        break;
      }
      set_state(L, b, ST(PF_K_BATCH, 3));
      b = push_frame(L, b + F_SELF, 0, 0);
      st = first_state(PF_K_EXEC);
      lua_rawgeti(L, b - FS + F_AUX, i);
      lua_replace(L, b + F_PREP);
      break;
    }
    case ST(PF_K_BATCH, 3): {
      lua_Integer i = get_int(L, b, F_I);
      lua_rawseti(L, b + F_RES, i);
      set_int(L, b, F_I, i + 1);
      st = ST(PF_K_BATCH, 2);
      break;
    }

    /* -------- a parallel batch node: items as tasks, then post */
    case ST(PF_K_PBATCH, 1):
    case ST(PF_K_PBFLOW, 1): {
      int isnum, parallel_flow = st == ST(PF_K_PBFLOW, 1);
      lua_Integer maxc = 0;
      pf_task *t;
      lua_pushvalue(L, -1);
      lua_replace(L, b + F_PREP);
      checked_items(L, b, st, parallel_flow ? "param tables" : "items");
      lua_replace(L, b + F_AUX);
      if (parallel_flow) check_param_sets(L, b, st, b + F_AUX);
      if (get_key(L, b + F_SELF, K_MAXC) != LUA_TNIL) {
        maxc = lua_tointegerx(L, -1, &isnum);
        if (!isnum || maxc < 1)
          return walk_error(L, b, st, 0, parallel_flow ? "walk" : "exec",
                            "%s: max_concurrency must be a positive integer "
                            "or nil", node_name(L, b + F_SELF));
      }
      lua_pop(L, 1);
      if (parallel_flow && get_key(L, b + F_SELF, K_PARAMS) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
      }
      if (parallel_flow) lua_replace(L, b + F_PARAMS);
      t = pf_wait_begin(L, "parallel batch");
      if (t == NULL) pf_wait_outside(L, NULL, "parallel batch");
      st++;
      if (pf_group_start(L, parallel_flow ? PF_G_WALKS : PF_G_ITEMS,
                         b + F_AUX, b + F_SELF, b + F_SHARED,
                         parallel_flow ? b + F_PARAMS : 0, maxc)) {
        lua_replace(L, b + F_I);
        return pf_wait_yield(L, t, CTX(b, st), walk_k);
      }
      lua_replace(L, b + F_I);
      break;
    }
    case ST(PF_K_PBATCH, 2):
    case ST(PF_K_PBFLOW, 2):
      pf_group_finish(L, b + F_I);
      if (st == ST(PF_K_PBFLOW, 2)) {
        lua_pop(L, 1);
        lua_pushnil(L);
      }
      set_int(L, b, F_I, 0);
      st = call_post(L, b);
      break;

    /* -------- a flow: prep, the walk, post */
    case ST(PF_K_FLOW, 1):
      lua_replace(L, b + F_PREP);
      set_state(L, b, ST(PF_K_FLOW, 2));
      if (get_key(L, b + F_SELF, K_PARAMS) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
      }
      lua_replace(L, b + F_PARAMS);
      b = push_frame(L, b + F_SELF, b + F_SHARED, 0);
      st = first_state(PF_K_ORCH);
      lua_pushvalue(L, b - FS + F_PARAMS);
      lua_replace(L, b + F_PARAMS);
      break;
    case ST(PF_K_FLOW, 2):
      st = call_post(L, b);
      break;

    /* -------- a batch flow: the walk once per param table, in order */
    case ST(PF_K_BFLOW, 1):
      lua_pushvalue(L, -1);
      lua_replace(L, b + F_PREP);
      checked_items(L, b, st, "param tables");
      lua_replace(L, b + F_AUX);
      check_param_sets(L, b, st, b + F_AUX);
      set_int(L, b, F_I, 1);
      st = ST(PF_K_BFLOW, 2);
      break;
    case ST(PF_K_BFLOW, 2): {
      lua_Integer i = get_int(L, b, F_I);
      int nb;
      if (i > (lua_Integer)lua_rawlen(L, b + F_AUX)) {
        lua_pushnil(L);
        st = call_post(L, b);
        break;
      }
      set_state(L, b, ST(PF_K_BFLOW, 3));
      nb = push_frame(L, b + F_SELF, b + F_SHARED, 0);
      get_key(L, b + F_SELF, K_PARAMS);
      lua_rawgeti(L, b + F_AUX, i);
      pf_push_merged(L, lua_gettop(L) - 1, lua_gettop(L));
      lua_replace(L, nb + F_PARAMS);
      lua_pop(L, 2);
      b = nb;
      st = first_state(PF_K_ORCH);
      break;
    }
    case ST(PF_K_BFLOW, 3):
      lua_pop(L, 1);
      set_int(L, b, F_I, get_int(L, b, F_I) + 1);
      st = ST(PF_K_BFLOW, 2);
      break;

    /* -------- the walk: from the start node along the actions */
    case ST(PF_K_ORCH, 0):
      if (get_key(L, b + F_SELF, K_START) == LUA_TNIL)
        return walk_error(L, b, st, 0, NULL, "%s: flow has no start node",
                          node_name(L, b + F_SELF));
      lua_replace(L, b + F_AUX);
      st = ST(PF_K_ORCH, 1);
      break;
    case ST(PF_K_ORCH, 1):
      if (lua_isnil(L, b + F_AUX)) {
        lua_pushvalue(L, b + F_RES);
        b = pop_frame(L, b);
        if (b == 0) return 1;
        st = get_state(L, b);
        break;
      }
      b = start_child(L, b, &st);
      break;
    case ST(PF_K_ORCH, 2):
      lua_replace(L, b + F_RES);
      next_node(L, b);
      st = ST(PF_K_ORCH, 1);
      break;

    default:
      return luaL_error(L, "pocketflow: bad walk state %d", st);
    }
  }
}

/* Runs the frame for kind over the arguments (kind, self, shared, x);
** with from_node, self is the node object and its run's self is made. */
static int start(lua_State *L, int kind, int from_node) {
  int b;
  lua_settop(L, 4);
  lua_pushcfunction(L, walk_msgh);
  push_keys(L);
  if (from_node) {
    push_run_self(L, 2, 0);
    lua_replace(L, 2);
  }
  b = push_frame(L, 2, 3, kind == PF_K_EXEC ? 4 : 0);
  if (kind == PF_K_ORCH) {
    lua_pushvalue(L, 4);
    lua_replace(L, b + F_PARAMS);
  }
  return walk(L, LUA_OK, b, first_state(kind));
}

/* core.machine(kind, self, shared, x): the body of item and walk tasks.
** x is the item (exec) or the params (walk). */
int pf_machine(lua_State *L) {
  lua_Integer kind = luaL_checkinteger(L, 1);
  if (kind < PF_K_NODE || kind > PF_K_EXEC)
    return luaL_error(L, "pocketflow: bad node kind %I", kind);
  /* the frames write into self and merge the params: both raw */
  luaL_checktype(L, 2, LUA_TTABLE);
  if (kind == PF_K_ORCH) luaL_checktype(L, 4, LUA_TTABLE);
  return start(L, (int)kind, 0);
}

/* The run options (API.md section 5): every key run accepts, and
** whether it is implemented yet. Sections 6-8 add theirs here. */
static const struct {
  const char *name;
  int ready;
} run_options[] = {
  {"on_event", 0}, {"trace", 0}, {"capture", 0}, {"progress", 0},
  {"store", 0}, {"run_id", 0}, {"durability", 0}, {"transient", 0},
  {"on_interrupt", 0}, {NULL, 0}
};

/* Checks run's options at idx, raising at the caller's position. */
static void check_run_options(lua_State *L, int idx) {
  if (!lua_istable(L, idx))
    luaL_error(L, "run: options must be a table (got %s)",
               luaL_typename(L, idx));
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int i, t = lua_type(L, -2);
    lua_pop(L, 1);
    if (t != LUA_TSTRING && t != LUA_TNUMBER)
      luaL_error(L, "unknown run option (a %s key)", lua_typename(L, t));
    for (i = 0; run_options[i].name != NULL; i++)
      if (t == LUA_TSTRING && strcmp(run_options[i].name,
                                     lua_tostring(L, -1)) == 0)
        break;
    if (run_options[i].name == NULL)
      luaL_error(L, "unknown run option '%s'", lua_tostring(L, -1));
    if (!run_options[i].ready)
      luaL_error(L, "run option '%s' is not supported yet", run_options[i].name);
  }
}

/* node:run(shared [, opts]) */
int pf_run_node(lua_State *L) {
  int kind = node_kind(L, 1, 0);
  if (kind == 0)
    return luaL_error(L, "run: expected a pocketflow node (got %s)",
                      luaL_typename(L, 1));
  if (!lua_isnoneornil(L, 3)) check_run_options(L, 3);
  if (pf_current(L) == NULL) return pf_wait_outside(L, pf_run_node, "run");
  lua_settop(L, 2);
  if (lua_getfield(L, 1, "successors") == LUA_TTABLE) {
    lua_pushnil(L);
    if (lua_next(L, -2)) {
      lua_pop(L, 2);
      lua_pushfstring(L, "%s: node won't run successors; use a Flow",
                      node_name(L, 1));
      pf_warn(L, lua_tostring(L, -1));
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  lua_pushinteger(L, kind);
  lua_insert(L, 1);            /* kind, node, shared */
  return start(L, kind, 1);
}

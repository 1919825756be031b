/*
** The walk: running nodes, flows and batches. In PocketFlow's terms, a
** run of node n over the shared store s is (p: prep's result):
**
**   node    p = n:prep(s); return n:post(s, p, exec(n, p))
**   exec    for a = 0, max_retries - 1: n.cur_retry = a
**             ok, r = pcall(n.exec, n, p); if ok: return r
**             if a < max_retries - 1: sleep(n.wait)
**           return n:exec_fallback(p, err)   -- default: raise err
**   batch   p = prep; r[i] = exec(n, p[i]) for each i, in order;
**           return n:post(s, p, r)
**   pbatch  the same, the exec(n, p[i]) as tasks, max_concurrency at once
**   flow    p = prep; a = walk(n, n.params); return n:post(s, p, a)
**   walk    m = start_node; repeat: a = run(m with params, s);
**           m = m.successors[a or "default"] until no m; return a
**   bflow   p = prep; walk(n, {n.params..., p[i]...}) for each i, in
**           order; return n:post(s, p, nil)
**   pbflow  the same, the walks as tasks, max_concurrency at once
**
** One C function drives an explicit stack of frames kept on the task's
** Lua stack (walk.h), so nesting costs stack slots, not C stack, and
** every call into user code is a lua_callk/lua_pcallk whose continuation
** re-enters the same loop: user code may wait anywhere. The loop
** dispatches on the named states of walk.h to one step function per
** kind. The parallel kinds hand their items to a group (group.c) with a
** body that runs an item's exec frame or a walk.
**
** Transitions where tracing and checkpoints will hook in are marked
** "hook:": node start, attempt start, attempt fail, retry wait,
** fallback, item start, item end, after post, node end.
*/
#include <string.h>

#include "pf.h"
#include "pf_sched.h"
#include "attempts.h"
#include "events.h"
#include "walk.h"

/* Field names, interned once in a table kept below the first frame: a
** lua_getfield with a C string pays a string-cache lookup (strcmp) on
** every step. */
enum { K_PREP = 1, K_EXEC, K_POST, K_FALLBACK, K_CUR_RETRY, K_SUCCESSORS,
       K_PARAMS, K_DEFAULT, K_INDEX, K_KIND, K_START, K_RETRIES, K_WAIT,
       K_MAXC, K_TIMEOUT, K_DEADLINE, K_BACKOFF, K_MAX_WAIT, K_JITTER,
       K_RETRY_ON, K_RETRY_AFTER, K_DISTRIBUTE, K_NKEYS };
static const char *const key_names[] = {
  NULL, "prep", "exec", "post", "exec_fallback", "cur_retry", "successors",
  "params", "default", "__index", "__pfkind", "start_node", "max_retries",
  "wait", "max_concurrency", "timeout", "deadline", "backoff", "max_wait",
  "jitter", "retry_on", "retry_after", "distribute"};
/* The table's one slot past the names: true once any node or class was
** given a timeout or a deadline (core.arm_timeouts, from init.lua), so
** that a program without them never looks these options up per attempt. */
#define K_ARMED K_NKEYS
/* And the next: the scheduler, a light userdata, since a registry lookup
** (pf_sched_get) on every entry of the walk costs four times as much. */
#define K_SCHED (K_NKEYS + 1)
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
    lua_pushlightuserdata(L, pf_sched_get(L));
    lua_rawseti(L, -2, K_SCHED);
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

/* The running frame's state is a C variable, carried through calls and
** yields in the continuation context with the frame's base; the F_STATE
** slot keeps the state of frames below the top only. */
#define ST_BITS 10   /* states stay below 1 << ST_BITS */
#define CTX(b, st) ((lua_KContext)(b) << ST_BITS | (st))

static int walk(lua_State *L, int status, int b, int st);

static int walk_k(lua_State *L, int status, lua_KContext ctx) {
  return walk(L, status, (int)(ctx >> ST_BITS),
              (int)(ctx & ((1 << ST_BITS) - 1)));
}

/* The walk's registers: the running frame's base and state (its program
** counter), and the status of the pcall a state waited for. A step returns GO for the loop
** to go on with them, or the value the walk returns. S->events: someone
** listens, the transitions emit (events.h). */
typedef struct Pc {
  int b, st, status;
  int armed;   /* timeouts may be set (K_ARMED), read when the walk resumes */
  int durable; /* a durable run's walk (DURABLE), read when it resumes */
  pf_sched *S;
} Pc;
#define GO (-1)

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
  return kind == PF_K_EXEC ? EXEC_ATTEMPT : ST(kind, 0);
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
  /* the walk's own frame kinds (WALK, EXEC) are not classes */
  return kind >= PF_K_NODE && kind <= PF_K_PBFLOW ? kind : 0;
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
** where line of a prep or post error is read off the stack (where.c). */
static void call(lua_State *L, int b, int st, int nargs) {
  lua_callk(L, nargs + 1, 1, CTX(b, st), walk_k);
}

/* The same under the message handler, for exec and exec_fallback: the
** error and the status come back to st. */
static int pcall(lua_State *L, int b, int st, int nargs) {
  return lua_pcallk(L, nargs + 1, 1, MSGH, CTX(b, st), walk_k);
}

/* Calls post(self, shared, prep_res, exec_res) with exec_res on top; the
** frame ends with post's result (POSTED). Returns the frame's new state. */
static int call_post(lua_State *L, int b) {
  lua_replace(L, b + F_RES);
  if (push_method(L, b, K_POST)) {
    lua_pushvalue(L, b + F_SHARED);
    lua_pushvalue(L, b + F_PREP);
    lua_pushvalue(L, b + F_RES);
    call(L, b, POSTED, 3);
  }
  return POSTED;
}

static lua_Number flow_timeout(lua_State *L, int b);
static int timed_flow(lua_State *L, Pc *pc, lua_Number limit);

/* hook: node start. A frame's first state (*_PREP) calls prep(self,
** shared), whose result comes back in the kind's *_PREPPED; a flow with
** a timeout runs in a task of its own first. */
static int node_begin(lua_State *L, Pc *pc) {
  int kind = ST_KIND(pc->st);
  lua_Number limit;
  if (kind >= PF_K_FLOW && pc->armed && (limit = flow_timeout(L, pc->b)) > 0)
    return timed_flow(L, pc, limit);   /* its task's walk emits */
  if (pc->S->events || (kind != PF_K_NODE && kind != PF_K_FLOW))
    pf_ev_node_start(L, pc->S, pc->b, kind);
  pc->st = ST(kind, P_PREPPED);
  if (push_method(L, pc->b, K_PREP)) {
    lua_pushvalue(L, pc->b + F_SHARED);
    call(L, pc->b, pc->st, 1);
  }
  return GO;
}

/* The saves of durable runs: a checkpoint of the frames up to the top
** in state st, committed (sync) before the walk goes on in st. */
static int save(lua_State *L, Pc *pc) {
  int n = pf_ckpt_push_save(L, pc->b, pc->st);
  lua_callk(L, n, 0, CTX(pc->b, pc->st), walk_k);
  return GO;
}

/* ... and of item i of the batch at pc->b, its result on top (popped). */
static int save_item(lua_State *L, Pc *pc, lua_Integer i) {
  int n = pf_ckpt_push_item(L, pc->b, i);
  lua_callk(L, n, 0, CTX(pc->b, pc->st), walk_k);
  return GO;
}

static int ret_top_k(lua_State *L, int status, lua_KContext ctx) {
  (void)L; (void)status; (void)ctx;
  return 1;
}

/* The first frame of a durable walk ended, its result on top: an item of
** a parallel batch records it (hook: item end), a run saves its end; the
** walk returns it. */
static int durable_end(lua_State *L) {
  int n = pf_ckpt_push_end(L);
  if (n > 0) lua_callk(L, n, 0, 0, ret_top_k);
  return 1;
}

/* hook: node end (also an item frame's or a walk's end). The frame is
** done, its result on top: the parent goes on in its own state with it,
** or the walk returns it. */
static int end_frame(lua_State *L, Pc *pc) {
  if (pc->S->events && pc->st == POSTED) pf_ev_node_end(L, pc->b);
  pc->b = pop_frame(L, pc->b);
  if (pc->b == 0) {
    if (!lua_isnil(L, GUARD)) pf_ev_walk_end(L);
    return pc->durable ? durable_end(L) : 1;
  }
  pc->st = get_state(L, pc->b);
  return GO;
}

/* ---------------------------------------------------------------- checks */

/* max_retries, the value at idx: nil is 1; 0 if not a positive integer.
** The one decoder of it (the walk, its where line, plain_exec). */
lua_Integer pf_retries(lua_State *L, int idx) {
  int isnum;
  lua_Integer n;
  if (lua_isnil(L, idx)) return 1;
  n = lua_tointegerx(L, idx, &isnum);
  return isnum && n >= 1 ? n : 0;
}

static lua_Integer checked_retries(lua_State *L, int b, int st) {
  lua_Integer n;
  get_key(L, b + F_SELF, K_RETRIES);
  n = pf_retries(L, -1);
  lua_pop(L, 1);
  if (n == 0)
    pf_walk_error(L, b, st, 0, NULL, "%s: max_retries must be a positive "
                  "integer", pf_node_name(L, b + F_SELF));
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
    pf_walk_error(L, b, st, 0, NULL, "%s: wait must be a non-negative "
                  "number", pf_node_name(L, b + F_SELF));
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
    pf_walk_error(L, b, st, 0, NULL, "%s: prep must return an array of %s "
                  "(got %s)", pf_node_name(L, b + F_SELF), what,
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
      pf_walk_error(L, b, st, 0, NULL, "%s: prep must return an array of "
                    "param tables (item %d is a %s)",
                    pf_node_name(L, b + F_SELF), (int)i, luaL_typename(L, -1));
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
  int res = b + F_ACTION, t = lua_type(L, res);
  const char *name = pf_node_name(L, b + F_NODE);
  if (t == LUA_TNUMBER || t == LUA_TBOOLEAN) {
    luaL_tolstring(L, res, NULL);
    pf_walk_error(L, b, WALK_NODE_DONE, b + F_NODE, "post", "%s: post "
                  "returned a %s (%s); actions are strings", name,
                  lua_typename(L, t), lua_tostring(L, -1));
  }
  pf_walk_error(L, b, WALK_NODE_DONE, b + F_NODE, "post", "%s: post "
                "returned a %s; actions are strings", name,
                luaL_typename(L, res));
}

/* Replaces the node at b+F_NODE with its successor for the action in
** b+F_ACTION (nil means "default"), warning when the walk ends although the
** node has successors, and raising if the action was not a string. */
static void next_node(lua_State *L, int b) {
  int succ, action = b + F_ACTION;
  if (get_key(L, b + F_NODE, K_SUCCESSORS) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_pushnil(L);
    lua_replace(L, b + F_NODE);
    return;
  }
  succ = lua_gettop(L);
  if (lua_isnil(L, action)) lua_rawgeti(L, KEYS, K_DEFAULT);
  else lua_pushvalue(L, action);
  if (lua_type(L, -1) == LUA_TNUMBER &&
      lua_tonumber(L, -1) != lua_tonumber(L, -1))
    lua_pushnil(L);  /* NaN cannot be a key */
  else
    lua_rawget(L, succ);
  if (lua_isnil(L, -1)) {
    lua_pushnil(L);
    if (lua_next(L, succ)) {
      lua_pop(L, 2);
      if (!lua_isnil(L, action) && lua_type(L, action) != LUA_TSTRING)
        bad_action(L, b);
      if (lua_isnil(L, action)) lua_pushliteral(L, "default");
      else lua_pushvalue(L, action);
      push_actions(L, succ);
      luaL_tolstring(L, -2, NULL);
      lua_pushfstring(L, "%s: flow ends: '%s' not found in %s",
                      pf_node_name(L, b + F_NODE), lua_tostring(L, -1),
                      lua_tostring(L, -2));
      pf_warn(L, lua_tostring(L, -1));
      lua_pop(L, 4);
    }
  }
  lua_replace(L, b + F_NODE);
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
static void push_merged(lua_State *L, int base, int over) {
  int t;
  lua_newtable(L);
  t = lua_gettop(L);
  if (lua_istable(L, base)) copy_fields(L, base, t);
  copy_fields(L, over, t);
}

/* ----------------------------------------------------------------- exec */

/* exec's result is on top: a node calls post, an item's frame ends. */
static int exec_done(lua_State *L, Pc *pc) {
  pc->st = ST_KIND(pc->st) == PF_K_NODE ? call_post(L, pc->b) : EXEC_END;
  return GO;
}

/* A status of the walk's own, beside Lua's: the attempt's task was
** cancelled by someone else than its timeout. */
#define ATTEMPT_CANCELLED 100

/* An error that ends the attempts at once, past exec_fallback: it leaves
** the node as it is. Cancellation is never retried, nor what
** pf.interrupt marked (its questions and errors: where.c). */
static int is_final_error(lua_State *L, int status, int err) {
  return status == ATTEMPT_CANCELLED || pf_no_retry(L, err);
}

static pf_sched *sched(lua_State *L) {
  pf_sched *S;
  lua_rawgeti(L, KEYS, K_SCHED);
  S = (pf_sched *)lua_touserdata(L, -1);
  lua_pop(L, 1);
  return S;
}

static int armed(lua_State *L) {
  int on = lua_rawgeti(L, KEYS, K_ARMED) == LUA_TBOOLEAN;
  lua_pop(L, 1);
  return on;
}

/* core.arm_timeouts(): from now on the walk looks for timeouts and
** deadlines (K_ARMED). */
int pf_arm_timeouts(lua_State *L) {
  push_keys(L);
  lua_pushboolean(L, 1);
  lua_rawseti(L, -2, K_ARMED);
  return 0;
}

/* The option at key, a number of seconds > 0, or -1 (none). */
static lua_Number seconds(lua_State *L, int b, int key) {
  lua_Number s;
  get_key(L, b + F_SELF, key);
  s = lua_tonumber(L, -1);
  lua_pop(L, 1);
  return s > 0 ? s : -1;
}

/* Pushes seconds as messages show them: whole ones without decimals,
** others as Lua prints numbers; nan, inf and -inf alike everywhere. */
static const char *push_seconds(lua_State *L, lua_Number s) {
  if (s != s) return lua_pushliteral(L, "nan");
  if (s - s != 0) return lua_pushstring(L, s > 0 ? "inf" : "-inf");
  if (s == (lua_Number)(lua_Integer)s)
    return lua_pushfstring(L, "%I", (LUAI_UACINT)(lua_Integer)s);
  return lua_pushfstring(L, "%f", s);
}

static lua_Number now(void) {
  return (lua_Number)uv_hrtime() / 1e9;
}

/* Seconds left before the deadline (never below 0), or -1: none. */
static lua_Number deadline_left(lua_State *L, int b) {
  lua_Number left;
  if (!lua_isnumber(L, b + F_DEADLINE)) return -1;
  left = lua_tonumber(L, b + F_DEADLINE) - now();
  return left > 0 ? left : 0;
}

/* The time the attempt about to start may take: its timeout, cut to
** what is left of the deadline, which the first attempt sets; -1:
** unbounded. F_BOUND says whether the deadline is the limit. */
static lua_Number attempt_limit(lua_State *L, int b, lua_Integer fails) {
  lua_Number limit = seconds(L, b, K_TIMEOUT), d = seconds(L, b, K_DEADLINE);
  int bound = 0;
  if (d > 0 && fails == 0) {
    lua_pushnumber(L, now() + d);
    lua_replace(L, b + F_DEADLINE);
  }
  d = deadline_left(L, b);
  if (d >= 0 && (limit < 0 || d < limit)) limit = d, bound = 1;
  lua_pushboolean(L, bound);
  lua_replace(L, b + F_BOUND);
  return limit;
}

static int timed_body_k(lua_State *L, int status, lua_KContext ctx) {
  (void)ctx;
  lua_pushboolean(L, status == LUA_OK || status == LUA_YIELD);
  lua_insert(L, -2);
  return 2;
}

/* The body of a timed attempt's or flow's task: (f, ...) -> true, f's
** result, or false, its error, as is. f runs under the walk's message
** handler, so a string error gets its record in this task (where.c),
** for the walk to adopt. */
static int timed_body(lua_State *L) {
  int nargs = lua_gettop(L) - 1;
  lua_pushcfunction(L, pf_walk_msgh);
  lua_insert(L, 1);
  return timed_body_k(L, lua_pcallk(L, nargs, 1, 1, 0, timed_body_k), 0);
}

/* Runs the function and its nargs arguments on top as a child task of
** the walk's, which waits until it ends or 'limit' seconds pass; the
** wait ends in state st with the task on top. */
static int wait_timed(lua_State *L, int b, int st, int nargs,
                      lua_Number limit) {
  pf_task *me = pf_wait_begin(L, "timeout"), *child;
  if (me == NULL) return pf_wait_outside(L, NULL, "timeout");
  lua_pushcfunction(L, timed_body);
  lua_insert(L, -(nargs + 2));
  child = pf_spawn_task(L, me, nargs + 1);
  child->keep_results = 1;
  if (pf_wait_deadline(me, limit) < 0) {
    pf_cancel(child);
    return luaL_error(L, "timeout: out of memory");
  }
  pf_wait_on(me, child);
  return pf_wait_yield(L, me, CTX(b, st), walk_k);
}

/* The task on top ended (or ran out of time: *timed_out): replaces it by
** its result or error, and returns the status of the call it made. */
static int timed_outcome(lua_State *L, int *timed_out) {
  int c = lua_gettop(L), status = LUA_ERRRUN;
  pf_task *me = pf_current(L), *child = (pf_task *)lua_touserdata(L, c);
  *timed_out = me->timed_out;
  me->timed_out = 0;
  if (*timed_out) {
    pf_cancel(child);
    pf_forget_lost(L, me->S, c);
    lua_pushnil(L);
  } else if (child->outcome == PF_OK) {
    lua_getiuservalue(L, c, PF_UV_AUX);
    lua_rawgeti(L, -1, 1);
    if (lua_toboolean(L, -1)) status = LUA_OK;
    lua_rawgeti(L, -2, 2);
  } else if (child->outcome == PF_ERROR) {   /* timed_body's own: memory */
    pf_forget_lost(L, me->S, c);
    lua_getiuservalue(L, c, PF_UV_AUX);
  } else {
    status = ATTEMPT_CANCELLED;
    lua_pushnil(L);
  }
  return status;
}

/* hook: attempt start. exec(self, prep_res) runs as a task of its own,
** ended at the attempt's limit; with neither a timeout nor a deadline,
** in the walk's task. exec and self are on top. */
static int timed_attempt(lua_State *L, Pc *pc, lua_Integer fails) {
  int b = pc->b;
  lua_Number limit = attempt_limit(L, b, fails);
  lua_pushvalue(L, b + F_PREP);
  if (limit < 0) {
    pc->status = pcall(L, b, pc->st, 1);
    return GO;
  }
  pc->st = ST(ST_KIND(pc->st), P_TIMED);
  return wait_timed(L, b, pc->st, 2, limit);
}

/* hook: attempt start. Sets cur_retry and calls exec(self, prep_res);
** a node's first attempt reads the class's 0 through its fresh self,
** batch items share one self, so theirs is reset. */
static int attempt(lua_State *L, Pc *pc) {
  int b = pc->b;
  lua_Integer fails = get_int(L, b, F_FAILS);
  if (fails > 0 || pc->st == EXEC_ATTEMPT) {
    lua_rawgeti(L, KEYS, K_CUR_RETRY);
    lua_pushinteger(L, fails);
    lua_rawset(L, b + F_SELF);
  }
  pc->st = ST(ST_KIND(pc->st), P_EXECUTED);
  pc->status = LUA_OK;
  if (push_method(L, b, K_EXEC)) {
    if (pc->armed) return timed_attempt(L, pc, fails);
    lua_pushvalue(L, b + F_PREP);
    pc->status = pcall(L, b, pc->st, 1);
  }
  return GO;
}

/* A timed attempt's task ended, or its time is up: its result or error
** goes on to *_EXECUTED as an attempt's in the walk's task would. */
static int attempt_ended(lua_State *L, Pc *pc) {
  int b = pc->b, timed_out, c = lua_gettop(L);
  lua_Integer n = get_int(L, b, F_FAILS) + 1;
  pc->st = ST(ST_KIND(pc->st), P_EXECUTED);
  pc->status = timed_outcome(L, &timed_out);
  if (timed_out || pc->status == ATTEMPT_CANCELLED) {
    const char *name = pf_node_name(L, b + F_SELF);
    lua_Integer max = checked_retries(L, b, pc->st);
    lua_pushfstring(L, "%s: exec attempt %I of %I ", name, (LUAI_UACINT)n,
                    (LUAI_UACINT)max);
    if (pc->status == ATTEMPT_CANCELLED) {
      lua_pushliteral(L, "was cancelled");
    } else {
      int bound = lua_toboolean(L, b + F_BOUND);
      lua_pushstring(L, bound ? "ran past the deadline of " : "timed out "
                     "after ");
      push_seconds(L, seconds(L, b, bound ? K_DEADLINE : K_TIMEOUT));
      lua_pushliteral(L, " s");
      lua_concat(L, 3);
    }
    lua_concat(L, 2);
  }
  if (pc->status != LUA_OK)
    pf_adopt_record(L, -1, timed_out ? 0 : c, b, pc->st, n);
  lua_replace(L, c);
  lua_settop(L, c);
  lua_pushnil(L);
  lua_replace(L, b + F_BOUND);
  return GO;
}

/* hook: retry wait. Sleeps w seconds, then goes on in st; with w = 0
** the tasks ready now run first: a loop of failing attempts never
** starves the others, nor a timeout around it. */
static int retry_wait(lua_State *L, int b, int st, lua_Number w) {
  pf_task *t = pf_wait_begin(L, "retry wait");
  if (t == NULL) return pf_wait_outside(L, NULL, "retry wait");
  if (w > 0) {
    if (pf_wait_deadline(t, w) < 0)
      return luaL_error(L, "retry wait: out of memory");
    pf_wait_park(t, NULL, NULL);
  } else {
    pf_wait_pass(t);
  }
  return pf_wait_yield(L, t, CTX(b, st), walk_k);
}

/* hook: fallback. exec failed for the last time, with the error in
** F_ERROR: calls the fallback, whose result comes back in st; the
** default one re-raises the error unchanged, so the node is left
** without calling it. */
static int call_fallback(lua_State *L, int b, int st) {
  get_key(L, b + F_SELF, K_FALLBACK);
  if (lua_tocfunction(L, -1) == pf_reraise) {
    lua_pushvalue(L, b + F_ERROR);
    return lua_error(L);
  }
  if (pf_sched_get(L)->events) pf_ev_fallback(L, b);
  if (lua_type(L, b + F_ERROR) == LUA_TSTRING) {
    pf_task *t = pf_current(L);
    if (t && pf_push_record(L, t, b + F_ERROR)) {  /* kept if re-raised */
      lua_pushboolean(L, 1);
      lua_rawseti(L, -2, 3);
      lua_pop(L, 1);
    }
  }
  lua_pushvalue(L, b + F_SELF);
  lua_pushvalue(L, b + F_PREP);
  lua_pushvalue(L, b + F_ERROR);
  return pcall(L, b, st, 2);
}

static int fall_back(lua_State *L, Pc *pc) {
  pc->st = ST(ST_KIND(pc->st), P_FELL_BACK);
  pc->status = call_fallback(L, pc->b, pc->st);
  return GO;
}

/* hook: attempt fail. The error on top is kept; unless it is final and
** while attempts are left, retry_on is asked (the default says true),
** its answer comes in *_ASKED; after the last, the fallback. */
static int attempt_failed(lua_State *L, Pc *pc) {
  int b = pc->b;
  lua_Integer fails = get_int(L, b, F_FAILS) + 1;
  lua_replace(L, b + F_ERROR);
  set_int(L, b, F_FAILS, fails);
  if (is_final_error(L, pc->status, b + F_ERROR)) {
    lua_pushvalue(L, b + F_ERROR);
    return lua_error(L);
  }
  if (fails >= checked_retries(L, b, pc->st)) return fall_back(L, pc);
  pc->st = ST(ST_KIND(pc->st), P_ASKED);
  pc->status = LUA_OK;
  if (get_key(L, b + F_SELF, K_RETRY_ON) == LUA_TNIL) {
    lua_pop(L, 1);
    lua_pushboolean(L, 1);
    return GO;
  }
  lua_pushvalue(L, b + F_ERROR);
  lua_pushinteger(L, fails);
  pc->status = lua_pcallk(L, 2, 1, 0, CTX(b, pc->st), walk_k);
  return GO;
}

/* A number of seconds from user code (retry_on's answer, retry_after) is
** finite and >= 0. */
static int good_seconds(lua_State *L, int idx) {
  lua_Number s = lua_tonumber(L, idx);
  return lua_type(L, idx) == LUA_TNUMBER && s >= 0 && s - s == 0;
}

/* The wait retry_on's answer (on top, popped) asks for: -1 for the
** computed one, -2 for none (fall back). */
static lua_Number asked_wait(lua_State *L, Pc *pc) {
  int b = pc->b, t = lua_type(L, -1);
  const char *name = pf_node_name(L, b + F_SELF);
  lua_Number w = -1;
  if (pc->status != LUA_OK && pc->status != LUA_YIELD)
    pf_walk_error(L, b, pc->st, 0, NULL, "%s: retry_on failed: %s", name,
                  pf_tostring(L, -1));
  if ((t == LUA_TNUMBER && !good_seconds(L, -1)) ||
      (t != LUA_TNUMBER && t != LUA_TBOOLEAN && t != LUA_TNIL))
    pf_walk_error(L, b, pc->st, 0, NULL, "%s: retry_on must return a "
                  "boolean or a finite number of seconds >= 0 (got %s)",
                  name, t == LUA_TNUMBER ? push_seconds(L, lua_tonumber(L, -1))
                                        : lua_typename(L, t));
  if (t == LUA_TNUMBER) w = lua_tonumber(L, -1);
  else if (!lua_toboolean(L, -1)) w = -2;
  lua_pop(L, 1);
  return w;
}

/* The option at key as a number, or dflt if it is none. */
static lua_Number number_or(lua_State *L, int b, int key, lua_Number dflt) {
  int isnum;
  lua_Number v;
  get_key(L, b + F_SELF, key);
  v = lua_tonumberx(L, -1, &isnum);
  lua_pop(L, 1);
  return isnum ? v : dflt;
}

/* u in [0, 1) for the jitter: splitmix64 of the clock and the thread, no
** state kept (any spread will do; this is no cryptography). */
static double jitter_u(lua_State *L) {
  uint64_t x = uv_hrtime() ^ (uint64_t)(uintptr_t)L;
  x += 0x9e3779b97f4a7c15u;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9u;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebu;
  x ^= x >> 31;
  return (double)(x >> 11) * (1.0 / 9007199254740992.0);
}

/* The wait the options give after the failed attempts in F_FAILS. */
static lua_Number computed_wait(lua_State *L, Pc *pc) {
  int b = pc->b;
  lua_Number w = checked_wait(L, b, pc->st);
  if (w == 0) return 0;
  return pf_retry_delay(w, number_or(L, b, K_BACKOFF, 1),
                        number_or(L, b, K_MAX_WAIT, -1),
                        number_or(L, b, K_JITTER, 0),
                        (int)(get_int(L, b, F_FAILS) & 0x7fffffff),
                        jitter_u(L));
}

/* retry_on's answer on top: waits and attempts again, or falls back when
** it says so or when the wait would end past the deadline. A table
** error's retry_after sets the wait unless retry_on gave a number. */
static int retry_asked(lua_State *L, Pc *pc) {
  int b = pc->b;
  lua_Number w = asked_wait(L, pc);
  if (w == -2) return fall_back(L, pc);
  if (w < 0 && lua_istable(L, b + F_ERROR)) {
    lua_rawgeti(L, KEYS, K_RETRY_AFTER);
    lua_rawget(L, b + F_ERROR);
    if (good_seconds(L, -1)) w = lua_tonumber(L, -1);
    lua_pop(L, 1);
  }
  w = pf_next_wait(computed_wait(L, pc), w, deadline_left(L, b));
  if (w < 0) return fall_back(L, pc);
  pc->st = ST(ST_KIND(pc->st), P_ATTEMPT);
  pc->status = LUA_OK;
  if (pc->S->events) pf_ev_retry(L, b, get_int(L, b, F_FAILS) + 1, w);
  return retry_wait(L, b, pc->st, w);
}

/* exec with retries: a node's (after its prep) and an item's frame. */
static int exec_step(lua_State *L, Pc *pc) {
  int ok = pc->status == LUA_OK || pc->status == LUA_YIELD;
  switch (pc->st) {
    case NODE_ATTEMPT: case EXEC_ATTEMPT:
      return attempt(L, pc);
    case NODE_EXECUTED: case EXEC_EXECUTED:
      return ok ? exec_done(L, pc) : attempt_failed(L, pc);
    case NODE_TIMED: case EXEC_TIMED:
      return attempt_ended(L, pc);
    case NODE_ASKED: case EXEC_ASKED:
      return retry_asked(L, pc);
    default:   /* NODE_FELL_BACK, EXEC_FELL_BACK */
      if (!ok) return lua_error(L);
      if (lua_type(L, pc->b + F_ERROR) == LUA_TSTRING) pf_drop_record(L);
      return exec_done(L, pc);
  }
}

/* The bound of a flow's whole run (frame b): its timeout or deadline,
** the smaller; -1: none. */
static lua_Number flow_limit(lua_State *L, int b) {
  lua_Number t = seconds(L, b, K_TIMEOUT), d = seconds(L, b, K_DEADLINE);
  return t < 0 || (d > 0 && d < t) ? d : t;
}

/* The x of a timed flow's own task: node:run's walks have their options
** in that slot, so the mark must be a value no caller can pass. */
static const char TIMED_FLOW = 'T';

/* flow_limit, or -1 when b is the first frame of the task that runs the
** flow under it. */
static lua_Number flow_timeout(lua_State *L, int b) {
  if (b == ROOT && lua_touserdata(L, 4) == &TIMED_FLOW) return -1;
  return flow_limit(L, b);
}

/* A flow with a timeout runs as a task of its own (its frame again, the
** first of that task's walk), ended when the time is up; in a durable
** run, with a record that saves its frames over ours (checkpoint.c). */
static int timed_flow(lua_State *L, Pc *pc, lua_Number limit) {
  int b = pc->b, n = 4;
  lua_pushcfunction(L, pf_walk_body);
  lua_pushinteger(L, ST_KIND(pc->st));
  lua_pushvalue(L, b + F_SELF);
  lua_pushvalue(L, b + F_SHARED);
  lua_pushlightuserdata(L, (void *)&TIMED_FLOW);
  if (DURABLE(L)) n += pf_ckpt_push_inner(L, b, pc->st);
  pc->st = ST(ST_KIND(pc->st), P_TIMED);
  return wait_timed(L, b, pc->st, n, limit);
}

/* A timed flow's task ended, or its time is up: the frame ends with its
** result, or raises its error. */
static int flow_ended(lua_State *L, Pc *pc) {
  int b = pc->b, timed_out, c = lua_gettop(L);
  int status = timed_outcome(L, &timed_out);
  const char *name = pf_node_name(L, b + F_SELF);
  if (timed_out)
    return pf_walk_error(L, b, pc->st, 0, "walk", "%s: flow timed out "
                         "after %s s", name, push_seconds(L, flow_limit(L, b)));
  if (status == ATTEMPT_CANCELLED)
    return pf_walk_error(L, b, pc->st, 0, "walk", "%s: flow was "
                         "cancelled", name);
  if (status != LUA_OK) {
    pf_adopt_record(L, -1, c, b, pc->st, 0);
    return lua_error(L);
  }
  lua_replace(L, c);
  lua_settop(L, c);
  return end_frame(L, pc);
}

/* ---------------------------------------------------------------- kinds */

/* A node: after prep, exec_step, then post. */
static int node_step(lua_State *L, Pc *pc) {
  lua_replace(L, pc->b + F_PREP);   /* NODE_PREPPED */
  pc->st = NODE_ATTEMPT;
  return GO;
}

/* prep's result on top is kept, and replaced by the array of items it
** must be (what: of what, for the error). */
static void keep_items(lua_State *L, int b, int st, const char *what) {
  lua_pushvalue(L, -1);
  lua_replace(L, b + F_PREP);
  checked_items(L, b, st, what);
  lua_replace(L, b + F_ITEMS);
}

/* Item i of the sequential batch at b ended: its span, then progress. */
static void item_done(lua_State *L, int b, lua_Integer i) {
  pf_ev_item(L, b, i, 0);
  pf_ev_progress(L, i, lua_rawlen(L, b + F_ITEMS), 0);
}

/* A batch node: an item frame (exec) per item, in order, then post. */
static int batch_step(lua_State *L, Pc *pc) {
  int b = pc->b;
  lua_Integer i = get_int(L, b, F_INDEX);
  switch (pc->st) {
    case BATCH_PREPPED:
      keep_items(L, b, pc->st, "items");
      lua_newtable(L);
      lua_replace(L, b + F_RES);
      set_int(L, b, F_INDEX, 1);
      if (pc->S->events) pf_ev_progress(L, 0, lua_rawlen(L, b + F_ITEMS), 0);
      if (pc->durable) pf_ckpt_prep(L, b, BATCH_NEXT);
      pc->st = BATCH_NEXT;
      return GO;
    case BATCH_NEXT:
      if (i > (lua_Integer)lua_rawlen(L, b + F_ITEMS)) {
        if (pc->durable) pf_ckpt_item_key(L, b, 0);
        lua_pushvalue(L, b + F_RES);
        pc->st = call_post(L, b);
        return GO;
      }
      if (pc->durable) pf_ckpt_item_key(L, b, i);
      set_state(L, b, BATCH_ITEM_DONE);   /* hook: item start */
      if (pc->S->events) pf_ev_item(L, b, i, 1);
      pc->b = push_frame(L, b + F_SELF, 0, 0);
      pc->st = EXEC_ATTEMPT;
      lua_rawgeti(L, b + F_ITEMS, i);
      lua_replace(L, pc->b + F_PREP);
      return GO;
    default:   /* BATCH_ITEM_DONE; hook: item end */
      set_int(L, b, F_INDEX, i + 1);
      if (pc->S->events) item_done(L, b, i);
      pc->st = BATCH_NEXT;
      if (pc->durable) {
        lua_pushvalue(L, -1);
        lua_rawseti(L, b + F_RES, i);
        return save_item(L, pc, i);
      }
      lua_rawseti(L, b + F_RES, i);
      return GO;
  }
}

/* A flow: prep, a walk frame over its params, then post. */
static int flow_step(lua_State *L, Pc *pc) {
  int b = pc->b;
  switch (pc->st) {
    case FLOW_PREPPED:
      lua_replace(L, b + F_PREP);
      set_state(L, b, FLOW_WALKED);
      if (get_key(L, b + F_SELF, K_PARAMS) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
      }
      lua_replace(L, b + F_PARAMS);
      pc->b = push_frame(L, b + F_SELF, b + F_SHARED, 0);
      pc->st = WALK_START;
      lua_pushvalue(L, b + F_PARAMS);
      lua_replace(L, pc->b + F_PARAMS);
      return GO;
    default:   /* FLOW_WALKED */
      pc->st = call_post(L, b);
      return GO;
  }
}

/* A batch flow: a walk frame per param table, in order, then post. */
static int bflow_step(lua_State *L, Pc *pc) {
  int b = pc->b, top;
  lua_Integer i = get_int(L, b, F_INDEX);
  switch (pc->st) {
    case BFLOW_PREPPED:
      keep_items(L, b, pc->st, "param tables");
      check_param_sets(L, b, pc->st, b + F_ITEMS);
      set_int(L, b, F_INDEX, 1);
      if (pc->S->events) pf_ev_progress(L, 0, lua_rawlen(L, b + F_ITEMS), 0);
      if (pc->durable) pf_ckpt_prep(L, b, BFLOW_NEXT);
      pc->st = BFLOW_NEXT;
      return GO;
    case BFLOW_NEXT:
      if (i > (lua_Integer)lua_rawlen(L, b + F_ITEMS)) {
        lua_pushnil(L);
        pc->st = call_post(L, b);
        return GO;
      }
      set_state(L, b, BFLOW_WALKED);   /* hook: item start */
      if (pc->S->events) pf_ev_item(L, b, i, 1);
      pc->b = push_frame(L, b + F_SELF, b + F_SHARED, 0);
      get_key(L, b + F_SELF, K_PARAMS);
      lua_rawgeti(L, b + F_ITEMS, i);
      top = lua_gettop(L);
      push_merged(L, top - 1, top);
      lua_replace(L, pc->b + F_PARAMS);
      lua_pop(L, 2);
      pc->st = WALK_START;
      return GO;
    default:   /* BFLOW_WALKED; hook: item end */
      set_int(L, b, F_INDEX, i + 1);
      if (pc->S->events) item_done(L, b, i);
      pc->st = BFLOW_NEXT;
      if (pc->durable) return save_item(L, pc, i);
      lua_pop(L, 1);
      return GO;
  }
}

/* Starts the run of the node at b+F_NODE with the walk's params; the
** walk goes on at WALK_NODE_DONE. */
static int start_child(lua_State *L, Pc *pc) {
  int b = pc->b, kind = node_kind(L, b + F_NODE, 1);
  if (kind == 0)
    return pf_walk_error(L, b, WALK_STEP, 0, NULL, "flow step: successor "
                         "is a %s, not a pocketflow node",
                         luaL_typename(L, b + F_NODE));
  set_state(L, b, WALK_NODE_DONE);
  push_run_self(L, b + F_NODE, b + F_PARAMS);
  if (pc->durable) pf_ckpt_node_start(L, b, 1);
  pc->st = first_state(kind);
  pc->b = push_frame(L, 0, b + F_SHARED, 0);
  return GO;
}

/* A walk: from the start node along the actions; ends with the last. */
static int walk_step(lua_State *L, Pc *pc) {
  int b = pc->b;
  switch (pc->st) {
    case WALK_START:
      if (get_key(L, b + F_SELF, K_START) == LUA_TNIL)
        return pf_walk_error(L, b, pc->st, 0, NULL, "%s: flow has no start "
                             "node", pf_node_name(L, b + F_SELF));
      lua_replace(L, b + F_NODE);
      pc->st = WALK_STEP;
      return GO;
    case WALK_STEP:
      if (!lua_isnil(L, b + F_NODE)) return start_child(L, pc);
      lua_pushvalue(L, b + F_ACTION);
      pc->st = WALK_END;
      return GO;
    default:   /* WALK_NODE_DONE; hook: after post */
      lua_replace(L, b + F_ACTION);
      next_node(L, b);
      pc->st = WALK_STEP;
      return pc->durable ? save(L, pc) : GO;
  }
}

/* ------------------------------------------------------- parallel kinds */

/* The group's user values (group.c) for its bodies (and C_RUN, walk.h). */
enum { C_SELF = PF_G_CTX, C_SHARED, C_PARAMS };
#define C_EXEC C_SHARED   /* direct items: the exec they run */

/* An item's own self: writes stay there, reads fall through to self. */
static void push_item_self(lua_State *L, int gidx) {
  lua_newtable(L);
  lua_getiuservalue(L, gidx, C_SELF);
  lua_setmetatable(L, -2);
}

/* Group bodies. hook: item start. An item of a parallel batch runs an
** item frame, exec with its retries and fallback ... */
static int item_body(lua_State *L, int gidx, lua_Integer i) {
  lua_pushcfunction(L, pf_walk_body);
  lua_pushinteger(L, PF_K_EXEC);
  push_item_self(L, gidx);
  lua_pushnil(L);
  pf_group_push_item(L, gidx, i);
  return 4;
}

/* ... or, with one attempt and the default fallback, exec itself: an
** error ends it unchanged, as the default fallback would. This saves a
** frame, a pcall and the stack growth they cause, per item. */
static int direct_item_body(lua_State *L, int gidx, lua_Integer i) {
  lua_getiuservalue(L, gidx, C_EXEC);
  push_item_self(L, gidx);
  pf_group_push_item(L, gidx, i);
  return 2;
}

/* {params..., batch params...}: a new table for walk i */
static void push_walk_params(lua_State *L, int gidx, lua_Integer i) {
  int top;
  lua_getiuservalue(L, gidx, C_PARAMS);
  pf_group_push_item(L, gidx, i);
  top = lua_gettop(L);
  push_merged(L, top - 1, top);
  lua_replace(L, top - 1);
  lua_pop(L, 1);
}

/* A walk of a parallel batch flow runs a walk frame. */
static int walk_item_body(lua_State *L, int gidx, lua_Integer i) {
  lua_pushcfunction(L, pf_walk_body);
  lua_pushinteger(L, PF_K_WALK);
  lua_getiuservalue(L, gidx, C_SELF);
  lua_getiuservalue(L, gidx, C_SHARED);
  push_walk_params(L, gidx, i);
  return 4;
}

/* In durable runs: an item done before the resume returns its saved
** result; the others run with their own task record (and a walk with
** its saved frames). */
static int durable_item_body(lua_State *L, int gidx, lua_Integer i) {
  if (pf_ckpt_item_done(L, gidx, i)) return 1;
  item_body(L, gidx, i);
  return 4 + pf_ckpt_item_rec(L, gidx, i, lua_gettop(L) - 2);
}

static int durable_walk_body(lua_State *L, int gidx, lua_Integer i) {
  if (pf_ckpt_item_done(L, gidx, i)) return 1;
  walk_item_body(L, gidx, i);
  return 4 + pf_ckpt_item_rec(L, gidx, i, 0);
}

/* The kind of the frame that started a group with this body (for the
** where line, where.c), 0 if none; *direct: items run exec itself. */
int pf_item_kind(pf_group_body body, int *direct) {
  *direct = body == direct_item_body;
  if (body == item_body || body == direct_item_body ||
      body == durable_item_body) return PF_K_PBATCH;
  return body == walk_item_body || body == durable_walk_body ? PF_K_PBFLOW : 0;
}

/* Items may run direct_item_body: decided once per group; not while
** someone listens, as items' events come from their walks. */
static int plain_exec(lua_State *L, int self) {
  int plain;
  if (pf_sched_get(L)->events) return 0;
  get_key(L, self, K_RETRIES);
  plain = pf_retries(L, -1) == 1;
  get_key(L, self, K_FALLBACK);
  plain = plain && lua_tocfunction(L, -1) == pf_reraise;
  lua_pop(L, 2);
  if (plain && armed(L)) {   /* a timed attempt runs as a task */
    get_key(L, self, K_TIMEOUT);
    get_key(L, self, K_DEADLINE);
    plain = lua_isnil(L, -1) && lua_isnil(L, -2);
    lua_pop(L, 2);
  }
  return plain;
}

/* Pushes the group of the items in F_ITEMS, started; returns 1 if the
** walk must wait for them. */
static int start_group(lua_State *L, int b, lua_Integer maxc, int flow) {
  int gidx, durable = DURABLE(L);
  int direct = !flow && !durable && plain_exec(L, b + F_SELF);
  pf_group_new(L, b + F_ITEMS, maxc, durable ? (flow ? durable_walk_body
               : durable_item_body) : flow ? walk_item_body
               : direct ? direct_item_body : item_body, b);
  gidx = lua_gettop(L);
  if (durable)
    pf_ckpt_group(L, b, flow ? PBFLOW_GATHERED : PBATCH_GATHERED, gidx);
  lua_pushvalue(L, b + F_SELF);
  if (!flow) {   /* items read self's fields through it */
    lua_rawgeti(L, KEYS, K_INDEX);
    lua_pushvalue(L, -2);
    lua_rawset(L, -3);
  }
  lua_setiuservalue(L, gidx, C_SELF);
  if (flow) {
    lua_pushvalue(L, b + F_SHARED);
    lua_setiuservalue(L, gidx, C_SHARED);
    lua_pushvalue(L, b + F_PARAMS);
    lua_setiuservalue(L, gidx, C_PARAMS);
  } else if (direct) {
    get_key(L, b + F_SELF, K_EXEC);
    lua_setiuservalue(L, gidx, C_EXEC);
  }
  return pf_group_run(L, gidx);
}

/* prep's result on top: checks it and max_concurrency; returns that. */
static lua_Integer parallel_items(lua_State *L, int b, int st, int flow) {
  int isnum;
  lua_Integer maxc = 0;
  keep_items(L, b, st, flow ? "param tables" : "items");
  if (flow) check_param_sets(L, b, st, b + F_ITEMS);
  if (get_key(L, b + F_SELF, K_MAXC) != LUA_TNIL) {
    maxc = lua_tointegerx(L, -1, &isnum);
    if (!isnum || maxc < 1)
      pf_walk_error(L, b, st, 0, flow ? "walk" : "exec", "%s: "
                    "max_concurrency must be a positive integer or nil",
                    pf_node_name(L, b + F_SELF));
  }
  lua_pop(L, 1);
  if (flow && get_key(L, b + F_SELF, K_PARAMS) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
  }
  if (flow) lua_replace(L, b + F_PARAMS);
  return maxc;
}

/* The walk's wait for its items: starts the group and yields until
** they end (back in the state set), unless there are none. */
static int group_wait(lua_State *L, Pc *pc, lua_Integer maxc, int flow) {
  int b = pc->b, wait;
  pf_task *t = pf_wait_begin(L, "parallel batch");
  if (t == NULL) pf_wait_outside(L, NULL, "parallel batch");
  wait = start_group(L, b, maxc, flow);
  lua_replace(L, b + F_GROUP);
  return wait ? pf_wait_yield(L, t, CTX(b, pc->st), walk_k) : GO;
}

/* The names of the nodes of frames ROOT..b, an array: the path of the
** node at b from the outermost node of this walk. */
static void push_path(lua_State *L, int b) {
  int f, n = 0;
  lua_newtable(L);
  for (f = ROOT; f <= b; f += FS) {
    int kind = ST_KIND(get_state(L, f));   /* b's own: a parallel kind */
    if (f < b && (kind == PF_K_WALK || kind == PF_K_EXEC)) continue;
    lua_pushstring(L, pf_node_name(L, f + F_SELF));
    lua_rawseti(L, -2, ++n);
  }
}

/* distribute = q (API.md section 9): the items go to workers through
** q:_distribute(self, shared, items, params, maxc, flow, path), Lua in
** lua/pocketflow/queue.lua, which returns the results (or nil) in place
** of the group's; the distribute field is on top. */
static int distribute(lua_State *L, Pc *pc, lua_Integer maxc, int flow) {
  int b = pc->b;
  lua_getfield(L, -1, "_distribute");
  lua_insert(L, -2);
  lua_pushvalue(L, b + F_SELF);
  lua_pushvalue(L, b + F_SHARED);
  lua_pushvalue(L, b + F_ITEMS);
  lua_pushvalue(L, b + F_PARAMS);
  lua_pushinteger(L, maxc);
  lua_pushboolean(L, flow);
  push_path(L, b);
  lua_callk(L, 8, 1, CTX(b, pc->st), walk_k);
  return GO;
}

/* A parallel batch node or flow: the items (item frames or walks) as
** tasks of a group, or sent to workers (distribute), then post with the
** results or nil. */
static int parallel_step(lua_State *L, Pc *pc) {
  int b = pc->b, flow = ST_KIND(pc->st) == PF_K_PBFLOW;
  lua_Integer maxc;
  switch (pc->st) {
    case PBATCH_PREPPED: case PBFLOW_PREPPED:
      maxc = parallel_items(L, b, pc->st, flow);
      if (pc->S->events) pf_ev_progress(L, 0, lua_rawlen(L, b + F_ITEMS), 0);
      pc->st = flow ? PBFLOW_GATHERED : PBATCH_GATHERED;
      if (get_key(L, b + F_SELF, K_DISTRIBUTE) != LUA_TNIL)
        return distribute(L, pc, maxc, flow);
      lua_pop(L, 1);
      return group_wait(L, pc, maxc, flow);
    default:   /* PBATCH_GATHERED, PBFLOW_GATHERED */
      if (lua_type(L, b + F_GROUP) == LUA_TUSERDATA)   /* else distributed */
        pf_group_finish(L, b + F_GROUP);
      if (flow) {
        lua_pop(L, 1);
        lua_pushnil(L);
      }
      set_int(L, b, F_GROUP, 0);
      pc->st = call_post(L, b);
      return GO;
  }
}

/* ----------------------------------------------------------------- walk */

static int walk(lua_State *L, int status, int b, int st) {
  Pc pc;
  int r;
  pc.b = b;
  pc.st = st;
  pc.status = status;
  pc.armed = armed(L);
  pc.durable = DURABLE(L);
  pc.S = sched(L);
  for (;;) {
    switch (pc.st) {
      case NODE_PREP: case BATCH_PREP: case PBATCH_PREP: case FLOW_PREP:
      case BFLOW_PREP: case PBFLOW_PREP:
        r = node_begin(L, &pc);
        break;
      case NODE_PREPPED:
        r = node_step(L, &pc);
        break;
      case NODE_ATTEMPT: case NODE_EXECUTED: case NODE_FELL_BACK:
      case NODE_TIMED: case NODE_ASKED:
      case EXEC_ATTEMPT: case EXEC_EXECUTED: case EXEC_FELL_BACK:
      case EXEC_TIMED: case EXEC_ASKED:
        r = exec_step(L, &pc);
        break;
      case FLOW_TIMED: case BFLOW_TIMED: case PBFLOW_TIMED:
        r = flow_ended(L, &pc);
        break;
      case POSTED:   /* hook: after post */
      case EXEC_END: case WALK_END:
        r = end_frame(L, &pc);
        break;
      case BATCH_PREPPED: case BATCH_NEXT: case BATCH_ITEM_DONE:
        r = batch_step(L, &pc);
        break;
      case PBATCH_PREPPED: case PBATCH_GATHERED:
      case PBFLOW_PREPPED: case PBFLOW_GATHERED:
        r = parallel_step(L, &pc);
        break;
      case FLOW_PREPPED: case FLOW_WALKED:
        r = flow_step(L, &pc);
        break;
      case BFLOW_PREPPED: case BFLOW_NEXT: case BFLOW_WALKED:
        r = bflow_step(L, &pc);
        break;
      case WALK_START: case WALK_STEP: case WALK_NODE_DONE:
        r = walk_step(L, &pc);
        break;
      default:
        return luaL_error(L, "pocketflow: bad walk state %d", pc.st);
    }
    if (r != GO) return r;
  }
}

/* --------------------------------------------------------------- resume */

/* Sets the slot of frame b to field k of the descriptor on top. */
static void from_desc(lua_State *L, int b, int slot, const char *k) {
  lua_getfield(L, -1, k);
  lua_replace(L, b + slot);
}

/* A container's saved prep result, on top, replaced by its items. */
static void restore_items(lua_State *L, int b, int st, const char *what) {
  from_desc(L, b, F_PREP, "prep");
  lua_pushvalue(L, b + F_PREP);
  checked_items(L, b, st, what);
  lua_replace(L, b + F_ITEMS);
  from_desc(L, b, F_INDEX, "index");
}

/* Restores frame b (kind) from the descriptor on top (popped); more: a
** frame of its child follows. Returns the frame's state, the child's
** kind in *kind. A parallel batch starts its items again, with its
** saved group (pf_ckpt_group reuses it), from prep's result. */
static int restore_frame(lua_State *L, int b, int *kind, int more) {
  int k = *kind;
  switch (k) {
    case PF_K_WALK:
      from_desc(L, b, F_NODE, "obj");
      from_desc(L, b, F_ACTION, "action");
      from_desc(L, b, F_PARAMS, "params");
      from_desc(L, b, F_VISITS, "visits");
      lua_pop(L, 1);
      if (more) *kind = node_kind(L, b + F_NODE, 1);
      return more ? WALK_NODE_DONE : WALK_STEP;
    case PF_K_FLOW:
      from_desc(L, b, F_PREP, "prep");
      lua_pop(L, 1);
      *kind = PF_K_WALK;
      return FLOW_WALKED;
    case PF_K_BATCH: case PF_K_BFLOW:
      restore_items(L, b, ST(k, P_PREPPED), k == PF_K_BATCH ? "items"
                                                            : "param tables");
      if (k == PF_K_BATCH) from_desc(L, b, F_RES, "res");
      lua_pop(L, 1);
      *kind = PF_K_WALK;
      return k == PF_K_BATCH ? BATCH_NEXT : more ? BFLOW_WALKED : BFLOW_NEXT;
    default:   /* PF_K_PBATCH, PF_K_PBFLOW */
      lua_getfield(L, -1, "group");
      lua_setfield(L, RUN, "resume");
      lua_getfield(L, -1, "prep");
      lua_remove(L, -2);
      return ST(k, P_PREPPED);
  }
}

/* A flow of kind at b that runs in a task of its own (timed_flow). */
static int timed_kind(lua_State *L, int b, int kind) {
  return kind >= PF_K_FLOW && kind <= PF_K_PBFLOW && armed(L) &&
         flow_timeout(L, b) > 0;
}

/* A resumed durable walk pushes the frames saved in SNAP (checkpoint.c
** wrote them; durable.lua found their nodes again) over its first frame
** at *pb, of kind. Returns the top frame's state: the cut node reruns
** from prep, a batch from its next item, a timed flow from its start,
** its task restoring the frames from its own. */
static int restore_frames(lua_State *L, int *pb, int kind) {
  lua_Integer i, n = (lua_Integer)lua_rawlen(L, SNAP);
  int b = *pb, st = first_state(kind);
  for (i = 1; i <= n; i++) {
    int more = i < n;
    lua_rawgeti(L, SNAP, i);
    lua_getfield(L, -1, "k");
    if (lua_tointeger(L, -1) != kind || kind == PF_K_NODE ||
        kind == PF_K_EXEC || (!more && kind == PF_K_FLOW) ||
        (more && (kind == PF_K_BATCH || kind == PF_K_PBATCH ||
                  kind == PF_K_PBFLOW)))
      luaL_error(L, "pocketflow: the checkpoint does not match the graph");
    lua_pop(L, 1);
    if (timed_kind(L, b, kind)) {   /* its task restores the rest */
      pf_ckpt_stash(L, i);
      break;
    }
    st = restore_frame(L, b, &kind, more);
    if (!more) break;
    set_state(L, b, st);
    if (kind == PF_K_WALK) {
      b = push_frame(L, b + F_SELF, b + F_SHARED, 0);
    } else {
      push_run_self(L, b + F_NODE, b + F_PARAMS);
      pf_ckpt_node_start(L, b, 0);
      b = push_frame(L, 0, b + F_SHARED, 0);
    }
    st = first_state(kind);
  }
  *pb = b;
  return st;
}

/* Runs the frame for kind over the arguments (kind, self, shared, x, run,
** snap); with from_node, self is the node object and its run's self is
** made; run: a durable run's task record, and snap the frames it resumes. */
static int walk_begin(lua_State *L, int kind, int from_node, int run) {
  int b, st = first_state(kind);
  pf_sched *S;
  lua_settop(L, 6);
  lua_pushcfunction(L, pf_walk_msgh);
  push_keys(L);
  S = sched(L);
  lua_pushnil(L);      /* GUARD */
  if (from_node) {
    push_run_self(L, 2, 0);
    lua_replace(L, 2);
  }
  /* run: node:run's walk, x its options or nil (kept: core.node_here
  ** reads on_interrupt there) */
  if (run && (S->events || S->env_sinks || !lua_isnil(L, 4)))
    pf_ev_walk_begin(L, 1);
  b = push_frame(L, 2, 3, kind == PF_K_EXEC ? 4 : 0);
  if (kind == PF_K_WALK) {
    lua_pushvalue(L, 4);
    lua_replace(L, b + F_PARAMS);
  }
  if (!run && S->events) pf_ev_walk_begin(L, 0);
  if (DURABLE(L)) {
    pf_ckpt_begin(L, kind);
    if (lua_istable(L, SNAP)) st = restore_frames(L, &b, kind);
  }
  return walk(L, LUA_OK, b, st);
}

/* core.machine(kind, self, shared, x [, run, snap]): the body of item and
** walk tasks (the group bodies above), x the item (exec) or the params
** (walk); and a durable run's walk (durable.lua), self a node of kind. */
int pf_walk_body(lua_State *L) {
  lua_Integer kind = luaL_checkinteger(L, 1);
  if (kind < PF_K_NODE || kind > PF_K_EXEC)
    return luaL_error(L, "pocketflow: bad node kind %I", kind);
  /* the frames write into self and merge the params: both raw */
  luaL_checktype(L, 2, LUA_TTABLE);
  if (kind == PF_K_WALK) luaL_checktype(L, 4, LUA_TTABLE);
  if (kind < PF_K_WALK && node_kind(L, 2, 0) != kind)
    return luaL_error(L, "pocketflow: not a node of kind %I", kind);
  return walk_begin(L, (int)kind, kind < PF_K_WALK, 0);
}

/* The run options (API.md sections 5-8): every key run accepts. */
static const char *const run_options[] = {
  "on_event", "trace", "capture", "progress", "store", "run_id",
  "durability", "transient", "on_interrupt", NULL
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
    for (i = 0; run_options[i] != NULL; i++)
      if (t == LUA_TSTRING && strcmp(run_options[i], lua_tostring(L, -1)) == 0)
        break;
    if (run_options[i] == NULL)
      luaL_error(L, "unknown run option '%s'", lua_tostring(L, -1));
    lua_pushvalue(L, -1);
    lua_rawget(L, idx);
    pf_ev_check_option(L, run_options[i], -1);
    lua_pop(L, 1);
  }
}

static void check_on_interrupt(lua_State *L, int idx) {
  int t;
  lua_pushliteral(L, "on_interrupt");
  t = lua_rawget(L, idx);
  if (t != LUA_TNIL && t != LUA_TFUNCTION)
    luaL_error(L, "run: on_interrupt must be a function (got %s)",
               lua_typename(L, t));
  lua_pushliteral(L, "store");
  if (t != LUA_TNIL && lua_rawget(L, idx) != LUA_TNIL)
    luaL_error(L, "run: on_interrupt is for runs without a store; with a "
               "store, answer with flow:resume");
  lua_pop(L, 2);
}

/* node:run(shared [, opts]) */
int pf_run_node(lua_State *L) {
  int kind = node_kind(L, 1, 0);
  if (kind == 0)
    return luaL_error(L, "run: expected a pocketflow node (got %s)",
                      luaL_typename(L, 1));
  if (!lua_isnoneornil(L, 3)) {
    static const char *const needs_store[] = {"run_id", "durability",
                                               "transient", NULL};
    const char *const *k;
    check_run_options(L, 3);
    check_on_interrupt(L, 3);
    if (lua_getfield(L, 3, "store") != LUA_TNIL) return pf_ckpt_run(L);
    for (k = needs_store; *k; k++)
      if (lua_getfield(L, 3, *k) != LUA_TNIL)
        return luaL_error(L, "run option '%s' needs a store", *k);
    lua_settop(L, 3);
  }
  if (pf_current(L) == NULL) return pf_wait_outside(L, pf_run_node, "run");
  lua_settop(L, 3);            /* the options stay in slot 4 (node_here) */
  if (lua_getfield(L, 1, "successors") == LUA_TTABLE) {
    lua_pushnil(L);
    if (lua_next(L, -2)) {
      lua_pop(L, 2);
      lua_pushfstring(L, "%s: node won't run successors; use a Flow",
                      pf_node_name(L, 1));
      pf_warn(L, lua_tostring(L, -1));
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  lua_pushinteger(L, kind);
  lua_insert(L, 1);            /* kind, node, shared, opts */
  return walk_begin(L, kind, 1, 1);
}

/*
** pocketflow.core: the C half of require "pocketflow". The one list of
** what the core is made of (as Lua's linit.c): each file adds its own
** functions to the table through its own open function.
*/
#include <signal.h>
#include <string.h>

#include "pf.h"
#include "pf_sched.h"
#include "embed.h"
#include "serial.h"
#include "attempts.h"
#include "events.h"
#include "io/io.h"

/* the Lua modules built in (tools/embed.c) */
extern const pf_chunk pf_http_lua, pf_json_lua, pf_diagram_lua,
                      pf_events_lua, pf_trace_lua, pf_progress_lua,
                      pf_queue_lua, pf_interrupt_lua;

typedef void (*pf_open_fn)(lua_State *L);

static const pf_open_fn opens[] = {
  pf_open_sched,     /* sched.c: run, set_warn, debug_counts */
  pf_open_runtime,   /* runtime.c: spawn, gather, sleep, await, timeout, now */
  pf_open_exec,      /* io/exec.c: exec */
  pf_open_fs,        /* io/fs.c: read_file, write_file, stat, ... */
  pf_open_http,      /* io/http.c: http_start, http_request */
  pf_open_redis,     /* io/redis.c: redis_connect */
  pf_open_serial,    /* serial.c: serialize, deserialize */
  pf_open_store,     /* store.c: the SQLite connection of pf.sqlite */
  pf_open_events,    /* events.c: the event bus's C half */
  pf_open_trace,     /* trace.c: span_writer, spawn_detached */
  pf_open_checkpoint,  /* checkpoint.c: durable runs' walk side */
  NULL
};

/* walk.c: the node and flow machine */
static const luaL_Reg walk_funcs[] = {
  {"run_node", pf_run_node},
  {"machine", pf_walk_body},
  {"noop", pf_noop},
  {"reraise", pf_reraise},
  {"node_here", pf_node_here},
  {"no_retry", pf_mark_no_retry},
  {"arm_timeouts", pf_arm_timeouts},
  {NULL, NULL}
};

/* core.retry_delay(wait, backoff, max_wait|nil, jitter, n_failed, u): the
** walk's wait between attempts (attempts.c, layer 0), for specs and docs */
static int l_retry_delay(lua_State *L) {
  double max_wait = luaL_opt(L, luaL_checknumber, 3, -1);
  lua_Integer n = luaL_checkinteger(L, 5);
  luaL_argcheck(L, n >= 1 && n <= 0x7fffffff, 5, "must be a positive int");
  lua_pushnumber(L, pf_retry_delay(luaL_checknumber(L, 1), luaL_checknumber(L, 2),
                                   max_wait, luaL_checknumber(L, 4), (int)n,
                                   luaL_checknumber(L, 6)));
  return 1;
}

/* core.pending_mt(): the metatable of values that end a parallel item
** without failing its group (group.c): pf.interrupt's */
static int l_pending_mt(lua_State *L) {
  pf_pending_mt(L);
  return 1;
}

static const luaL_Reg attempt_funcs[] = {
  {"retry_delay", l_retry_delay},
  {"pending_mt", l_pending_mt},
  {NULL, NULL}
};

static void set_kind(lua_State *L, const char *name, int kind) {
  lua_pushinteger(L, kind);
  lua_setfield(L, -2, name);
}

static void open_kinds(lua_State *L) {
  lua_newtable(L);
  set_kind(L, "node", PF_K_NODE);
  set_kind(L, "batch", PF_K_BATCH);
  set_kind(L, "parallel_batch", PF_K_PBATCH);
  set_kind(L, "flow", PF_K_FLOW);
  set_kind(L, "batch_flow", PF_K_BFLOW);
  set_kind(L, "parallel_batch_flow", PF_K_PBFLOW);
  lua_setfield(L, -2, "kinds");
}

/* Writing to a pipe or socket whose reader has gone must fail with EPIPE,
** not kill the process: libuv leaves SIGPIPE to the program. A handler
** the program set is kept. */
static void ignore_sigpipe(void) {
  struct sigaction sa;
  if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) {
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGPIPE, &sa, NULL);
  }
}

LUALIB_API int luaopen_pocketflow_core(lua_State *L) {
  const pf_open_fn *open;
  pf_sched *S;
  luaL_checkversion(L);
  S = pf_sched_open(L);
  S->child_done = pf_group_child_done;   /* the upward calls, as data */
  S->add_where = pf_add_where;
  S->in_handler = pf_in_handler;
  ignore_sigpipe();
  pf_preload(L, "pocketflow.http", &pf_http_lua);
  pf_preload(L, "pocketflow.json", &pf_json_lua);
  pf_preload(L, "pocketflow.diagram", &pf_diagram_lua);
  pf_preload(L, "pocketflow.events", &pf_events_lua);
  pf_preload(L, "pocketflow.trace", &pf_trace_lua);
  pf_preload(L, "pocketflow.progress", &pf_progress_lua);
  pf_preload(L, "pocketflow.queue", &pf_queue_lua);
  pf_preload(L, "pocketflow.interrupt", &pf_interrupt_lua);
  lua_newtable(L);
  for (open = opens; *open; open++) (*open)(L);
  luaL_setfuncs(L, walk_funcs, 0);
  luaL_setfuncs(L, attempt_funcs, 0);
  open_kinds(L);
  lua_pushliteral(L, PF_VERSION);
  lua_setfield(L, -2, "version");
  return 1;
}

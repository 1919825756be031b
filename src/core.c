/*
** pocketflow.core: the C half of require "pocketflow".
*/
#include "pf.h"
#include "sched.h"
#include "serial.h"
#include "attempts.h"

static void set_kind(lua_State *L, const char *name, int kind) {
  lua_pushinteger(L, kind);
  lua_setfield(L, -2, name);
}

/* core.retry_delay(wait, backoff, max_wait|nil, jitter, n_failed, u): the
** walk's wait between attempts (src/attempts.c), for specs and docs */
static int l_retry_delay(lua_State *L) {
  double max_wait = luaL_opt(L, luaL_checknumber, 3, -1);
  lua_Integer n = luaL_checkinteger(L, 5);
  luaL_argcheck(L, n >= 1 && n <= 0x7fffffff, 5, "must be a positive int");
  lua_pushnumber(L, pf_retry_delay(luaL_checknumber(L, 1), luaL_checknumber(L, 2),
                                   max_wait, luaL_checknumber(L, 4), (int)n,
                                   luaL_checknumber(L, 6)));
  return 1;
}

LUALIB_API int luaopen_pocketflow_core(lua_State *L) {
  luaL_checkversion(L);
  pf_sched_open(L);
  pf_open_runtime(L);
  pf_open_io(L);
  pf_open_serial(L);
  lua_newtable(L);
  set_kind(L, "node", PF_K_NODE);
  set_kind(L, "batch", PF_K_BATCH);
  set_kind(L, "parallel_batch", PF_K_PBATCH);
  set_kind(L, "flow", PF_K_FLOW);
  set_kind(L, "batch_flow", PF_K_BFLOW);
  set_kind(L, "parallel_batch_flow", PF_K_PBFLOW);
  lua_setfield(L, -2, "kinds");
  lua_pushcfunction(L, pf_noop);
  lua_setfield(L, -2, "noop");
  lua_pushcfunction(L, pf_reraise);
  lua_setfield(L, -2, "reraise");
  lua_pushcfunction(L, l_retry_delay);
  lua_setfield(L, -2, "retry_delay");
  lua_pushliteral(L, PF_VERSION);
  lua_setfield(L, -2, "version");
  return 1;
}

/*
** pocketflow.core: the C half of require "pocketflow".
*/
#include "events.h"
#include "pf.h"
#include "sched.h"
#include "serial.h"

static void set_kind(lua_State *L, const char *name, int kind) {
  lua_pushinteger(L, kind);
  lua_setfield(L, -2, name);
}

LUALIB_API int luaopen_pocketflow_core(lua_State *L) {
  luaL_checkversion(L);
  pf_sched_open(L);
  pf_open_runtime(L);
  pf_open_io(L);
  pf_open_serial(L);
  pf_open_events(L);
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
  lua_pushliteral(L, PF_VERSION);
  lua_setfield(L, -2, "version");
  return 1;
}

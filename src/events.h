/*
** The event bus, C side (events.c). The walk emits at its named
** transitions only when someone listens:
**
**   if (t->S->events && pf_event_begin(L, "node_start")) {
**     ... lua_setfield(L, -2, "node") etc. on the table at the top ...
**     pf_emit(L);            -- pops the table; never raises
**   }
**
** The walk's own events go through the pf_ev_* helpers below, one call
** per transition; each runs only when the walk saw S->events set (or,
** pf_ev_node_start, a batch kind, whose progress option may subscribe).
** See docs/design.md, "Events".
*/
#ifndef PF_EVENTS_H
#define PF_EVENTS_H

#include "pf.h"
#include "pf_sched.h"

int pf_event_begin(lua_State *L, const char *type);
void pf_emit(lua_State *L);
int pf_in_handler(lua_State *L);
void pf_open_events(lua_State *L);

void pf_ev_check_option(lua_State *L, const char *name, int vidx);

/* the walk's transitions (b: a frame's base, walk.h) */
void pf_ev_walk_begin(lua_State *L, int run);
void pf_ev_walk_end(lua_State *L);
void pf_ev_node_start(lua_State *L, pf_sched *S, int b, int kind);
void pf_ev_node_end(lua_State *L, int b);
void pf_ev_item(lua_State *L, int b, lua_Integer i, int start);
void pf_ev_progress(lua_State *L, lua_Integer done, lua_Integer total,
                    lua_Integer in_flight);
void pf_ev_retry(lua_State *L, int b, lua_Integer attempt, lua_Number delay);
void pf_ev_fallback(lua_State *L, int b);

#endif

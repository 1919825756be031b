/*
** The event bus, C side (events.c). The walk emits at its named
** transitions only when someone listens:
**
**   if (t->S->events && pf_event_begin(L, "node_start")) {
**     ... lua_setfield(L, -2, "node") etc. on the table at the top ...
**     pf_emit(L);            -- pops the table; never raises
**   }
**
** See docs/drafts/events.md, "The walk's interface".
*/
#ifndef PF_EVENTS_H
#define PF_EVENTS_H

#include "pf.h"

int pf_event_begin(lua_State *L, const char *type);
void pf_emit(lua_State *L);
int pf_in_handler(lua_State *L);
void pf_open_events(lua_State *L);

#endif

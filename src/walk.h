/*
** The walk's frames and states, shared by walk.c (the walk) and where.c
** (the where line of an error, read off a walk's frames).
*/
#ifndef PF_WALK_H
#define PF_WALK_H

#include "pf.h"

/* A frame runs a node of one of the kinds of pf.h, or one of these: the
** walk along a flow's actions, or an item's exec. */
enum { PF_K_WALK = PF_K_PBFLOW + 1, PF_K_EXEC };

/* A frame is FS consecutive slots on the task's stack; the top frame is
** the one running. Slots 0-4 and 7 mean the same in every kind; 5 and 6
** have a name per kind. */
#define FS 8
enum {
  F_SELF,       /* the run's own table: reads fall through to the node */
  F_STATE,      /* the frame's state while a frame above it runs */
  F_SHARED,     /* the shared store */
  F_PREP,       /* prep's result; an item frame's item */
  F_RES,        /* exec's result; a batch's results */
  F_5, F_6,     /* per kind, below */
  F_PARAMS      /* flows and walks: the params of the nodes they run */
};
/* a node's and an item's exec */
#define F_FAILS   F_5   /* attempts failed so far */
#define F_ERROR   F_6   /* the last failed attempt's error */
#define F_DEADLINE F_PARAMS /* with a deadline: when it passes (pf.now) */
#define F_BOUND   F_RES /* a timed attempt runs: its limit is the deadline */
/* a batch and a batch flow */
#define F_INDEX   F_5   /* the item running, from 1 */
#define F_ITEMS   F_6   /* prep's array: items or param tables (all batches) */
/* a parallel batch and a parallel batch flow (and F_ITEMS) */
#define F_GROUP   F_5   /* the group while the items run, then 0 */
/* a walk */
#define F_KEY     F_PREP /* durable runs: its nodes' idempotency key prefix */
#define F_VISITS  F_5   /* durable runs: the nodes it started so far */
#define F_NODE    F_6   /* the node running, then its successor */
#define F_ACTION  F_RES /* the last node's action: the walk's result */

/* The slots below the first frame, from 1: the arguments of the walk's
** C function (kind, self, shared, x, run, snap), then: */
#define RUN  5      /* a durable run's task record (checkpoint.c), or nil */
#define SNAP 6      /* the frames a resumed walk restores first, or nil */
#define MSGH 7      /* the message handler of exec and exec_fallback */
#define KEYS 8      /* the interned field names (walk.c) */
#define GUARD 9     /* the walk's event guard or nil (events.c), closed
                       when the walk ends */
#define ROOT 10     /* base of the first frame */

/* A state is its frame's kind and a phase: where.c reads both off it. */
#define ST(kind, phase) ((kind) << 5 | (phase))
#define ST_KIND(st)     ((st) >> 5)
#define ST_PHASE(st)    ((st) & 31)

/* Every kind but an item's starts with prep. The phases of exec come
** after those of the frame's own kind: a node runs them inline, an
** item's frame (PF_K_EXEC) starts with them. */
enum { P_PREP, P_PREPPED };
enum { P_ATTEMPT = 16, P_EXECUTED, P_FELL_BACK, P_END, P_TIMED, P_ASKED };

/*
** The states. "top" is what lies above the frame on entry: the result of
** the call the state waited for. Each state's frame has the slots of its
** kind (above); exec's slots are F_FAILS and F_ERROR.
**
** state            top               does
** ---------------- ----------------- ------------------------------------
** *_PREP           -                 call prep(self, shared) (every kind
**                                    but EXEC); -> the kind's *_PREPPED
** NODE_PREPPED     prep_res          keep it in F_PREP; -> NODE_ATTEMPT
** *_ATTEMPT        -                 set cur_retry; pcall exec(self, F_PREP)
** *_EXECUTED       exec_res | error  ok: -> post (item: EXEC_END); error:
**                                    count it, wait, -> *_ATTEMPT again,
**                                    or after the last: pcall exec_fallback
** *_FELL_BACK      result | error    ok: -> post (item: EXEC_END); raise
** *_TIMED          attempt's task    a timed attempt (or flow) ended or ran
**                                    out of time: -> *_EXECUTED with its
**                                    result or error (a flow: its end)
** *_ASKED          retry_on's answer wait and -> *_ATTEMPT, or fall back
** POSTED           post_res          end the frame with it (every kind)
** EXEC_END         exec_res          end the item's frame with it
** BATCH_PREPPED    prep_res          check items; F_RES = {}; F_INDEX = 1
** BATCH_NEXT       -                 past the end: call post(.., F_RES);
**                                    else push an item frame (EXEC_ATTEMPT)
** BATCH_ITEM_DONE  exec_res          F_RES[F_INDEX] = it; -> BATCH_NEXT
** PBATCH_PREPPED   prep_res          check items; start the group, wait
** PBATCH_GATHERED  -                 call post(.., results) or raise
** FLOW_PREPPED     prep_res          push a walk frame with the params
** FLOW_WALKED      last action       call post(.., last action)
** BFLOW_PREPPED    prep_res          check param tables; F_INDEX = 1
** BFLOW_NEXT       -                 past the end: call post(.., nil);
**                                    else push a walk, params merged
** BFLOW_WALKED     last action       drop it; F_INDEX++; -> BFLOW_NEXT
** PBFLOW_PREPPED   prep_res          check param tables; start the group
** PBFLOW_GATHERED  -                 call post(.., nil) or raise
** WALK_START       -                 F_NODE = start_node
** WALK_STEP        -                 no F_NODE: -> WALK_END with F_ACTION;
**                                    else push F_NODE's run frame (PREP)
** WALK_NODE_DONE   post_res          F_ACTION = it; F_NODE = successor
** WALK_END         last action       end the walk's frame with it
*/
enum walk_state {
  NODE_PREP = ST(PF_K_NODE, 0), NODE_PREPPED, POSTED = ST(PF_K_NODE, 3),
  NODE_ATTEMPT = ST(PF_K_NODE, P_ATTEMPT), NODE_EXECUTED, NODE_FELL_BACK,
  EXEC_ATTEMPT = ST(PF_K_EXEC, P_ATTEMPT), EXEC_EXECUTED, EXEC_FELL_BACK,
  EXEC_END, NODE_TIMED = ST(PF_K_NODE, P_TIMED), NODE_ASKED,
  EXEC_TIMED = ST(PF_K_EXEC, P_TIMED), EXEC_ASKED,
  FLOW_TIMED = ST(PF_K_FLOW, P_TIMED), BFLOW_TIMED = ST(PF_K_BFLOW, P_TIMED),
  PBFLOW_TIMED = ST(PF_K_PBFLOW, P_TIMED),
  BATCH_PREP = ST(PF_K_BATCH, 0), BATCH_PREPPED, BATCH_NEXT, BATCH_ITEM_DONE,
  PBATCH_PREP = ST(PF_K_PBATCH, 0), PBATCH_PREPPED, PBATCH_GATHERED,
  FLOW_PREP = ST(PF_K_FLOW, 0), FLOW_PREPPED, FLOW_WALKED,
  BFLOW_PREP = ST(PF_K_BFLOW, 0), BFLOW_PREPPED, BFLOW_NEXT, BFLOW_WALKED,
  PBFLOW_PREP = ST(PF_K_PBFLOW, 0), PBFLOW_PREPPED, PBFLOW_GATHERED,
  WALK_START = ST(PF_K_WALK, 0), WALK_STEP, WALK_NODE_DONE, WALK_END
};

/* checkpoint.c: durable runs (walk.c calls these only when slot RUN holds
** a record). C_RUN is the group's user value with the run's record. */
#define C_RUN (PF_G_CTX + 3)
#define DURABLE(L) (lua_type(L, RUN) == LUA_TTABLE)
void pf_ckpt_begin(lua_State *L, int kind);
void pf_ckpt_node_start(lua_State *L, int w, int count);
void pf_ckpt_item_key(lua_State *L, int b, lua_Integer i);
int pf_ckpt_push_save(lua_State *L, int top, int st);
void pf_ckpt_prep(lua_State *L, int b, int st);
int pf_ckpt_push_item(lua_State *L, int b, lua_Integer i);
void pf_ckpt_group(lua_State *L, int b, int st, int gidx);
int pf_ckpt_item_done(lua_State *L, int gidx, lua_Integer i);
int pf_ckpt_item_rec(lua_State *L, int gidx, lua_Integer i, int self);
int pf_ckpt_push_end(lua_State *L);
int pf_ckpt_push_inner(lua_State *L, int b, int st);
void pf_ckpt_stash(lua_State *L, lua_Integer i);
int pf_ckpt_run(lua_State *L);

/* walk.c, for where.c */
lua_Integer pf_retries(lua_State *L, int idx);
int pf_item_kind(pf_group_body body, int *direct);

/* where.c: names and the where line of errors */
const char *pf_node_name(lua_State *L, int idx);
int pf_walk_msgh(lua_State *L);
int pf_walk_error(lua_State *L, int b, int st, int child, const char *phase,
                  const char *fmt, ...);
int pf_push_record(lua_State *L, pf_task *t, int idx);
void pf_drop_record(lua_State *L);
void pf_push_running_self(lua_State *L);
void pf_adopt_record(lua_State *L, int err, int child, int b, int st,
                     lua_Integer attempt);

#endif

/*
** pocketflow core: the task record, and the declarations of the files
** above the scheduler (group.c, walk.c, runtime.c). The scheduler's own,
** with the wait protocol, are in pf_sched.h; the I/O files' in io/io.h.
*/
#ifndef PF_H
#define PF_H

#include <stdint.h>
#include <lua.h>
#include <lauxlib.h>
#include <uv.h>

#include "list.h"
#include "sleep.h"

#define PF_VERSION "0.1.0"

typedef struct pf_task pf_task;
typedef struct pf_sched pf_sched;
typedef struct pf_group pf_group;

/* Called when a parked task is cancelled; must release what it waits on
** without waking the task. */
typedef void (*pf_cancel_fn)(pf_task *t, void *data);

enum pf_state {
  PF_READY,      /* in the ready list, resumed on the next drain */
  PF_RUNNING,    /* being resumed right now */
  PF_WAITING,    /* parked on a wait; one cancel fn owns the wait */
  PF_DONE,       /* ended: ok, error or cancelled (see 'outcome') */
};

enum pf_outcome { PF_NONE, PF_OK, PF_ERROR, PF_CANCELLED };

struct pf_task {
  pf_sched *S;
  lua_State *co;            /* the task's thread; NULL once ended */
  pf_task *parent;
  pf_list children;         /* the tasks it spawned, newest first */
  pf_list sibling;          /* link in the parent's children */
  pf_list ready;            /* link in the scheduler's ready list */
  pf_list waiters;          /* tasks parked in :wait() on this one */
  pf_list waiter;           /* link while parked in someone's waiters */
  pf_task *waiting_on;      /* the task whose waiters list holds us */
  pf_group *group;          /* group this task is an item of, or NULL:
                               its end is reported to S->child_done */
  pf_cancel_fn cancel;      /* cleanup of the current wait */
  void *cancel_data;
  pf_sleeper sleep;         /* the deadline of the current wait, if any */
  lua_Integer group_idx;
  unsigned wait_seq;        /* bumps on each park: stale resumes are ignored */
  int nresume;              /* values on co's stack for the next resume */
  int anchor;               /* ref in the anchor table while alive */
  unsigned char state, outcome;
  unsigned char keep_results;   /* a handle: results kept for :wait() */
  unsigned char cancel_pending; /* cancelled while running */
  unsigned char timed_out;      /* woken by its deadline, not by the event */
  unsigned char await_setup;    /* pf.await's setup runs (enum in runtime.c) */
  unsigned char started;        /* resumed once: its thread must be yielded */
  unsigned char hijacked;       /* resumed by user code: ends failed */
  unsigned char wake_error;     /* woken with an error to raise (sched.c) */
  unsigned char in_run;         /* of a durable run: PF_UV_RUN holds its record
                                   (checkpoint.c); children inherit it */
  lua_KFunction k;              /* continuation of the current wait */
  lua_KContext kctx;
  int ktop;                     /* stack top when it yielded without k */
};

/* group.c: N tasks over the items of an array, at most maxc at once, the
** first failure cancelling the others, the results in order. The
** starter says what each task runs: a body pushes item i's function and
** its arguments (returning their count), from the group userdata at
** gidx, whose user values from PF_G_CTX on are the starter's. */
typedef int (*pf_group_body)(lua_State *L, int gidx, lua_Integer i);
#define PF_G_CTX 4      /* the starter's user values: PF_G_CTX.. +3 */
void pf_group_new(lua_State *L, int items, lua_Integer maxc,
                  pf_group_body body, int ctx);
int pf_group_run(lua_State *L, int gidx);
int pf_group_start(lua_State *L, int items, lua_Integer maxc,
                   pf_group_body body, int ctx);
void pf_group_push_item(lua_State *L, int gidx, lua_Integer i);
int pf_group_call_item(lua_State *L, int gidx, lua_Integer i);
void pf_group_child_done(pf_group *g, pf_task *child, int ok, lua_State *from);
int pf_group_finish(lua_State *L, int gidx);
void pf_group_cancel(pf_task *owner, void *data);
pf_group_body pf_group_owner(pf_group *g, pf_task **owner, int *ctx);
#define PF_PENDING_MT "pocketflow.pending"
void pf_pending_mt(lua_State *L);
int pf_is_pending(lua_State *L, int idx);
void pf_group_counts(pf_group *g, lua_Integer *total, lua_Integer *done,
                     lua_Integer *running);

/* walk.c: nodes, flows and batches (its functions are registered by
** core.c); where.c: the where line of errors */
int pf_walk_body(lua_State *L);
int pf_noop(lua_State *L);
int pf_reraise(lua_State *L);
int pf_run_node(lua_State *L);
int pf_arm_timeouts(lua_State *L);
void pf_add_where(lua_State *L, pf_task *t, lua_State *co);
/* where.c: for pf.interrupt */
int pf_node_here(lua_State *L);
int pf_mark_no_retry(lua_State *L);
int pf_no_retry(lua_State *L, int idx);

/* node kinds: a node class's __pfkind */
enum pf_kind { PF_K_NODE = 1, PF_K_BATCH, PF_K_PBATCH, PF_K_FLOW,
               PF_K_BFLOW, PF_K_PBFLOW };

/* runtime.c: pf.sleep, await, spawn and the task handle, timeout, gather, now */
void pf_open_runtime(lua_State *L);

/* store.c: the SQLite connection of pf.sqlite, on a writer thread */
void pf_open_store(lua_State *L);

/* checkpoint.c: durable runs, the walk's side */
void pf_open_checkpoint(lua_State *L);
void pf_push_run(lua_State *L, pf_task *t);   /* t's run record, or nil */

/* trace.c: core.span_writer (the JSON lines of trace = file) and
** core.spawn_detached (the OTLP senders) */
void pf_open_trace(lua_State *L);

#endif

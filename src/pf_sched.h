/*
** The scheduler (sched.c): tasks, the ready list, the wait protocol,
** cancel, outcomes, pf.run.
**
** The wait protocol. Every waiting call is written
**
**   pf_task *t = pf_wait_begin(L, "pf.x");    -- the task, yield checked
**   if (t == NULL) return pf_wait_outside(L, l_x, "pf.x");
**   ...start the operation; on error raise (nothing is parked yet)...
**   pf_wait_park(t, x_cancel, req);           -- one cancel fn per wait
**   return pf_wait_yield(L, t, ctx, x_k);     -- x_k(L, status, ctx) goes on
**
** and whatever completes the wait pushes its values on t->co and calls
** pf_wait_wake(t, nvalues); a libuv callback whose values allocate calls
** pf_wait_wake_with(t, push, ud) instead, which makes them under a pcall
** (a memory error is raised in the task, where it waited). A cancelled wait is not woken: its cancel fn
** releases what it waits on (closes handles, frees the request or hands
** it to the close callback) and the task is never resumed. pf_wait_begin
** returns NULL outside a task: pf_wait_outside runs the call as the main
** task of an implicit pf.run, or raises why it cannot. A wait may also
** end at a deadline (pf_wait_deadline, before the park): the cancel fn
** runs and the task wakes with t->timed_out set. pf_wait_on parks until
** another task ends; pf_wait_pass, instead of a park, only lets the
** tasks ready now run first.
*/
#ifndef PF_SCHED_H
#define PF_SCHED_H

#include "pf.h"

#define PF_TASK_MT "pocketflow.task"

/* user values of a task userdata */
enum { PF_UV_THREAD = 1, PF_UV_AUX, PF_UV_TRACE, PF_UV_RUN, PF_UV_COUNT = 4 };

/* calls into the files above, wired by core.c */
typedef void (*pf_child_done_fn)(pf_group *g, pf_task *child, int nres,
                                 lua_State *from);
typedef void (*pf_add_where_fn)(lua_State *L, pf_task *t, lua_State *co);
typedef int (*pf_in_handler_fn)(lua_State *L);

struct pf_sched {
  uv_loop_t *loop;
  uv_idle_t *idle;          /* active while the ready list is not empty */
  lua_State *L;             /* main thread: scratch state for callbacks */
  pf_list ready;            /* tasks to resume, in order */
  pf_sleepq sleeps;         /* tasks with a deadline */
  pf_task *current;         /* the task being resumed, if any */
  size_t live;              /* tasks not ended */
  int running;              /* pf.run loops on the C stack */
  int own_loop;             /* we handed the default loop to luv */
  int anchors, pool, lost;  /* registry refs: live tasks, idle threads,
                               failed handles nobody waited on */
  int pool_n, pool_cap;      /* the pool's array holds pool_cap slots */
  int closed;
  int draining;             /* pf_drain is on the C stack */
  pf_task *closing;         /* task whose thread is being reset */
  pf_task *doing;           /* task whose resume's bookkeeping runs */
  int oom;                  /* a task was ended for want of memory */
  lua_Hook user_hook;       /* the thread's own hook, while coroutine.yield */
  int user_mask, user_count;  /* raises its error (sched.c: foreign yield) */
  pf_child_done_fn child_done;  /* an item of a group ended (group.c) */
  pf_add_where_fn add_where;    /* names the node in a task's error (walk.c) */
  pf_in_handler_fn in_handler;  /* an event handler runs on L (events.c) */
  int events;               /* someone listens: the walk emits (events.h) */
  int env_sinks;            /* PF_TRACE or PF_PROGRESS: every run has sinks */
};

/* the wait protocol */
pf_task *pf_wait_begin(lua_State *L, const char *fname);
int pf_wait_outside(lua_State *L, lua_CFunction self, const char *fname);
void pf_wait_park(pf_task *t, pf_cancel_fn fn, void *data);
int pf_wait_deadline(pf_task *t, double seconds);   /* 0, or -1 no memory */
void pf_wait_on(pf_task *w, pf_task *target);       /* park until it ends */
void pf_wait_pass(pf_task *t);                       /* no wait: ready again */
int pf_wait_yield(lua_State *L, pf_task *t, lua_KContext ctx, lua_KFunction k);
void pf_wait_wake(pf_task *t, int nvalues);
void pf_wait_wake_with(pf_task *t, lua_CFunction push, void *ud);

/* tasks */
pf_sched *pf_sched_get(lua_State *L);
pf_sched *pf_sched_open(lua_State *L);
void pf_open_sched(lua_State *L);     /* pf.run, set_warn */
pf_task *pf_current(lua_State *L);
pf_task *pf_spawn_task(lua_State *L, pf_task *parent, int nargs);
void pf_cancel(pf_task *t);
void pf_push_task(lua_State *L, pf_task *t);
int pf_task_outcome(lua_State *L, pf_task *t, int tidx);
void pf_pack(lua_State *L, lua_State *from, int n);   /* {n = n, ...} */
int pf_unpack(lua_State *L, int idx);
void pf_forget_lost(lua_State *L, pf_sched *S, int tidx);

/* helpers for the files above */
uv_loop_t *pf_loop(lua_State *L);
void pf_handle_internal(uv_handle_t *h);
const char *pf_tostring(lua_State *L, int idx);
void pf_warn(lua_State *L, const char *msg);
int pf_has_traceback(lua_State *L, int idx);

#endif

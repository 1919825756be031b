/*
** The scheduler record, shared by the files that drive tasks.
*/
#ifndef PF_SCHED_H
#define PF_SCHED_H

#include "pf.h"

#define PF_TASK_MT "pocketflow.task"

/* user values of a task userdata */
enum { PF_UV_THREAD = 1, PF_UV_AUX, PF_UV_TRACE, PF_UV_COUNT = 3 };

struct pf_sched {
  uv_loop_t *loop;
  uv_idle_t *idle;          /* active while the ready list is not empty */
  uv_timer_t *timer;        /* armed for the earliest sleeper */
  lua_State *L;             /* main thread: scratch state for callbacks */
  pf_task *rhead, *rtail;   /* ready list */
  pf_task **heap;           /* sleepers, min-heap on (deadline, seq) */
  size_t heap_n, heap_cap;
  uint64_t heap_seq;
  pf_task *fhead, *ftail;   /* sleepers in deadline order, outside the heap */
  pf_task *current;         /* the task being resumed, if any */
  size_t live;              /* tasks not ended */
  int running;              /* pf.run loops on the C stack */
  int own_loop;             /* we handed the default loop to luv */
  int anchors, pool, lost;  /* registry refs: live tasks, idle threads,
                               failed handles nobody waited on */
  int pool_n;
  int closed;
  int draining;             /* pf_drain is on the C stack */
  pf_task *closing;         /* task whose thread is being reset */
  lua_Hook user_hook;       /* the thread's own hook, while coroutine.yield */
  int user_mask, user_count;  /* raises its error (sched.c: foreign yield) */
};

pf_sched *pf_sched_open(lua_State *L);
void pf_drain(pf_sched *S);
void pf_idle_cb(uv_idle_t *h);
int pf_l_run(lua_State *L);
int pf_set_warn(lua_State *L);
int pf_debug_counts(lua_State *L);
void pf_forget_lost(lua_State *L, pf_sched *S, int tidx);

#endif

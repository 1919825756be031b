/*
** pocketflow core: shared declarations of the scheduler, the walk and
** the waits. See sched.c for the task life cycle.
*/
#ifndef PF_H
#define PF_H

#include <stdint.h>
#include <lua.h>
#include <lauxlib.h>
#include <uv.h>

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
  pf_task *parent, *first_child, *next_sib, *prev_sib;
  pf_task *rnext, *rprev;   /* ready list */
  pf_task *waiters;         /* tasks parked in :wait() on this one */
  pf_task *wnext;           /* link while parked in someone's waiters */
  pf_task *waiting_on;      /* the task whose waiters list holds us */
  pf_group *group;          /* group this task is an item of, or NULL */
  pf_cancel_fn cancel;      /* cleanup of the current wait */
  void *cancel_data;
  uint64_t deadline;        /* timer heap key: ns on pf.now()'s clock */
  uint64_t seq;             /* heap tie-break: FIFO among equal deadlines */
  size_t heap_idx;          /* position + 1 in the heap, PF_IN_FIFO, or 0 */
  pf_task *fnext, *fprev;   /* sleep FIFO links (timer.c) */
  lua_Integer group_idx;
  unsigned wait_seq;        /* bumps on each park: stale resumes are ignored */
  int nresume;              /* values on co's stack for the next resume */
  int anchor;               /* ref in the anchor table while alive */
  unsigned char state, outcome;
  unsigned char keep_results;   /* a handle: results kept for :wait() */
  unsigned char cancel_pending; /* cancelled while running */
  unsigned char timed_out;      /* woken by the heap, not by the event */
  unsigned char early;          /* pf.await resumed before it parked */
  unsigned char started;        /* resumed once: its thread must be yielded */
  unsigned char hijacked;       /* resumed by user code: ends failed */
  lua_KFunction k;              /* continuation of the current wait */
  lua_KContext kctx;
  int ktop;                     /* stack top when it yielded without k */
};

/* sched.c */
pf_sched *pf_sched_get(lua_State *L);
pf_task *pf_current(lua_State *L);
pf_task *pf_check_task(lua_State *L, const char *fname);
int pf_outside(lua_State *L);
int pf_run_implicit(lua_State *L, lua_CFunction f, const char *fname);
void pf_park(pf_task *t, pf_cancel_fn fn, void *data);
void pf_wake(pf_task *t, int nvalues);
void pf_make_ready(pf_task *t, int nvalues);
pf_task *pf_spawn_task(lua_State *L, pf_task *parent, int nargs);
void pf_cancel(pf_task *t);
void pf_wait_on(pf_task *w, pf_task *target);
int pf_check_yield(lua_State *L, const char *fname);
int pf_yield(lua_State *L, pf_task *t, lua_KContext ctx, lua_KFunction k);
const char *pf_tostring(lua_State *L, int idx);
void pf_handle_internal(uv_handle_t *h);
int pf_task_outcome(lua_State *L, pf_task *t, int tidx);
void pf_warn(lua_State *L, const char *msg);
int pf_has_traceback(lua_State *L, int idx);
uv_loop_t *pf_loop(lua_State *L);
void pf_push_task(lua_State *L, pf_task *t);

/* timer.c: sleeps on one heap and one FIFO behind one uv_timer */
#define PF_IN_FIFO SIZE_MAX
int pf_heap_push(pf_sched *S, pf_task *t, uint64_t delay_ms);
void pf_heap_remove(pf_sched *S, pf_task *t);
pf_task *pf_sleep_first(pf_sched *S);
void pf_timer_fire(uv_timer_t *h);
uint64_t pf_ms_from_seconds(double s);

/* group.c: N tasks over the items of an array, at most maxc at once, the
** first failure cancelling the others, the results in order. The
** starter says what each task runs: a body pushes item i's function and
** its arguments (returning their count), from the group userdata at
** gidx, whose user values from PF_G_CTX on are the starter's. */
typedef int (*pf_group_body)(lua_State *L, int gidx, lua_Integer i);
#define PF_G_CTX 4      /* the starter's user values: PF_G_CTX.. +2 */
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

/* walk.c: nodes, flows and batches; where.c: the where line of errors */
int pf_noop(lua_State *L);
int pf_reraise(lua_State *L);
int pf_run_node(lua_State *L);
void pf_add_where(lua_State *L, pf_task *t, lua_State *co);

/* node kinds: a node class's __pfkind */
enum pf_kind { PF_K_NODE = 1, PF_K_BATCH, PF_K_PBATCH, PF_K_FLOW,
               PF_K_BFLOW, PF_K_PBFLOW };

/* api.c: the runtime functions */
void pf_open_runtime(lua_State *L);

/* io.c: pf.exec, pf.read_file, pf.write_file, HTTP (exec.c, fs.c, http.c) */
void pf_open_io(lua_State *L);

#endif

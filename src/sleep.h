/*
** The sleep queue: sleepers keyed on (deadline, seq) behind one uv_timer
** armed for the earliest. It knows nothing of tasks: its owner embeds a
** pf_sleeper in each record and is called back, through 'fire', for each
** sleeper that is due, after removing it.
*/
#ifndef PF_SLEEP_H
#define PF_SLEEP_H

#include <stdint.h>
#include <uv.h>

#include "list.h"

#define PF_IN_FIFO SIZE_MAX

typedef struct pf_sleeper {
  uint64_t deadline;        /* ns on uv_hrtime()'s clock (pf.now()'s) */
  uint64_t seq;             /* tie-break: FIFO among equal deadlines */
  size_t heap_idx;          /* position + 1 in the heap, PF_IN_FIFO, or 0 */
  pf_list fifo;             /* link while in the FIFO */
} pf_sleeper;

typedef struct pf_sleepq pf_sleepq;
typedef void (*pf_sleep_fire_fn)(pf_sleepq *q, pf_sleeper *s);

struct pf_sleepq {
  uv_loop_t *loop;
  uv_timer_t *timer;        /* armed for the earliest sleeper */
  pf_sleep_fire_fn fire;    /* the owner's wake-up of a due sleeper */
  void *owner;
  pf_sleeper **heap;        /* min-heap on (deadline, seq) */
  size_t heap_n, heap_cap;
  uint64_t seq;
  pf_list fifo;             /* sleepers in deadline order, outside the heap */
};

/* timer: initialised on loop, not started; its data becomes q */
void pf_sleep_init(pf_sleepq *q, uv_loop_t *loop, uv_timer_t *timer,
                   pf_sleep_fire_fn fire, void *owner);
void pf_sleep_free(pf_sleepq *q);    /* the heap; the timer is the owner's */
int pf_sleep_push(pf_sleepq *q, pf_sleeper *s, uint64_t delay_ms);  /* -1: OOM */
void pf_sleep_remove(pf_sleepq *q, pf_sleeper *s);
pf_sleeper *pf_sleep_first(pf_sleepq *q);
uint64_t pf_ms_from_seconds(double s);

static inline int pf_sleep_queued(const pf_sleeper *s) {
  return s->heap_idx != 0;
}

#endif

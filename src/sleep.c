/*
** Sleeps: parked tasks keyed on (deadline, seq), behind one uv_timer
** armed for the earliest. A timer per wait costs about three times as
** much (NOTES-lua-c.md).
**
** Most sleeps arrive in deadline order (many tasks sleeping the same
** delay), so a sleep that ends no earlier than the last one queued joins
** a FIFO in O(1); the rest go to a binary min-heap. The earliest sleeper
** is the earlier of the two heads.
**
** Deadlines are in nanoseconds of uv_hrtime(), the clock of pf.now():
** the loop's millisecond time is the hrtime truncated (or a coarse clock
** that lags it), so a deadline kept in loop time could end a sleep up to
** a millisecond early as pf.now() sees it.
*/
#include <math.h>
#include <stdlib.h>

#include "pf.h"
#include "pf_sched.h"

static int before(const pf_task *a, const pf_task *b) {
  return a->deadline < b->deadline ||
         (a->deadline == b->deadline && a->seq < b->seq);
}

static void place(pf_sched *S, size_t i, pf_task *t) {
  S->heap[i] = t;
  t->heap_idx = i + 1;
}

static void sift_up(pf_sched *S, size_t i) {
  pf_task *t = S->heap[i];
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (!before(t, S->heap[parent])) break;
    place(S, i, S->heap[parent]);
    i = parent;
  }
  place(S, i, t);
}

static void sift_down(pf_sched *S, size_t i) {
  pf_task *t = S->heap[i];
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= S->heap_n) break;
    if (c + 1 < S->heap_n && before(S->heap[c + 1], S->heap[c])) c++;
    if (!before(S->heap[c], t)) break;
    place(S, i, S->heap[c]);
    i = c;
  }
  place(S, i, t);
}

#define NS_PER_MS 1000000u

/* the earliest sleeper: the earlier of the two heads */
pf_task *pf_sleep_first(pf_sched *S) {
  pf_task *h = S->heap_n ? S->heap[0] : NULL, *f = S->fhead;
  if (h == NULL) return f;
  return f && before(f, h) ? f : h;
}

/* The timer fires once the loop time (whole ms, never ahead of hrtime)
** reaches the first millisecond at or after the earliest deadline. */
static void arm(pf_sched *S) {
  uint64_t now, due;
  pf_task *first = pf_sleep_first(S);
  if (first == NULL) {
    uv_timer_stop(S->timer);
    return;
  }
  uv_update_time(S->loop);  /* the timer counts from the cached time */
  now = uv_now(S->loop);
  due = first->deadline / NS_PER_MS + (first->deadline % NS_PER_MS != 0);
  uv_timer_start(S->timer, pf_timer_fire, due > now ? due - now : 0, 0);
}

/* Whole milliseconds, rounded up so that a sleep never ends early. */
uint64_t pf_ms_from_seconds(double s) {
  double ms = ceil(s * 1000.0);
  if (ms >= 1e15) return (uint64_t)1e15;
  return ms > 0 ? (uint64_t)ms : 0;
}

static void fifo_append(pf_sched *S, pf_task *t) {
  t->fnext = NULL;
  t->fprev = S->ftail;
  if (S->ftail) S->ftail->fnext = t; else S->fhead = t;
  S->ftail = t;
  t->heap_idx = PF_IN_FIFO;
}

static void fifo_unlink(pf_sched *S, pf_task *t) {
  if (t->fprev) t->fprev->fnext = t->fnext; else S->fhead = t->fnext;
  if (t->fnext) t->fnext->fprev = t->fprev; else S->ftail = t->fprev;
  t->fnext = t->fprev = NULL;
  t->heap_idx = 0;
}

static int heap_add(pf_sched *S, pf_task *t) {
  if (S->heap_n == S->heap_cap) {
    size_t cap = S->heap_cap ? 2 * S->heap_cap : 64;
    pf_task **h = (pf_task **)realloc(S->heap, cap * sizeof *h);
    if (h == NULL) return -1;
    S->heap = h;
    S->heap_cap = cap;
  }
  S->heap[S->heap_n++] = t;
  sift_up(S, S->heap_n - 1);
  return 0;
}

static void heap_delete(pf_sched *S, pf_task *t) {
  size_t i = t->heap_idx - 1;
  pf_task *last = S->heap[--S->heap_n];
  t->heap_idx = 0;
  if (i < S->heap_n) {
    place(S, i, last);
    sift_down(S, i);
    sift_up(S, last->heap_idx - 1);
  }
}

int pf_heap_push(pf_sched *S, pf_task *t, uint64_t delay_ms) {
  uint64_t now = uv_hrtime();
  t->deadline = delay_ms < (UINT64_MAX - now) / NS_PER_MS
                    ? now + delay_ms * NS_PER_MS : UINT64_MAX;
  t->seq = S->heap_seq++;
  if (S->ftail == NULL || S->ftail->deadline <= t->deadline)
    fifo_append(S, t);
  else if (heap_add(S, t) < 0)
    return -1;
  if (pf_sleep_first(S) == t) arm(S);
  return 0;
}

void pf_heap_remove(pf_sched *S, pf_task *t) {
  if (t->heap_idx == PF_IN_FIFO) fifo_unlink(S, t);
  else heap_delete(S, t);
  if (S->heap_n == 0 && S->fhead == NULL) uv_timer_stop(S->timer);
}

/* Wakes every sleeper that is due. A task that waited on an event with
** a deadline (pf.timeout) learns from 'timed_out' which came first. */
void pf_timer_fire(uv_timer_t *h) {
  pf_sched *S = (pf_sched *)h->data;
  uint64_t now = uv_hrtime();
  pf_task *t;
  while ((t = pf_sleep_first(S)) != NULL && t->deadline <= now) {
    pf_heap_remove(S, t);
    t->timed_out = 1;
    if (t->cancel) {  /* the event's own cleanup goes with the deadline */
      pf_cancel_fn fn = t->cancel;
      t->cancel = NULL;
      fn(t, t->cancel_data);
    }
    pf_wake(t, 0);
  }
  arm(S);
}

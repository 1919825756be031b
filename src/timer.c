/*
** Sleeps: one binary min-heap of parked tasks keyed on (deadline, seq),
** behind one uv_timer armed for the earliest. A timer per wait costs
** about three times as much (NOTES-lua-c.md).
*/
#include <math.h>
#include <stdlib.h>

#include "pf.h"
#include "sched.h"

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

static void arm(pf_sched *S) {
  uint64_t now, first;
  if (S->heap_n == 0) {
    uv_timer_stop(S->timer);
    return;
  }
  now = uv_now(S->loop);
  first = S->heap[0]->deadline;
  uv_timer_start(S->timer, pf_timer_fire, first > now ? first - now : 0, 0);
}

/* Whole milliseconds, rounded up so that a sleep never ends early. */
uint64_t pf_ms_from_seconds(double s) {
  double ms = ceil(s * 1000.0);
  if (ms >= 1e15) return (uint64_t)1e15;
  return ms > 0 ? (uint64_t)ms : 0;
}

int pf_heap_push(pf_sched *S, pf_task *t, uint64_t delay_ms) {
  int was_first;
  if (S->heap_n == S->heap_cap) {
    size_t cap = S->heap_cap ? 2 * S->heap_cap : 64;
    pf_task **h = (pf_task **)realloc(S->heap, cap * sizeof *h);
    if (h == NULL) return -1;
    S->heap = h;
    S->heap_cap = cap;
  }
  uv_update_time(S->loop);  /* the cached time may be a turn old */
  t->deadline = uv_now(S->loop) + delay_ms;
  t->seq = S->heap_seq++;
  S->heap[S->heap_n++] = t;
  sift_up(S, S->heap_n - 1);
  was_first = S->heap[0] == t;
  if (was_first) arm(S);
  return 0;
}

void pf_heap_remove(pf_sched *S, pf_task *t) {
  size_t i = t->heap_idx - 1;
  pf_task *last = S->heap[--S->heap_n];
  t->heap_idx = 0;
  if (i < S->heap_n) {
    place(S, i, last);
    sift_down(S, i);
    sift_up(S, last->heap_idx - 1);
  }
  if (S->heap_n == 0) uv_timer_stop(S->timer);
}

/* Wakes every sleeper that is due. A task that waited on an event with
** a deadline (pf.timeout) learns from 'timed_out' which came first. */
void pf_timer_fire(uv_timer_t *h) {
  pf_sched *S = (pf_sched *)h->data;
  uint64_t now = uv_now(S->loop);
  while (S->heap_n > 0 && S->heap[0]->deadline <= now) {
    pf_task *t = S->heap[0];
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

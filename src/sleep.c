/*
** The sleep queue: sleepers keyed on (deadline, seq), behind one uv_timer
** armed for the earliest: a uv_timer per sleep costs about three times
** as much.
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

#include "sleep.h"

#define FIFO_HEAD(q) pf_list_entry((q)->fifo.next, pf_sleeper, fifo)
#define FIFO_TAIL(q) pf_list_entry((q)->fifo.prev, pf_sleeper, fifo)

static int before(const pf_sleeper *a, const pf_sleeper *b) {
  return a->deadline < b->deadline ||
         (a->deadline == b->deadline && a->seq < b->seq);
}

static void place(pf_sleepq *q, size_t i, pf_sleeper *t) {
  q->heap[i] = t;
  t->heap_idx = i + 1;
}

static void sift_up(pf_sleepq *q, size_t i) {
  pf_sleeper *t = q->heap[i];
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (!before(t, q->heap[parent])) break;
    place(q, i, q->heap[parent]);
    i = parent;
  }
  place(q, i, t);
}

static void sift_down(pf_sleepq *q, size_t i) {
  pf_sleeper *t = q->heap[i];
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= q->heap_n) break;
    if (c + 1 < q->heap_n && before(q->heap[c + 1], q->heap[c])) c++;
    if (!before(q->heap[c], t)) break;
    place(q, i, q->heap[c]);
    i = c;
  }
  place(q, i, t);
}

#define NS_PER_MS 1000000u

static void timer_cb(uv_timer_t *h);

/* the earliest sleeper: the earlier of the two heads */
pf_sleeper *pf_sleep_first(pf_sleepq *q) {
  pf_sleeper *h = q->heap_n ? q->heap[0] : NULL;
  pf_sleeper *f = pf_list_empty(&q->fifo) ? NULL : FIFO_HEAD(q);
  if (h == NULL) return f;
  return f && before(f, h) ? f : h;
}

/* The timer fires once the loop time (whole ms, never ahead of hrtime)
** reaches the first millisecond at or after the earliest deadline. */
static void arm(pf_sleepq *q) {
  uint64_t now, due;
  pf_sleeper *first = pf_sleep_first(q);
  if (first == NULL) {
    uv_timer_stop(q->timer);
    return;
  }
  uv_update_time(q->loop);  /* the timer counts from the cached time */
  now = uv_now(q->loop);
  due = first->deadline / NS_PER_MS + (first->deadline % NS_PER_MS != 0);
  uv_timer_start(q->timer, timer_cb, due > now ? due - now : 0, 0);
}

/* Whole milliseconds, rounded up so that a sleep never ends early. */
uint64_t pf_ms_from_seconds(double s) {
  double ms = ceil(s * 1000.0);
  if (ms >= 1e15) return (uint64_t)1e15;
  return ms > 0 ? (uint64_t)ms : 0;
}


static int heap_add(pf_sleepq *q, pf_sleeper *t) {
  if (q->heap_n == q->heap_cap) {
    size_t cap = q->heap_cap ? 2 * q->heap_cap : 64;
    pf_sleeper **h = (pf_sleeper **)realloc(q->heap, cap * sizeof *h);
    if (h == NULL) return -1;
    q->heap = h;
    q->heap_cap = cap;
  }
  q->heap[q->heap_n++] = t;
  sift_up(q, q->heap_n - 1);
  return 0;
}

static void heap_delete(pf_sleepq *q, pf_sleeper *t) {
  size_t i = t->heap_idx - 1;
  pf_sleeper *last = q->heap[--q->heap_n];
  t->heap_idx = 0;
  if (i < q->heap_n) {
    place(q, i, last);
    sift_down(q, i);
    sift_up(q, last->heap_idx - 1);
  }
}

int pf_sleep_push(pf_sleepq *q, pf_sleeper *t, uint64_t delay_ms) {
  uint64_t now = uv_hrtime();
  t->deadline = delay_ms < (UINT64_MAX - now) / NS_PER_MS
                    ? now + delay_ms * NS_PER_MS : UINT64_MAX;
  t->seq = q->seq++;
  if (pf_list_empty(&q->fifo) || FIFO_TAIL(q)->deadline <= t->deadline) {
    pf_list_push_tail(&q->fifo, &t->fifo);
    t->heap_idx = PF_IN_FIFO;
  } else if (heap_add(q, t) < 0)
    return -1;
  if (pf_sleep_first(q) == t) arm(q);
  return 0;
}

void pf_sleep_remove(pf_sleepq *q, pf_sleeper *t) {
  if (t->heap_idx == PF_IN_FIFO) {
    pf_list_remove(&t->fifo);
    t->heap_idx = 0;
  } else {
    heap_delete(q, t);
  }
  if (q->heap_n == 0 && pf_list_empty(&q->fifo)) uv_timer_stop(q->timer);
}

/* Hands every sleeper that is due to the owner, earliest first. */
static void timer_cb(uv_timer_t *h) {
  pf_sleepq *q = (pf_sleepq *)h->data;
  uint64_t now = uv_hrtime();
  pf_sleeper *t;
  while ((t = pf_sleep_first(q)) != NULL && t->deadline <= now) {
    pf_sleep_remove(q, t);
    q->fire(q, t);
  }
  arm(q);
}

void pf_sleep_init(pf_sleepq *q, uv_loop_t *loop, uv_timer_t *timer,
                   pf_sleep_fire_fn fire, void *owner) {
  q->loop = loop;
  q->timer = timer;
  q->fire = fire;
  q->owner = owner;
  q->heap = NULL;
  q->heap_n = q->heap_cap = 0;
  q->seq = 0;
  pf_list_init(&q->fifo);
  timer->data = q;
}

void pf_sleep_free(pf_sleepq *q) {
  free(q->heap);
  q->heap = NULL;
  q->heap_n = q->heap_cap = 0;
}

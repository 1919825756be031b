/*
** The sleep queue of sleep.c (a FIFO for in-order deadlines, a heap for
** the rest) on a real loop: ordering on (deadline, seq), removal from the
** middle of either, and the wakes the timer delivers to the owner's fire
** callback, which records their order here.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/sleep.h"
#include "check.h"

#define N 200

static pf_sleeper tasks[N];
static int woken[N], nwoken;

static void fire(pf_sleepq *q, pf_sleeper *t) {
  (void)q;
  woken[nwoken++] = (int)(t - tasks);
}

static int before(const pf_sleeper *a, const pf_sleeper *b) {
  return a->deadline < b->deadline ||
         (a->deadline == b->deadline && a->seq < b->seq);
}

/* every heap slot knows its index and no child comes before its parent;
** the FIFO is linked both ways and in order. Returns the sleeper count. */
static size_t check_sleepers(pf_sleepq *S) {
  size_t i, n = 0;
  pf_list *l, *prev = &S->fifo;
  for (i = 0; i < S->heap_n; i++) {
    CHECK(S->heap[i]->heap_idx == i + 1);
    if (i > 0) CHECK(!before(S->heap[i], S->heap[(i - 1) / 2]));
  }
  for (l = S->fifo.next; l != &S->fifo; prev = l, l = l->next, n++) {
    pf_sleeper *f = pf_list_entry(l, pf_sleeper, fifo);
    CHECK(f->heap_idx == PF_IN_FIFO && l->prev == prev);
    if (prev != &S->fifo)
      CHECK(before(pf_list_entry(prev, pf_sleeper, fifo), f));
  }
  CHECK(S->fifo.prev == prev);
  return S->heap_n + n;
}

static void setup(pf_sleepq *S, uv_loop_t *loop, uv_timer_t *timer) {
  memset(tasks, 0, sizeof tasks);
  nwoken = 0;
  uv_loop_init(loop);
  uv_timer_init(loop, timer);
  pf_sleep_init(S, loop, timer, fire, NULL);
}

static void teardown(pf_sleepq *S, uv_loop_t *loop, uv_timer_t *timer) {
  uv_close((uv_handle_t *)timer, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  CHECK(uv_loop_close(loop) == 0);
  pf_sleep_free(S);
}

/* Pushes N sleepers with delay(i), removes every third, then pops the
** earliest until none is left: the order must be by deadline, then seq. */
static void check_order(uint64_t (*delay)(int), int want_fifo, int want_heap) {
  pf_sleepq S;
  uv_loop_t loop;
  uv_timer_t timer;
  int i, removed = 0;
  pf_sleeper *t, *last = NULL;
  setup(&S, &loop, &timer);
  for (i = 0; i < N; i++) {
    CHECK(pf_sleep_push(&S, &tasks[i], delay(i)) == 0);
    CHECK(check_sleepers(&S) == (size_t)i + 1);
  }
  CHECK(want_fifo ? !pf_list_empty(&S.fifo)
                  : pf_list_empty(&S.fifo) || S.fifo.next == S.fifo.prev);
  CHECK(want_heap ? S.heap_n > 0 : S.heap_n == 0);
  for (i = 0; i < N; i += 3) {  /* from anywhere */
    pf_sleep_remove(&S, &tasks[i]);
    CHECK(tasks[i].heap_idx == 0);
    removed++;
    CHECK(check_sleepers(&S) == (size_t)(N - removed));
  }
  while ((t = pf_sleep_first(&S)) != NULL) {
    CHECK((t - tasks) % 3 != 0);
    if (last) CHECK(before(last, t));
    last = t;
    pf_sleep_remove(&S, t);
    check_sleepers(&S);
  }
  CHECK(!uv_is_active((uv_handle_t *)&timer));  /* stopped when empty */
  teardown(&S, &loop, &timer);
}

static uint64_t scattered(int i) { return (uint64_t)((i * 7919) % 13); }
static uint64_t same(int i) { (void)i; return 10; }
static uint64_t rising(int i) { return (uint64_t)i / 10; }
static uint64_t falling(int i) { return (uint64_t)(N - i); }

static void test_order_and_removal(void) {
  check_order(scattered, 1, 1);
  check_order(same, 1, 0);      /* equal delays: all in the FIFO */
  check_order(rising, 1, 0);
  check_order(falling, 0, 1);   /* each earlier than the last: the heap */
}

/* The timer wakes sleepers in deadline order, never before their time. */
static void test_timer_wakes(void) {
  static const uint64_t delays[] = {30, 10, 20, 10, 5, 40};
  pf_sleepq S;
  uv_loop_t loop;
  uv_timer_t timer;
  uint64_t start = uv_hrtime();
  setup(&S, &loop, &timer);
  for (int i = 0; i < 6; i++) pf_sleep_push(&S, &tasks[i], delays[i]);
  pf_sleep_remove(&S, &tasks[5]);  /* cancelled: never woken */
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(nwoken == 5);
  CHECK(woken[0] == 4 && woken[1] == 1 && woken[2] == 3 &&
        woken[3] == 2 && woken[4] == 0);
  CHECK(uv_hrtime() - start >= 30 * 1000000ull);
  CHECK(tasks[0].heap_idx == 0 && tasks[5].heap_idx == 0);
  teardown(&S, &loop, &timer);
}

int main(void) {
  test_order_and_removal();
  test_timer_wakes();
  CHECK(pf_ms_from_seconds(0.0011) == 2);  /* rounded up, never early */
  CHECK(pf_ms_from_seconds(0) == 0);
  if (failures) {
    fprintf(stderr, "heap_test: %d failure(s)\n", failures);
    return 1;
  }
  puts("heap_test: ok");
  return 0;
}

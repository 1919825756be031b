/*
** pf_retry_delay (src/attempts.c): the formula, max_wait and the ceiling,
** the bounds of jitter, and inputs that would overflow or be NaN.
*/
#include <math.h>
#include <stdio.h>

#include "../../src/attempts.h"

static int failures = 0;

#define NONE (-1.0)

static void near(double got, double want, const char *what) {
  if (!(fabs(got - want) <= 1e-9 * (fabs(want) + 1))) {
    fprintf(stderr, "attempts_test: %s: got %.17g, want %.17g\n", what, got, want);
    failures++;
  }
}

static void sane(double d, double cap, const char *what) {
  if (!(d >= 0 && d <= cap && isfinite(d))) {
    fprintf(stderr, "attempts_test: %s: %.17g is not in [0, %g]\n", what, d, cap);
    failures++;
  }
}

static void formula(void) {
  int n;
  near(pf_retry_delay(0.5, 1, NONE, 0, 1, 0.7), 0.5, "fixed wait");
  near(pf_retry_delay(0.5, 1, NONE, 0, 9, 0.7), 0.5, "fixed wait, attempt 9");
  near(pf_retry_delay(0, 2, NONE, 0.5, 5, 0.5), 0, "wait 0");
  for (n = 1; n <= 10; n++)
    near(pf_retry_delay(0.5, 2, NONE, 0, n, 0), 0.5 * pow(2, n - 1), "backoff 2");
  near(pf_retry_delay(0.1, 3, NONE, 0, 4, 0), 2.7, "backoff 3, n 4");
  near(pf_retry_delay(1, 1.5, NONE, 0, 3, 0), 2.25, "backoff 1.5");
}

static void caps(void) {
  near(pf_retry_delay(0.5, 2, 30, 0, 6, 0), 16, "under max_wait");
  near(pf_retry_delay(0.5, 2, 30, 0, 7, 0), 30, "at max_wait");
  near(pf_retry_delay(0.5, 2, 30, 0, 1000, 0), 30, "far past max_wait");
  near(pf_retry_delay(5, 1, 2, 0, 1, 0), 2, "max_wait under wait");
  near(pf_retry_delay(5, 2, 0, 0, 3, 0), 0, "max_wait 0");
  near(pf_retry_delay(2e9, 1, NONE, 0, 1, 0), PF_RETRY_DELAY_MAX, "ceiling");
  near(pf_retry_delay(1, 2, 5e9, 0, 60, 0), PF_RETRY_DELAY_MAX, "ceiling under max_wait");
}

/* every u in [0, 1) keeps d * (1 - j) < result <= d, and j = 0 is exact */
static void jitter(void) {
  int i;
  for (i = 0; i < 1000; i++) {
    double u = i / 1000.0, d = pf_retry_delay(1, 2, 30, 0.5, 4, u);
    near(d, 8 * (1 - 0.5 * u), "jitter 0.5");
    if (!(d > 4 && d <= 8)) { fprintf(stderr, "jitter bound: %g\n", d); failures++; }
    near(pf_retry_delay(1, 2, 30, 0, 4, u), 8, "jitter 0");
    d = pf_retry_delay(1, 2, 30, 1, 10, u);
    if (!(d > 0 && d <= 30)) { fprintf(stderr, "jitter 1 bound: %g\n", d); failures++; }
  }
  near(pf_retry_delay(1, 2, 30, 1, 10, 0), 30, "u 0: no shortening");
}

/* overflow and out-of-range inputs: a finite number in [0, ceiling] */
static void hostile(void) {
  const double inf = HUGE_VAL, nan = NAN;
  const double waits[] = { 0, 1e-300, 0.5, 1e300, inf, nan, -1, -inf };
  const double backoffs[] = { 1, 2, 1e300, inf, nan, 0, -2, 0.5 };
  const double maxes[] = { NONE, 0, 30, 1e300, inf, nan, -inf };
  const double jitters[] = { 0, 0.5, 1, 2, -1, nan, inf };
  const double us[] = { 0, 0.999999, 1, 7, -3, nan, inf };
  const int ns[] = { 1, 2, 64, 1100, 1 << 30, 0, -5 };
  size_t a, b, c, d, e, f;
#define N(x) (sizeof (x) / sizeof (x)[0])
  for (a = 0; a < N(waits); a++) for (b = 0; b < N(backoffs); b++)
  for (c = 0; c < N(maxes); c++) for (d = 0; d < N(jitters); d++)
  for (e = 0; e < N(us); e++) for (f = 0; f < N(ns); f++) {
    double cap = maxes[c] >= 0 && maxes[c] < PF_RETRY_DELAY_MAX ? maxes[c] : PF_RETRY_DELAY_MAX;
    sane(pf_retry_delay(waits[a], backoffs[b], maxes[c], jitters[d], ns[f], us[e]),
         cap, "hostile inputs");
  }
#undef N
  near(pf_retry_delay(1e300, 1e300, NONE, 0, 3, 0), PF_RETRY_DELAY_MAX, "1e300^2");
  near(pf_retry_delay(1e-300, 10, NONE, 0, 2, 0), 1e-299, "tiny wait");
  near(pf_retry_delay(nan, 2, NONE, 0, 3, 0), 0, "NaN wait: 0");
  near(pf_retry_delay(1, nan, NONE, 0, 3, 0), 1, "NaN backoff: 1");
  near(pf_retry_delay(1, 2, nan, 0, 3, 0), 4, "NaN max_wait: none");
  near(pf_retry_delay(1, 2, NONE, nan, 3, 0.5), 4, "NaN jitter: 0");
  near(pf_retry_delay(1, 2, NONE, 2, 3, 0.5), 2, "jitter 2 taken as 1");
}

/* which wait is taken, and when the deadline forbids it */
static void next_wait(void) {
  const double inf = HUGE_VAL, nan = NAN;
  near(pf_next_wait(2, NONE, NONE), 2, "computed");
  near(pf_next_wait(2, 7, NONE), 7, "asked wins");
  near(pf_next_wait(2, 0, NONE), 0, "asked 0");
  near(pf_next_wait(2, nan, NONE), 2, "asked NaN: none");
  near(pf_next_wait(2, inf, NONE), PF_RETRY_DELAY_MAX, "asked inf: ceiling");
  near(pf_next_wait(nan, NONE, NONE), 0, "computed NaN");
  near(pf_next_wait(2, NONE, 10), 2, "within the deadline");
  near(pf_next_wait(2, 12, 10), -1, "asked past the deadline");
  near(pf_next_wait(10, NONE, 10), -1, "ends at the deadline");
  near(pf_next_wait(0, NONE, 0), -1, "no time left");
  near(pf_next_wait(2, NONE, nan), 2, "NaN left: no deadline");
  near(pf_next_wait(2, inf, 1e12), PF_RETRY_DELAY_MAX, "inf asked, far deadline");
}

int main(void) {
  formula();
  next_wait();
  caps();
  jitter();
  hostile();
  if (failures) {
    fprintf(stderr, "attempts_test: %d failures\n", failures);
    return 1;
  }
  printf("attempts_test: ok\n");
  return 0;
}

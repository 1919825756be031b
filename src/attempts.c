/*
** The wait before attempt n+1, after n failed attempts:
**   d = min(max_wait, wait * backoff^(n-1)), then d * (1 - jitter * u)
** with u uniform in [0, 1) from the caller. Jitter only shortens a wait,
** so max_wait is a hard bound. Options are checked at construction
** (lua/pocketflow/init.lua); here every input is made safe anyway, so
** the result is always a number in [0, PF_RETRY_DELAY_MAX].
*/
#include <math.h>

#include "attempts.h"

/* x, or lo when x is NaN or below lo, or hi when above hi */
static double clamp(double x, double lo, double hi) {
  if (!(x >= lo)) return lo;
  return x > hi ? hi : x;
}

double pf_retry_delay(double wait, double backoff, double max_wait,
                      double jitter, int n_failed, double u) {
  double cap = PF_RETRY_DELAY_MAX, d;
  if (max_wait >= 0 && max_wait < cap) cap = max_wait;   /* < 0, NaN: none */
  wait = clamp(wait, 0, HUGE_VAL);
  backoff = clamp(backoff, 1, HUGE_VAL);
  if (wait == 0) return 0;           /* and not 0 * inf = NaN below */
  d = wait;
  if (n_failed > 1 && backoff > 1)   /* pow gives inf on overflow */
    d = wait * pow(backoff, (double)n_failed - 1);
  if (!(d <= cap)) d = cap;
  jitter = clamp(jitter, 0, 1);
  u = clamp(u, 0, 1);
  return d * (1 - jitter * u);
}

double pf_next_wait(double computed, double asked, double left) {
  double w = asked >= 0 ? asked : clamp(computed, 0, HUGE_VAL);
  if (w > PF_RETRY_DELAY_MAX) w = PF_RETRY_DELAY_MAX;
  if (left >= 0 && w >= left) return -1;
  return w;
}

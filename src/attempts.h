/*
** The wait between two exec attempts (API section 6): pure arithmetic,
** no Lua, no scheduler, so the walk calls it per failed attempt for
** nothing and tests/attempts_test.c checks it alone.
*/
#ifndef PF_ATTEMPTS_H
#define PF_ATTEMPTS_H

/* No computed wait is longer than this (seconds, about 31.7 years): a
** backoff that overflows, or an infinite wait, gives this, never inf or
** NaN, and it fits the timer heap's nanoseconds (uint64) with room. */
#define PF_RETRY_DELAY_MAX 1e9

double pf_retry_delay(double wait, double backoff, double max_wait,
                      double jitter, int n_failed, double u);

/* The wait to take before the next attempt: 'asked' when it is a number
** >= 0 (retry_on's number, else a table error's retry_after; < 0 or NaN:
** none), else 'computed' (pf_retry_delay), at most PF_RETRY_DELAY_MAX;
** -1 when it would end at or past the deadline, 'left' seconds away
** (< 0 or NaN: no deadline): then the last error goes to the fallback. */
double pf_next_wait(double computed, double asked, double left);

#endif

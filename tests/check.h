/*
** CHECK(c) of the C tests: reports a failed check and counts it.
*/
#ifndef PF_CHECK_H
#define PF_CHECK_H

#include <stdio.h>

static int failures;

#define CHECK(c) do { if (!(c)) { \
  fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
  failures++; } } while (0)

#endif

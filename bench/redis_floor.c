/*
** The floor of bench/redis.lua: the same traffic driven by plain hiredis
** from C, pipelined. N commands, SET k<i> v<i> then GET k<i> alternately
** over the keys of 'window' clients: batches of 'window' commands written
** at once, then their replies read (as 'window' tasks sharing a
** connection do, one command each per loop turn). Prints
** "RESULT time=<seconds>". Built for the bench only, not part of the
** library.
**
** usage: redis_floor PORT N WINDOW
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* command i of the run: task (i % window) does SET then GET of its key */
static void append(redisContext *c, long i, long window) {
  long task = i % window, step = i / window;
  char key[32], val[32];
  snprintf(key, sizeof key, "k%ld", task);
  snprintf(val, sizeof val, "v%ld", step / 2);
  if (step % 2 == 0) redisAppendCommand(c, "SET %s %s", key, val);
  else redisAppendCommand(c, "GET %s", key);
}

static int check(redisReply *r) {
  int ok = r != NULL && (r->type == REDIS_REPLY_STATUS || r->type == REDIS_REPLY_STRING);
  freeReplyObject(r);
  return ok;
}

int main(int argc, char **argv) {
  redisContext *c;
  long n, window, sent = 0, got = 0;
  double t0;
  if (argc != 4) {
    fprintf(stderr, "usage: redis_floor PORT N WINDOW\n");
    return 2;
  }
  n = atol(argv[2]);
  window = atol(argv[3]);
  c = redisConnect("127.0.0.1", atoi(argv[1]));
  if (c == NULL || c->err) {
    fprintf(stderr, "redis_floor: cannot connect: %s\n", c ? c->errstr : "?");
    return 1;
  }
  t0 = now();
  while (got < n) {   /* a batch of 'window' commands, then their replies */
    while (sent < n && sent - got < window) append(c, sent++, window);
    while (got < sent) {
      void *reply;
      if (redisGetReply(c, &reply) != REDIS_OK || !check((redisReply *)reply)) {
        fprintf(stderr, "redis_floor: bad reply: %s\n", c->errstr);
        return 1;
      }
      got++;
    }
  }
  printf("RESULT time=%.6f\n", now() - t0);
  redisFree(c);
  return 0;
}

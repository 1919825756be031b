/*
** The floor of bench/queue.lua: the Redis Streams traffic of a batch of
** N no-op items through K workers, driven by plain hiredis from C,
** pipelined, with no engine in between.
**
** The parent is the coordinator: it keeps at most WINDOW items
** outstanding, adding them with pipelined XADDs to the item stream, and
** reads the results back from the result stream with XREAD BLOCK. K
** forked children are the workers: each reads batches of up to COUNT
** entries with XREADGROUP on its own connection, and for a batch writes
** one result per item with XADD and acks the batch with one XACK, all
** pipelined, then reads the replies. Payloads are PAYLOAD bytes. Every
** item must come back exactly once. Prints "RESULT time=<seconds>"
** (from the first XADD to the last result). Built for the bench only.
**
** usage: queue_floor PORT N K COUNT WINDOW PAYLOAD
*/
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#define STREAM "pf-floor:items"
#define RESULTS "pf-floor:results"
#define GROUP "workers"

typedef struct {
  int port;
  long n, k, count, window;
  char *payload;
  size_t plen;
} params;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, redisContext *c) {
  fprintf(stderr, "queue_floor: %s: %s\n", what, c && c->err ? c->errstr : "bad reply");
  exit(1);
}

static redisContext *connect_to(int port) {
  redisContext *c = redisConnect("127.0.0.1", port);
  if (c == NULL || c->err) die("cannot connect", c);
  return c;
}

/* reads one pipelined reply; fails on an error reply */
static redisReply *get(redisContext *c, const char *what) {
  void *r;
  if (redisGetReply(c, &r) != REDIS_OK) die(what, c);
  if (((redisReply *)r)->type == REDIS_REPLY_ERROR) {
    fprintf(stderr, "queue_floor: %s: %s\n", what, ((redisReply *)r)->str);
    exit(1);
  }
  return (redisReply *)r;
}

static void run(redisContext *c, const char *what, const char *fmt, ...) {
  va_list ap;
  redisReply *r;
  va_start(ap, fmt);
  if (redisvAppendCommand(c, fmt, ap) != REDIS_OK) die(what, c);
  va_end(ap);
  r = get(c, what);
  freeReplyObject(r);
}

/* ------------------------------------------------------------ workers */

/* one batch read: results and the ack appended, then their replies read */
static int work_batch(redisContext *c, redisReply *entries) {
  size_t i, n = entries->elements;
  const char **argv = malloc((n + 3) * sizeof *argv);
  size_t *lens = malloc((n + 3) * sizeof *lens);
  if (argv == NULL || lens == NULL) die("out of memory", NULL);
  argv[0] = "XACK"; argv[1] = STREAM; argv[2] = GROUP;
  for (i = 0; i < 3; i++) lens[i] = strlen(argv[i]);
  for (i = 0; i < n; i++) {
    redisReply *e = entries->element[i], *f = e->element[1];
    /* fields: i <index> p <payload>; the result echoes both */
    redisAppendCommand(c, "XADD " RESULTS " * i %b r %b", f->element[1]->str,
                       f->element[1]->len, f->element[3]->str, f->element[3]->len);
    argv[3 + i] = e->element[0]->str;
    lens[3 + i] = e->element[0]->len;
  }
  redisAppendCommandArgv(c, (int)n + 3, argv, lens);
  free(argv);
  free(lens);
  for (i = 0; i <= n; i++) freeReplyObject(get(c, "worker XADD/XACK"));
  return (int)n;
}

static void worker(const params *p, long id, pid_t parent) {
  redisContext *c = connect_to(p->port);
  char name[32];
  snprintf(name, sizeof name, "c%ld", id);
  /* ends when the coordinator kills it, or is gone */
  while (getppid() == parent) {
    redisReply *r = redisCommand(c, "XREADGROUP GROUP " GROUP " %s COUNT %ld BLOCK 1000 "
                                 "STREAMS " STREAM " >", name, p->count);
    if (r == NULL || r->type == REDIS_REPLY_ERROR) die("XREADGROUP", c);
    if (r->type == REDIS_REPLY_ARRAY) work_batch(c, r->element[0]->element[1]);
    freeReplyObject(r);
  }
  exit(1);
}

/* ------------------------------------------------------------ coordinator */

static void add_items(redisContext *c, const params *p, long from, long to) {
  long i;
  for (i = from; i < to; i++) {
    char idx[24];
    int len = snprintf(idx, sizeof idx, "%ld", i + 1);
    redisAppendCommand(c, "XADD " STREAM " * i %b p %b", idx, (size_t)len, p->payload, p->plen);
  }
  for (i = from; i < to; i++) freeReplyObject(get(c, "XADD"));
}

/* reads the results that came; marks each item seen; returns the count */
static long read_results(redisContext *c, char *last, size_t lastsz, char *seen, long n) {
  redisReply *r = redisCommand(c, "XREAD COUNT 10000 BLOCK 0 STREAMS " RESULTS " %s", last);
  redisReply *es;
  long i, got = 0;
  if (r == NULL || r->type != REDIS_REPLY_ARRAY) die("XREAD", c);
  es = r->element[0]->element[1];
  for (i = 0; i < (long)es->elements; i++) {
    redisReply *e = es->element[i];
    long idx = atol(e->element[1]->element[1]->str);
    if (idx < 1 || idx > n || seen[idx - 1]) die("a result twice or out of range", NULL);
    seen[idx - 1] = 1;
    got++;
    if (i + 1 == (long)es->elements) snprintf(last, lastsz, "%s", e->element[0]->str);
  }
  freeReplyObject(r);
  return got;
}

static double coordinate(const params *p) {
  redisContext *add = connect_to(p->port), *res = connect_to(p->port);
  char *seen = calloc((size_t)p->n, 1), last[64] = "0-0";
  long added = 0, done = 0;
  double t0 = now();
  if (seen == NULL) die("out of memory", NULL);
  while (done < p->n) {
    long to = added + (p->window - (added - done));
    if (to > p->n) to = p->n;
    if (to > added) add_items(add, p, added, to);
    added = to;
    done += read_results(res, last, sizeof last, seen, p->n);
  }
  t0 = now() - t0;
  free(seen);
  redisFree(add);
  redisFree(res);
  return t0;
}

static void parse(params *p, int argc, char **argv) {
  if (argc != 7) {
    fprintf(stderr, "usage: queue_floor PORT N K COUNT WINDOW PAYLOAD\n");
    exit(2);
  }
  p->port = atoi(argv[1]);
  p->n = atol(argv[2]);
  p->k = atol(argv[3]);
  p->count = atol(argv[4]);
  p->window = atol(argv[5]);
  p->plen = (size_t)atol(argv[6]);
  if (p->n < 1 || p->k < 1 || p->count < 1 || p->window < 1) {
    fprintf(stderr, "queue_floor: N, K, COUNT and WINDOW must be positive\n");
    exit(2);
  }
  p->payload = malloc(p->plen + 1);
  if (p->payload == NULL) die("out of memory", NULL);
  memset(p->payload, 'x', p->plen);
}

int main(int argc, char **argv) {
  params p;
  redisContext *c;
  pid_t *kids;
  long i;
  double t;
  parse(&p, argc, argv);
  c = connect_to(p.port);
  run(c, "DEL", "DEL " STREAM " " RESULTS);
  run(c, "XGROUP CREATE", "XGROUP CREATE " STREAM " " GROUP " $ MKSTREAM");
  kids = malloc((size_t)p.k * sizeof *kids);
  if (kids == NULL) die("out of memory", NULL);
  for (i = 0; i < p.k; i++) {
    kids[i] = fork();
    if (kids[i] < 0) die("fork", NULL);
    if (kids[i] == 0) worker(&p, i + 1, getppid());
  }
  t = coordinate(&p);
  for (i = 0; i < p.k; i++) kill(kids[i], SIGKILL);
  for (i = 0; i < p.k; i++) waitpid(kids[i], NULL, 0);
  run(c, "DEL", "DEL " STREAM " " RESULTS);
  printf("RESULT time=%.6f\n", t);
  free(kids);
  free(p.payload);
  redisFree(c);
  return 0;
}

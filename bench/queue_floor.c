/*
** The floor of bench/queue.lua: the Redis traffic of a batch of N no-op
** items through K workers, as pf.queue and pf.work send it (the same
** keys, fields and sizes), driven by plain hiredis from C, pipelined,
** without Lua scripts and without any engine in between.
**
** The parent is the coordinator: it keeps at most WINDOW items
** outstanding, adding them to the item stream with pipelined XADDs
** (fields b i p h v t, as the queue's entries), and takes the results
** from the batch's result list with BLPOP, then LPOP of up to 1000. K
** forked children are the workers: each reads up to COUNT entries with
** XREADGROUP on its own connection; for them it pushes one result each
** with RPUSH, then acks and deletes the batch's entries with one XACK and
** one XDEL, all pipelined, then reads the replies. An item is ITEM bytes
** (field v), a result RESULT bytes (its index, padded), the node path
** PATH bytes. Every item must come back exactly once. Prints
** "RESULT time=<seconds> cpu_coord=<s> cpu_workers=<s>": the time from
** the first XADD to the last result, the CPU time of the coordinator in
** it and of the workers (their whole life: connect, reads that waited).
** Built for the bench only, not part of the library.
**
** usage: queue_floor PORT N K COUNT WINDOW ITEM RESULT PATH
*/
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#define STREAM "pf:{floor}:items"
#define BATCH "1.0abcdef0"   /* a batch id as the queue makes them */
#define RESULTS "pf:{floor}:r:" BATCH
#define GROUP "pf"
#define HASH "0123456789abcdef"

typedef struct {
  int port;
  long n, k, count, window;
  size_t item, result, path;
  char *pad;             /* the largest of the three sizes, of 'x' */
} params;

/* CPU seconds (user + system) of this process, or of its reaped children */
static double cpu(int who) {
  struct rusage u;
  getrusage(who, &u);
  return (double)(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         (double)(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

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

/* XACK STREAM GROUP ids... or XDEL STREAM ids... for the entries */
static void append_ids(redisContext *c, int ack, redisReply *entries) {
  size_t i, n = entries->elements, h = ack ? 3 : 2;
  const char **argv = malloc((n + 3) * sizeof *argv);
  size_t *lens = malloc((n + 3) * sizeof *lens);
  if (argv == NULL || lens == NULL) die("out of memory", NULL);
  argv[0] = ack ? "XACK" : "XDEL"; argv[1] = STREAM; argv[2] = GROUP;
  for (i = 0; i < h; i++) lens[i] = strlen(argv[i]);
  for (i = 0; i < n; i++) {
    argv[h + i] = entries->element[i]->element[0]->str;
    lens[h + i] = entries->element[i]->element[0]->len;
  }
  redisAppendCommandArgv(c, (int)(n + h), argv, lens);
  free(argv);
  free(lens);
}

/* a batch read: its results pushed, its entries acked and deleted */
static void work_batch(redisContext *c, const params *p, redisReply *entries) {
  size_t i, n = entries->elements;
  for (i = 0; i < n; i++) {
    redisReply *f = entries->element[i]->element[1];   /* b . i . p . h . v . t . */
    char res[64];
    int len = snprintf(res, sizeof res, "%s:", f->element[3]->str);
    redisAppendCommand(c, "RPUSH " RESULTS " %b%b", res, (size_t)len, p->pad,
                       p->result > (size_t)len ? p->result - (size_t)len : 0);
  }
  append_ids(c, 1, entries);
  append_ids(c, 0, entries);
  for (i = 0; i < n + 2; i++) freeReplyObject(get(c, "worker RPUSH/XACK/XDEL"));
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
    if (r->type == REDIS_REPLY_ARRAY) work_batch(c, p, r->element[0]->element[1]);
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
    redisAppendCommand(c, "XADD " STREAM " * b " BATCH " i %b p %b h " HASH " v %b t 0", idx,
                       (size_t)len, p->pad, p->path, p->pad, p->item);
  }
  for (i = from; i < to; i++) freeReplyObject(get(c, "XADD"));
}

static long take(redisReply *blob, char *seen, long n) {
  long idx = blob->type == REDIS_REPLY_STRING ? atol(blob->str) : 0;
  if (idx < 1 || idx > n || seen[idx - 1])
    die("a result twice or out of range", NULL);
  seen[idx - 1] = 1;
  return 1;
}

/* the results that came (BLPOP for one, then LPOP for more); their count */
static long read_results(redisContext *c, char *seen, long n) {
  redisReply *r = redisCommand(c, "BLPOP " RESULTS " 1");
  long i, got = 0;
  if (r == NULL || r->type == REDIS_REPLY_ERROR) die("BLPOP", c);
  if (r->type != REDIS_REPLY_ARRAY) {   /* nothing for 1 s: a worker died? */
    freeReplyObject(r);
    if (waitpid(-1, NULL, WNOHANG) != 0) die("a worker ended", NULL);
    return 0;
  }
  got = take(r->element[1], seen, n);
  freeReplyObject(r);
  r = redisCommand(c, "LPOP " RESULTS " 1000");
  if (r == NULL || r->type == REDIS_REPLY_ERROR) die("LPOP", c);
  for (i = 0; r->type == REDIS_REPLY_ARRAY && i < (long)r->elements; i++)
    got += take(r->element[i], seen, n);
  freeReplyObject(r);
  return got;
}

static double coordinate(const params *p) {
  redisContext *add = connect_to(p->port), *res = connect_to(p->port);
  char *seen = calloc((size_t)p->n, 1);
  long added = 0, done = 0;
  double t0 = now();
  if (seen == NULL) die("out of memory", NULL);
  while (done < p->n) {
    long to = added + (p->window - (added - done));
    if (to > p->n) to = p->n;
    if (to > added) add_items(add, p, added, to);
    added = to;
    done += read_results(res, seen, p->n);
  }
  t0 = now() - t0;
  free(seen);
  redisFree(add);
  redisFree(res);
  return t0;
}

static void parse(params *p, int argc, char **argv) {
  size_t most;
  if (argc != 9) {
    fprintf(stderr, "usage: queue_floor PORT N K COUNT WINDOW ITEM RESULT PATH\n");
    exit(2);
  }
  p->port = atoi(argv[1]);
  p->n = atol(argv[2]);
  p->k = atol(argv[3]);
  p->count = atol(argv[4]);
  p->window = atol(argv[5]);
  p->item = (size_t)atol(argv[6]);
  p->result = (size_t)atol(argv[7]);
  p->path = (size_t)atol(argv[8]);
  if (p->n < 1 || p->k < 1 || p->count < 1 || p->window < 1) {
    fprintf(stderr, "queue_floor: N, K, COUNT and WINDOW must be positive\n");
    exit(2);
  }
  most = p->item > p->result ? p->item : p->result;
  most = most > p->path ? most : p->path;
  p->pad = malloc(most + 1);
  if (p->pad == NULL) die("out of memory", NULL);
  memset(p->pad, 'x', most);
}

int main(int argc, char **argv) {
  params p;
  redisContext *c;
  pid_t *kids;
  long i;
  double t, c0;
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
  c0 = cpu(RUSAGE_SELF);
  t = coordinate(&p);
  c0 = cpu(RUSAGE_SELF) - c0;
  for (i = 0; i < p.k; i++) kill(kids[i], SIGKILL);
  for (i = 0; i < p.k; i++) waitpid(kids[i], NULL, 0);
  run(c, "DEL", "DEL " STREAM " " RESULTS);
  printf("RESULT time=%.6f cpu_coord=%.6f cpu_workers=%.6f\n", t, c0, cpu(RUSAGE_CHILDREN));
  free(kids);
  free(p.pad);
  redisFree(c);
  return 0;
}

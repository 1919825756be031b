/*
** pf.redis: a Redis client on the scheduler's loop. One TCP connection
** per client (a uv_tcp); commands are written as they come, without
** waiting for earlier replies (automatic pipelining), and replies are
** matched to commands in FIFO order. hiredis' redisReader parses the
** replies into C trees (reply objects of our own); the waiting task
** turns its tree into Lua values when it resumes, so no callback of
** libuv allocates Lua memory.
**
** A call's wait record is a box: a userdata on the task's stack. The box
** and the connection's FIFO entry point at each other; cancelling the
** task unlinks them, and the reply, when it comes, is freed unread: the
** FIFO stays in order. The connection (rconn) is malloc'd and outlives
** the client userdata until its handle has closed.
*/
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/read.h>

#include "io.h"

#define CLIENT_MT "pocketflow.redis.client"
#define BOX_MT "pocketflow.redis.box"
#define MAX_BULK ((size_t)512 << 20)   /* Redis's proto-max-bulk-len */
#define READ_CHUNK 65536
#define OUT_KEEP ((size_t)1 << 20)     /* larger idle buffers are freed */

/* reply types: hiredis' REDIS_REPLY_* */
typedef struct rnode {
  int type;
  long long integer;
  char *str;
  size_t len;
  struct rnode **elem;
  size_t n, cap;
} rnode;

typedef struct rentry rentry;

/* the wait of one call, on the task's stack */
typedef struct rbox {
  rentry *entry;     /* NULL once answered or dropped */
  rnode *reply;
  char *err;         /* a failure's message (malloc'd) */
  int failed;        /* failed, and err may be NULL: out of memory */
} rbox;

/* what a reply answers */
enum { E_USER, E_CONNECT, E_HANDSHAKE };

struct rentry {
  rentry *next;
  pf_task *t;        /* NULL: nobody waits any more, the reply is dropped */
  rbox *box;
  int kind;
  const char *what;  /* E_HANDSHAKE: the command, for messages */
};

enum { C_RESOLVING, C_CONNECTING, C_HANDSHAKE, C_READY, C_DEAD };

typedef struct rclient rclient;

typedef struct rconn {
  uv_tcp_t tcp;
  uv_prepare_t prep;   /* writes what the tasks of one loop turn queued */
  uv_connect_t creq;
  uv_getaddrinfo_t gai;
  uv_write_t wreq;
  rclient *client;   /* NULL once the client let go of it */
  redisReader *reader;
  char *shown;       /* the URL for messages, password masked */
  pf_buf out;        /* commands not written yet */
  pf_buf wbuf;       /* the write in flight */
  size_t woff, wchunk;
  rentry *head, *tail;
  size_t pending;    /* entries in the FIFO */
  int state, hs_left;
  unsigned char writing, gai_active;
  unsigned char live;      /* tcp and prep usable (inited, not closing) */
  unsigned char handles;   /* handles whose close callback has not run */
  char rbuf[READ_CHUNK];
} rconn;

struct rclient {
  rconn *conn;
  uv_loop_t *loop;
  char *host, *user, *password, *shown;
  int port;
  long long db;
  int closed;
};

/* ------------------------------------------------------------ replies */

static void node_free(void *p) {
  rnode *n = (rnode *)p;
  if (n == NULL) return;
  for (size_t i = 0; i < n->n; i++) node_free(n->elem[i]);
  free(n->elem);
  free(n->str);
  free(n);
}

/* links a new node to its parent array; NULL (out of memory) frees it */
static void *node_attach(const redisReadTask *task, rnode *n) {
  rnode *parent;
  if (n == NULL || task->parent == NULL) return n;
  parent = (rnode *)task->parent->obj;
  if (parent->n == parent->cap) {
    size_t cap = parent->cap ? parent->cap * 2 : 16;
    rnode **e = (rnode **)realloc(parent->elem, cap * sizeof *e);
    if (e == NULL) { node_free(n); return NULL; }
    parent->elem = e;
    parent->cap = cap;
  }
  parent->elem[parent->n++] = n;
  return n;
}

static rnode *node_new(int type) {
  rnode *n = (rnode *)calloc(1, sizeof *n);
  if (n != NULL) n->type = type;
  return n;
}

static void *make_string(const redisReadTask *task, char *s, size_t len) {
  rnode *n = node_new(task->type);
  if (n == NULL) return NULL;
  n->str = (char *)malloc(len + 1);
  if (n->str == NULL) { free(n); return NULL; }
  memcpy(n->str, s, len);
  n->str[len] = '\0';
  n->len = len;
  return node_attach(task, n);
}

/* the elements are not allocated up front: a declared count costs
** nothing until the elements come */
static void *make_array(const redisReadTask *task, int elements) {
  rnode *n = node_new(REDIS_REPLY_ARRAY);
  if (n != NULL) n->integer = elements;
  return node_attach(task, n);
}

static void *make_integer(const redisReadTask *task, long long v) {
  rnode *n = node_new(REDIS_REPLY_INTEGER);
  if (n != NULL) n->integer = v;
  return node_attach(task, n);
}

static void *make_nil(const redisReadTask *task) {
  return node_attach(task, node_new(REDIS_REPLY_NIL));
}

/* never written: hiredis takes a non-const pointer */
static redisReplyObjectFunctions REPLY_FNS = {
  make_string, make_array, make_integer, make_nil, node_free
};

/* ---------------------------------------------------------- the FIFO */

static void update_ref(rconn *c) {
  if (!c->live) return;
  /* an idle connection does not keep pf.run waiting */
  if (c->pending > 0) uv_ref((uv_handle_t *)&c->tcp);
  else uv_unref((uv_handle_t *)&c->tcp);
}

static rentry *push_entry(rconn *c, int kind, pf_task *t, rbox *box) {
  rentry *e = (rentry *)calloc(1, sizeof *e);
  if (e == NULL) return NULL;
  e->kind = kind;
  e->t = t;
  e->box = box;
  if (box != NULL) box->entry = e;
  if (c->tail) c->tail->next = e; else c->head = e;
  c->tail = e;
  c->pending++;
  update_ref(c);
  return e;
}

static rentry *pop_entry(rconn *c) {
  rentry *e = c->head;
  if (e == NULL) return NULL;
  c->head = e->next;
  if (c->head == NULL) c->tail = NULL;
  c->pending--;
  update_ref(c);
  return e;
}

/* Hands a reply (or a failure: msg) to the entry's task and frees the
** entry; a dropped entry's reply is freed. */
static void answer(rentry *e, rnode *reply, const char *msg) {
  rbox *b = e->box;
  if (b != NULL && e->t != NULL) {
    b->entry = NULL;
    if (msg != NULL) {
      b->failed = 1;
      b->err = strdup(msg);
    } else {
      b->reply = reply;
      reply = NULL;
    }
    pf_wait_wake(e->t, 0);
  }
  node_free(reply);
  free(e);
}

/* --------------------------------------------------------- life cycle */

static void conn_free(rconn *c) {
  if (c->reader) redisReaderFree(c->reader);
  pf_buf_free(&c->out);
  pf_buf_free(&c->wbuf);
  free(c->shown);
  free(c);
}

static void maybe_free(rconn *c) {
  if (c->state == C_DEAD && c->handles == 0 && !c->gai_active) conn_free(c);
}

static void on_close(uv_handle_t *h) {
  rconn *c = (rconn *)h->data;
  c->handles--;
  maybe_free(c);
}

/* Fails every command waiting with msg, and closes the connection; the
** client opens a new one on its next call. */
static void conn_fail(rconn *c, const char *msg) {
  rentry *e;
  if (c->state == C_DEAD) return;
  c->state = C_DEAD;
  if (c->client != NULL && c->client->conn == c) c->client->conn = NULL;
  c->client = NULL;
  while ((e = pop_entry(c)) != NULL) answer(e, NULL, msg);
  if (c->gai_active) uv_cancel((uv_req_t *)&c->gai);
  if (c->live) {
    c->live = 0;
    uv_close((uv_handle_t *)&c->tcp, on_close);
    uv_close((uv_handle_t *)&c->prep, on_close);
  }
  maybe_free(c);
}

static void conn_failf(rconn *c, const char *fmt, const char *reason) {
  char msg[512];
  if (c->state < C_READY)
    snprintf(msg, sizeof msg, "pf.redis: cannot connect to %s: %s", c->shown,
             reason);
  else
    snprintf(msg, sizeof msg, fmt, c->shown, reason);
  conn_fail(c, msg);
}

static void conn_lost(rconn *c, const char *reason) {
  conn_failf(c, "pf.redis: connection to %s lost: %s", reason);
}

/* ------------------------------------------------------------ writing */

static void write_next(rconn *c);

static void on_write(uv_write_t *w, int status) {
  rconn *c = (rconn *)w->data;
  if (c->state == C_DEAD) return;
  if (status < 0) {
    conn_lost(c, uv_strerror(status));
    return;
  }
  c->woff += c->wchunk;
  write_next(c);
}

/* Writes what is left of wbuf; once it is all out, takes the commands
** that came meanwhile, if the connection is ready for them. */
static void write_next(rconn *c) {
  uv_buf_t b;
  int err;
  if (c->woff == c->wbuf.len) {
    c->wbuf.len = c->woff = 0;
    if (c->wbuf.cap > OUT_KEEP) pf_buf_free(&c->wbuf);
    if (c->state != C_READY || c->out.len == 0) {
      c->writing = 0;
      return;
    }
    pf_buf tmp = c->wbuf;
    c->wbuf = c->out;
    c->out = tmp;
  }
  c->writing = 1;
  c->wchunk = pf_io_chunk(c->wbuf.len - c->woff);
  b = uv_buf_init(c->wbuf.data + c->woff, (unsigned)c->wchunk);
  err = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write);
  if (err < 0) {
    c->writing = 0;
    conn_lost(c, uv_strerror(err));
  }
}

static void flush(rconn *c) {
  if (c->state == C_READY && !c->writing && c->out.len > 0) write_next(c);
}

static void on_prepare(uv_prepare_t *h) {
  rconn *c = (rconn *)h->data;
  uv_prepare_stop(h);
  flush(c);
}

/* The commands a loop turn's tasks queue go out in one write, just
** before the loop polls. */
static void want_flush(rconn *c) {
  if (c->state == C_READY && !c->writing && c->out.len > 0)
    uv_prepare_start(&c->prep, on_prepare);
}

/* ------------------------------------------------------------ reading */

/* The reader waits for a whole bulk string before it says anything: a
** declared length over MAX_BULK is refused as soon as it is seen. */
static const char *over_limit(redisReader *r) {
  size_t left = r->len - r->pos;
  if (r->ridx >= 0 && r->rstack[r->ridx].type == REDIS_REPLY_STRING) {
    const char *p = r->buf + r->pos, *end = r->buf + r->len;
    unsigned long long n = 0;
    while (p < end && isdigit((unsigned char)*p) && n <= MAX_BULK)
      n = n * 10 + (unsigned)(*p++ - '0');
    if (n > MAX_BULK) return "a bulk string over 512 MiB";
  }
  if (left > MAX_BULK + 1024) return "a reply line over 512 MiB";
  return NULL;
}

static void handshake_reply(rconn *c, const char *what, rnode *reply) {
  if (reply->type == REDIS_REPLY_ERROR) {
    char reason[400];
    snprintf(reason, sizeof reason, "%s: %s", what, reply->str);
    conn_lost(c, reason);
    return;
  }
  if (--c->hs_left == 0) {
    c->state = C_READY;
    flush(c);
  }
}

/* Matches each complete reply to the oldest command. */
static void take_replies(rconn *c) {
  void *obj;
  while (c->state != C_DEAD) {
    rentry *e;
    if (redisReaderGetReply(c->reader, &obj) != REDIS_OK) {
      conn_failf(c, "pf.redis: protocol error from %s: %s",
                 c->reader->errstr);
      return;
    }
    if (obj == NULL) {
      const char *why = over_limit(c->reader);
      if (why) conn_failf(c, "pf.redis: protocol error from %s: %s", why);
      return;
    }
    if ((e = pop_entry(c)) == NULL) {
      node_free(obj);
      conn_failf(c, "pf.redis: protocol error from %s: %s",
                 "a reply to no command (pub/sub and MONITOR are not "
                 "supported)");
      return;
    }
    if (e->kind == E_HANDSHAKE) {
      const char *what = e->what;
      free(e);
      handshake_reply(c, what, (rnode *)obj);
      node_free(obj);
    } else {
      answer(e, (rnode *)obj, NULL);
    }
  }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  rconn *c = (rconn *)h->data;
  (void)hint;
  /* the reader copies what it is fed: one buffer serves every read */
  *buf = uv_buf_init(c->rbuf, sizeof c->rbuf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  rconn *c = (rconn *)s->data;
  if (nread > 0 && c->state != C_DEAD) {
    if (redisReaderFeed(c->reader, buf->base, (size_t)nread) != REDIS_OK)
      conn_lost(c, "out of memory");
    else
      take_replies(c);
  } else if (nread < 0 && c->state != C_DEAD) {
    conn_lost(c, nread == UV_EOF ? "the server closed the connection"
              : nread == UV_ENOBUFS ? "out of memory" : uv_strerror((int)nread));
  }
  (void)buf;
}

/* ---------------------------------------------------------- connecting */

static void on_connect(uv_connect_t *req, int status) {
  rconn *c = (rconn *)req->data;
  int err;
  if (c->state == C_DEAD) return;
  if (status < 0) {
    conn_lost(c, uv_strerror(status));
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  err = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  if (err < 0) {
    conn_lost(c, uv_strerror(err));
    return;
  }
  /* the handshake (in wbuf) goes alone: commands wait for its replies */
  c->state = c->hs_left > 0 ? C_HANDSHAKE : C_READY;
  if (c->hs_left > 0) write_next(c);
  else flush(c);
}

static void start_connect(rconn *c, const struct sockaddr *addr) {
  int err = uv_tcp_connect(&c->creq, &c->tcp, addr, on_connect);
  c->state = C_CONNECTING;
  if (err < 0) conn_lost(c, uv_strerror(err));
}

static void on_resolved(uv_getaddrinfo_t *req, int status,
                        struct addrinfo *res) {
  rconn *c = (rconn *)req->data;
  struct addrinfo *a, *pick = NULL;
  c->gai_active = 0;
  if (c->state == C_DEAD) {
    if (res) uv_freeaddrinfo(res);
    maybe_free(c);
    return;
  }
  if (status < 0) {
    conn_lost(c, uv_strerror(status));
    return;
  }
  for (a = res; a != NULL && pick == NULL; a = a->ai_next)
    if (a->ai_family == AF_INET) pick = a;
  if (pick == NULL) pick = res;
  start_connect(c, pick->ai_addr);
  uv_freeaddrinfo(res);
}

/* ------------------------------------------------------ the connection */

/* one command in RESP: *n\r\n then $len\r\narg\r\n per argument */
static size_t command_size(int argc, const size_t *lens) {
  size_t need = 16;
  for (int i = 0; i < argc; i++) need += lens[i] + 24;
  return need;
}

/* appends prefix, n in decimal and CRLF (room was reserved) */
static void put_header(pf_buf *b, char prefix, size_t n) {
  char tmp[24], *p = tmp + sizeof tmp;
  *--p = '\n';
  *--p = '\r';
  do { *--p = (char)('0' + n % 10); n /= 10; } while (n > 0);
  *--p = prefix;
  memcpy(b->data + b->len, p, (size_t)(tmp + sizeof tmp - p));
  b->len += (size_t)(tmp + sizeof tmp - p);
}

/* Queues one command and its FIFO entry, or raises (nothing queued). */
static void queue_command(lua_State *L, rconn *c, pf_buf *b, int kind,
                          pf_task *t, rbox *box, int argc,
                          const char *const *argv, const size_t *lens) {
  rentry *e;
  if (pf_buf_reserve(b, command_size(argc, lens)) < 0
      || (e = push_entry(c, kind, t, box)) == NULL)
    luaL_error(L, "pf.redis: out of memory");
  if (kind == E_HANDSHAKE) e->what = argv[0];   /* a literal */
  put_header(b, '*', (size_t)argc);
  for (int i = 0; i < argc; i++) {
    put_header(b, '$', lens[i]);
    memcpy(b->data + b->len, argv[i], lens[i]);
    b->len += lens[i];
    b->data[b->len++] = '\r';
    b->data[b->len++] = '\n';
  }
}

/* AUTH and SELECT, in wbuf: written alone once connected */
static void queue_handshake(lua_State *L, rconn *c, rclient *cl) {
  const char *argv[3];
  size_t lens[3];
  char db[24];
  int n = 0;
  if (cl->password != NULL) {
    argv[n] = "AUTH"; lens[n++] = 4;
    if (cl->user != NULL) { argv[n] = cl->user; lens[n] = strlen(cl->user); n++; }
    argv[n] = cl->password; lens[n] = strlen(cl->password); n++;
    queue_command(L, c, &c->wbuf, E_HANDSHAKE, NULL, NULL, n, argv, lens);
    c->hs_left++;
  }
  if (cl->db != 0) {
    snprintf(db, sizeof db, "%lld", cl->db);
    argv[0] = "SELECT"; lens[0] = 6;
    argv[1] = db; lens[1] = strlen(db);
    queue_command(L, c, &c->wbuf, E_HANDSHAKE, NULL, NULL, 2, argv, lens);
    c->hs_left++;
  }
}

/* Starts resolving or connecting; a failure now raises. */
static void conn_start(lua_State *L, rconn *c, rclient *cl) {
  struct sockaddr_storage sa;
  char port[8], msg[512];
  int err;
  snprintf(port, sizeof port, "%d", cl->port);
  if (uv_ip4_addr(cl->host, cl->port, (struct sockaddr_in *)&sa) == 0
      || uv_ip6_addr(cl->host, cl->port, (struct sockaddr_in6 *)&sa) == 0) {
    c->state = C_CONNECTING;
    err = uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)&sa, on_connect);
  } else {
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    err = uv_getaddrinfo(cl->loop, &c->gai, on_resolved, cl->host, port, &hints);
    c->gai_active = err == 0;
  }
  if (err == 0) return;
  snprintf(msg, sizeof msg, "pf.redis: cannot connect to %s: %s", c->shown,
           uv_strerror(err));
  conn_fail(c, msg);
  lua_pushstring(L, msg);
  lua_error(L);
}

/* The client's connection, opened now if it has none. */
static rconn *get_conn(lua_State *L, rclient *cl) {
  rconn *c;
  if (cl->conn != NULL) return cl->conn;
  c = (rconn *)calloc(1, sizeof *c);
  if (c == NULL) luaL_error(L, "pf.redis: out of memory");
  c->shown = strdup(cl->shown);
  c->reader = redisReaderCreateWithFunctions(&REPLY_FNS);
  if (c->shown == NULL || c->reader == NULL
      || uv_tcp_init(cl->loop, &c->tcp) < 0) {
    conn_free(c);
    luaL_error(L, "pf.redis: out of memory");
  }
  uv_prepare_init(cl->loop, &c->prep);
  uv_unref((uv_handle_t *)&c->prep);
  c->live = 1;
  c->handles = 2;
  pf_handle_internal((uv_handle_t *)&c->tcp);
  pf_handle_internal((uv_handle_t *)&c->prep);
  c->prep.data = c->tcp.data = c->creq.data = c->gai.data = c->wreq.data = c;
  c->state = C_RESOLVING;
  c->client = cl;
  cl->conn = c;
  update_ref(c);
  queue_handshake(L, c, cl);
  conn_start(L, c, cl);
  return c;
}

/* ---------------------------------------------------------------- boxes */

static int box_gc(lua_State *L) {
  rbox *b = (rbox *)lua_touserdata(L, 1);
  if (b->entry != NULL) {
    b->entry->t = NULL;
    b->entry->box = NULL;
    b->entry = NULL;
  }
  node_free(b->reply);
  b->reply = NULL;
  free(b->err);
  b->err = NULL;
  return 0;
}

static rbox *new_box(lua_State *L) {
  rbox *b = (rbox *)lua_newuserdatauv(L, sizeof *b, 0);
  memset(b, 0, sizeof *b);
  if (luaL_newmetatable(L, BOX_MT)) {
    lua_pushcfunction(L, box_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return b;
}

/* The task was cancelled: its command stays in the FIFO, and its reply
** will be read and dropped. */
static void call_cancel(pf_task *t, void *data) {
  rbox *b = (rbox *)data;
  (void)t;
  if (b->entry != NULL) {
    b->entry->t = NULL;
    b->entry->box = NULL;
    b->entry = NULL;
  }
}

/* raises a failure the box holds */
static int box_raise(lua_State *L, rbox *b) {
  if (b->err == NULL) return luaL_error(L, "pf.redis: out of memory");
  lua_pushstring(L, b->err);
  free(b->err);
  b->err = NULL;
  return lua_error(L);
}

/* ------------------------------------------------------------- replies */

/* Redis nil is nil at the top and pf.redis.null (a NULL light userdata,
** as pf.json.null) inside arrays; an error inside an array (EXEC) is a
** table { err = message }. */
static void push_reply(lua_State *L, rnode *n, int top) {
  luaL_checkstack(L, 4, "pf.redis: reply nested too deep");
  switch (n->type) {
    case REDIS_REPLY_INTEGER: lua_pushinteger(L, (lua_Integer)n->integer); break;
    case REDIS_REPLY_NIL:
      if (top) lua_pushnil(L); else lua_pushlightuserdata(L, NULL);
      break;
    case REDIS_REPLY_ERROR:
      lua_createtable(L, 0, 1);
      lua_pushlstring(L, n->str, n->len);
      lua_setfield(L, -2, "err");
      break;
    case REDIS_REPLY_ARRAY:
      lua_createtable(L, n->n > INT_MAX ? INT_MAX : (int)n->n, 0);
      for (size_t i = 0; i < n->n; i++) {
        push_reply(L, n->elem[i], 0);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
      }
      break;
    default: lua_pushlstring(L, n->str, n->len); break;
  }
}

/* the command's name, upper case, for messages */
static const char *command_name(lua_State *L, int idx) {
  size_t len, i;
  const char *s = lua_tolstring(L, idx, &len);
  char name[65];
  for (i = 0; i < len && i < 64; i++) {
    unsigned char ch = (unsigned char)s[i];
    name[i] = isprint(ch) ? (char)toupper(ch) : '?';
  }
  name[i] = '\0';
  return lua_pushstring(L, name);
}

/* ------------------------------------------------------------- clients */

static rclient *check_client(lua_State *L, const char *fname) {
  rclient *cl = (rclient *)luaL_testudata(L, 1, CLIENT_MT);
  if (cl == NULL)
    luaL_error(L, "%s: expected a pf.redis client as self (got %s); use "
                  "r:%s(...)", fname, luaL_typename(L, 1), fname + 2);
  return cl;
}

/* Lets go of the connection: waiting calls fail with msg, or, with msg
** NULL (the client is collected while the state closes), are only
** unlinked. */
static void client_drop(rclient *cl, const char *msg) {
  rconn *c = cl->conn;
  if (c == NULL) return;
  cl->conn = NULL;
  c->client = NULL;
  if (msg == NULL) {
    for (rentry *e = c->head; e != NULL; e = e->next) {
      if (e->box != NULL) e->box->entry = NULL;
      e->t = NULL;
      e->box = NULL;
    }
    msg = "pf.redis: the client was collected";
  }
  conn_fail(c, msg);
}

static int client_gc(lua_State *L) {
  rclient *cl = (rclient *)lua_touserdata(L, 1);
  client_drop(cl, NULL);
  free(cl->host);
  free(cl->user);
  free(cl->password);
  free(cl->shown);
  cl->host = cl->user = cl->password = cl->shown = NULL;
  cl->closed = 1;
  return 0;
}

/* r:close(): calls still waiting fail; later calls raise */
static int l_close(lua_State *L) {
  rclient *cl = check_client(L, "r:close");
  cl->closed = 1;
  client_drop(cl, "pf.redis: the client was closed");
  return 0;
}

static int l_tostring(lua_State *L) {
  rclient *cl = (rclient *)luaL_checkudata(L, 1, CLIENT_MT);
  lua_pushfstring(L, "pf.redis client (%s%s)", cl->shown ? cl->shown : "?",
                  cl->closed ? ", closed" : "");
  return 1;
}

/* argv and lengths of r:call's arguments 2..n, numbers turned to text */
static void check_args(lua_State *L, int argc, const char ***argv,
                       size_t **lens) {
  void *mem;
  if (argc < 1 || lua_type(L, 2) != LUA_TSTRING)
    luaL_error(L, "r:call: the command must be a string (got %s)",
               luaL_typename(L, 2));
  for (int i = 3; i <= argc + 1; i++) {
    if (lua_type(L, i) == LUA_TNUMBER) {
      if (lua_isinteger(L, i)) {
        lua_pushfstring(L, "%I", (LUAI_UACINT)lua_tointeger(L, i));
      } else {
        char num[40];
        snprintf(num, sizeof num, "%.17g", (double)lua_tonumber(L, i));
        lua_pushstring(L, num);
      }
      lua_replace(L, i);
    } else if (lua_type(L, i) != LUA_TSTRING) {
      luaL_error(L, "r:call: argument %d must be a string or a number "
                    "(got %s)", i - 1, luaL_typename(L, i));
    }
  }
  mem = lua_newuserdatauv(L, (size_t)argc * (sizeof(char *) + sizeof(size_t)), 0);
  *lens = (size_t *)mem;
  *argv = (const char **)(*lens + argc);
  for (int i = 0; i < argc; i++) (*argv)[i] = lua_tolstring(L, i + 2, &(*lens)[i]);
}

static int call_k(lua_State *L, int status, lua_KContext ctx) {
  rbox *b = (rbox *)lua_touserdata(L, (int)ctx);
  (void)status;
  if (b->failed) return box_raise(L, b);
  if (b->reply->type == REDIS_REPLY_ERROR) {
    command_name(L, 2);
    return luaL_error(L, "pf.redis: %s: %s", lua_tostring(L, -1), b->reply->str);
  }
  push_reply(L, b->reply, 1);
  node_free(b->reply);
  b->reply = NULL;
  return 1;
}

/* r:call(command, ...) */
static int l_call(lua_State *L) {
  rclient *cl = check_client(L, "r:call");
  int argc = lua_gettop(L) - 1, bidx;
  const char **argv;
  size_t *lens;
  pf_task *t = pf_wait_begin(L, "r:call");
  rconn *c;
  rbox *b;
  if (t == NULL) return pf_wait_outside(L, l_call, "r:call");
  check_args(L, argc, &argv, &lens);
  if (cl->closed) return luaL_error(L, "pf.redis: the client is closed");
  c = get_conn(L, cl);
  b = new_box(L);
  bidx = lua_gettop(L);
  queue_command(L, c, &c->out, E_USER, t, b, argc, argv, lens);
  pf_wait_park(t, call_cancel, b);
  want_flush(c);
  return pf_wait_yield(L, t, (lua_KContext)bidx, call_k);
}

/* ------------------------------------------------------------- the URL */

static int hexval(int ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  ch = tolower(ch);
  return ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

/* a malloc'd, %-decoded copy of s[0..len); NULL if it is not valid */
static char *decode(const char *s, size_t len, int *bad) {
  char *out = (char *)malloc(len + 1), *o = out;
  if (out == NULL) return NULL;
  for (size_t i = 0; i < len; i++) {
    if (s[i] == '%' && i + 2 < len && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
      *o++ = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
      i += 2;
    } else {
      *o++ = s[i];
    }
  }
  *o = '\0';
  if ((size_t)(o - out) != strlen(out)) *bad = 1;   /* %00 */
  return out;
}

/* a non-negative decimal in s[0..len), at most max; -1 if it is not */
static long long decimal(const char *s, size_t len, long long max) {
  long long v = 0;
  if (len == 0) return -1;
  for (size_t i = 0; i < len; i++) {
    if (!isdigit((unsigned char)s[i])) return -1;
    v = v * 10 + (s[i] - '0');
    if (v > max) return -1;
  }
  return v;
}

/* the URL with the password replaced by "***" */
static void mask_url(lua_State *L, const char *url, const char *at) {
  const char *colon = at ? memchr(url + 8, ':', (size_t)(at - url - 8)) : NULL;
  luaL_Buffer b;
  if (colon == NULL) {
    lua_pushstring(L, url);
    return;
  }
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, url, (size_t)(colon + 1 - url));
  luaL_addstring(&b, "***");
  luaL_addstring(&b, at);
  luaL_pushresult(&b);
}

static int bad_url(lua_State *L, rclient *cl, const char *why) {
  return luaL_error(L, "pf.redis.connect: bad URL \"%s\": %s; expected "
                       "redis://[[user]:password@]host[:port][/db]",
                    cl->shown, why);
}

/* redis://[[user]:password@]host[:port][/db] into cl */
static void parse_url(lua_State *L, rclient *cl, const char *url) {
  const char *auth, *at, *host, *hend, *p, *slash;
  int bad = 0;
  size_t len = strlen(url);
  auth = url + 8;
  slash = strncmp(url, "redis://", 8) == 0 ? strchr(auth, '/') : NULL;
  if (slash == NULL) slash = url + len;
  at = NULL;
  if (strncmp(url, "redis://", 8) == 0)
    for (p = auth; p < slash; p++) if (*p == '@') at = p;
  mask_url(L, url, at);
  cl->shown = strdup(lua_tostring(L, -1));
  if (cl->shown == NULL) luaL_error(L, "pf.redis: out of memory");
  if (strncmp(url, "redis://", 8) != 0) bad_url(L, cl, "the scheme must be redis://");
  host = auth;
  if (at != NULL) {
    const char *colon = memchr(auth, ':', (size_t)(at - auth));
    if (colon == NULL) bad_url(L, cl, "a user needs a password (user:password@)");
    if (colon > auth) cl->user = decode(auth, (size_t)(colon - auth), &bad);
    cl->password = decode(colon + 1, (size_t)(at - colon - 1), &bad);
    if (cl->password == NULL || (colon > auth && cl->user == NULL))
      luaL_error(L, "pf.redis: out of memory");
    if (bad) bad_url(L, cl, "the user or password holds %00");
    host = at + 1;
  }
  if (*host == '[') {
    hend = memchr(host, ']', (size_t)(slash - host));
    if (hend == NULL) bad_url(L, cl, "an IPv6 address lacks its ']'");
    cl->host = strndup(host + 1, (size_t)(hend - host - 1));
    p = hend + 1;
  } else {
    for (hend = host; hend < slash && *hend != ':'; hend++) {}
    cl->host = strndup(host, (size_t)(hend - host));
    p = hend;
  }
  if (cl->host == NULL) luaL_error(L, "pf.redis: out of memory");
  if (cl->host[0] == '\0') bad_url(L, cl, "the host is missing");
  cl->port = 6379;
  if (p < slash && *p != ':') bad_url(L, cl, "unexpected text after the host");
  if (p < slash && (cl->port = (int)decimal(p + 1, (size_t)(slash - p - 1), 65535)) < 1)
    bad_url(L, cl, "the port must be an integer from 1 to 65535");
  cl->db = 0;
  if (*slash == '/' && slash[1] != '\0'
      && (cl->db = decimal(slash + 1, strlen(slash + 1), INT_MAX)) < 0)
    bad_url(L, cl, "the database must be a non-negative integer");
}

/* ------------------------------------------------------------- connect */

static int connect_k(lua_State *L, int status, lua_KContext ctx) {
  rbox *b = (rbox *)lua_touserdata(L, (int)ctx);
  rclient *cl = (rclient *)lua_touserdata(L, 2);
  (void)status;
  if (b->failed) return box_raise(L, b);
  if (b->reply->type == REDIS_REPLY_ERROR)
    return luaL_error(L, "pf.redis: cannot connect to %s: PING: %s",
                      cl->shown, b->reply->str);
  lua_settop(L, 2);
  return 1;
}

static rclient *new_client(lua_State *L) {
  static const luaL_Reg methods[] = {
    { "call", l_call }, { "close", l_close }, { NULL, NULL }
  };
  rclient *cl = (rclient *)lua_newuserdatauv(L, sizeof *cl, 0);
  memset(cl, 0, sizeof *cl);
  if (luaL_newmetatable(L, CLIENT_MT)) {
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, client_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, l_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_setmetatable(L, -2);
  cl->loop = pf_loop(L);
  return cl;
}

/* pf.redis.connect(url): a client, once the server answered a PING */
static int l_connect(lua_State *L) {
  static const char *const ping[1] = { "PING" };
  static const size_t ping_len[1] = { 4 };
  pf_task *t = pf_wait_begin(L, "pf.redis.connect");
  rclient *cl;
  rconn *c;
  rbox *b;
  if (t == NULL) return pf_wait_outside(L, l_connect, "pf.redis.connect");
  if (lua_type(L, 1) != LUA_TSTRING)
    return luaL_error(L, "pf.redis.connect: the URL must be a string (got %s)",
                      luaL_typename(L, 1));
  lua_settop(L, 1);
  cl = new_client(L);
  parse_url(L, cl, lua_tostring(L, 1));
  lua_settop(L, 2);
  c = get_conn(L, cl);
  b = new_box(L);
  queue_command(L, c, &c->out, E_CONNECT, t, b, 1, ping, ping_len);
  pf_wait_park(t, call_cancel, b);
  want_flush(c);
  return pf_wait_yield(L, t, 3, connect_k);
}

void pf_open_redis(lua_State *L) {
  lua_pushcfunction(L, l_connect);
  lua_setfield(L, -2, "redis_connect");
}

/*
** The SQLite connection of a durable-run store (pf.sqlite). SQLite runs
** only on the store's own writer thread: the loop thread queues requests
** (each a list of statements run in one transaction), the thread runs
** them in order and hands the finished ones back through a uv_async,
** whose callback wakes the waiting task. A request owns copies of its
** SQL parameters and results, so a cancelled task goes at once: its
** request still runs and is freed by the callback, result dropped.
** lua/pocketflow/store.lua builds the store's methods on this.
*/
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "embed.h"
#include "pf.h"
#include "pf_sched.h"

#define STORE_MT "pocketflow.sqlite"
#define STMT_CACHE 16

/* One SQL value: a parameter or a result cell. */
typedef struct sval {
  int type;                    /* SQLITE_NULL, _INTEGER, _FLOAT, _TEXT, _BLOB */
  sqlite3_int64 i;
  double n;
  char *p;                     /* text or blob bytes, owned */
  size_t len;
} sval;

typedef struct sstmt {
  char *sql;                   /* owned */
  char *must;                  /* error if it changes no row; owned or NULL */
  sval *par;
  int npar;
  sval *cells;                 /* results, row-major */
  int ncol;
  size_t nrow, cap;
  sqlite3_int64 changes;
} sstmt;

enum { OP_OPEN, OP_EXEC, OP_CLOSE };
enum { TX_NONE, TX_READ, TX_WRITE };

typedef struct sreq {
  struct sreq *next;
  int op, tx;
  pf_task *t;                  /* waiting task; NULL if none or cancelled */
  int async;                   /* nobody waits: errors are warned */
  sstmt *st;
  int nst;
  char *err;                   /* owned, NULL on success */
  int must_failed;             /* err is a statement's 'must' message */
} sreq;

typedef struct pf_store {
  uv_thread_t thread;
  uv_mutex_t mu;
  uv_cond_t cond;
  uv_async_t *async;           /* freed (with this record) by its close */
  sreq *todo, **todo_tail;     /* loop -> thread */
  sreq *done, **done_tail;     /* thread -> loop */
  sqlite3 *db;                 /* the thread's */
  struct { char *sql; sqlite3_stmt *s; } cache[STMT_CACHE];
  int busy_ms;
  size_t inflight;             /* queued and not yet completed */
  int anchor;                  /* the userdata, while inflight > 0 */
  lua_State *L;
  int thread_live;
  char path[1];
} pf_store;

typedef struct { pf_store *st; } store_ud;

/* ---------------------------------------------------------- requests */

static void sval_free(sval *v) {
  free(v->p);
  v->p = NULL;
}

static void req_free(sreq *r) {
  int i;
  size_t k;
  for (i = 0; i < r->nst; i++) {
    sstmt *s = &r->st[i];
    int j;
    for (j = 0; j < s->npar; j++) sval_free(&s->par[j]);
    for (k = 0; k < s->nrow * (size_t)s->ncol; k++) sval_free(&s->cells[k]);
    free(s->par);
    free(s->cells);
    free(s->sql);
    free(s->must);
  }
  free(r->st);
  free(r->err);
  free(r);
}

static char *dupstr(const char *s) {
  size_t n = strlen(s) + 1;
  char *p = (char *)malloc(n);
  if (p) memcpy(p, s, n);
  return p;
}

static void req_fail(sreq *r, const char *msg) {
  if (r->err == NULL) r->err = dupstr(msg ? msg : "out of memory");
}

/* ------------------------------------------------------ writer thread */

static sqlite3_stmt *prepare(pf_store *st, const char *sql) {
  int i, slot = STMT_CACHE - 1;
  sqlite3_stmt *s;
  for (i = 0; i < STMT_CACHE; i++) {
    if (st->cache[i].sql == NULL) { slot = i; break; }
    if (strcmp(st->cache[i].sql, sql) == 0) return st->cache[i].s;
  }
  if (sqlite3_prepare_v3(st->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s,
                         NULL) != SQLITE_OK)
    return NULL;
  if (st->cache[slot].sql) {  /* full: the last slot is recycled */
    sqlite3_finalize(st->cache[slot].s);
    free(st->cache[slot].sql);
  }
  st->cache[slot].sql = dupstr(sql);
  st->cache[slot].s = s;
  if (st->cache[slot].sql == NULL) {
    st->cache[slot].s = NULL;
    sqlite3_finalize(s);
    return NULL;
  }
  return s;
}

static int bind_all(sqlite3_stmt *s, sstmt *q) {
  int j, rc = SQLITE_OK;
  for (j = 0; j < q->npar && rc == SQLITE_OK; j++) {
    sval *v = &q->par[j];
    switch (v->type) {
      case SQLITE_INTEGER: rc = sqlite3_bind_int64(s, j + 1, v->i); break;
      case SQLITE_FLOAT: rc = sqlite3_bind_double(s, j + 1, v->n); break;
      case SQLITE_TEXT:
        rc = sqlite3_bind_text64(s, j + 1, v->p, v->len, SQLITE_STATIC,
                                 SQLITE_UTF8);
        break;
      case SQLITE_BLOB:
        rc = sqlite3_bind_blob64(s, j + 1, v->p ? v->p : "", v->len,
                                 SQLITE_STATIC);
        break;
      default: rc = sqlite3_bind_null(s, j + 1);
    }
  }
  return rc;
}

/* Copies the current row of s into q's results. */
static int keep_row(sqlite3_stmt *s, sstmt *q) {
  int c;
  if (q->nrow == q->cap) {
    size_t cap = q->cap ? q->cap * 2 : 8;
    sval *p = (sval *)realloc(q->cells, cap * (size_t)q->ncol * sizeof *p);
    if (p == NULL) return -1;
    q->cells = p;
    q->cap = cap;
  }
  memset(&q->cells[q->nrow * (size_t)q->ncol], 0, (size_t)q->ncol * sizeof(sval));
  for (c = 0; c < q->ncol; c++) {
    sval *v = &q->cells[q->nrow * (size_t)q->ncol + (size_t)c];
    v->type = sqlite3_column_type(s, c);
    if (v->type == SQLITE_INTEGER) v->i = sqlite3_column_int64(s, c);
    else if (v->type == SQLITE_FLOAT) v->n = sqlite3_column_double(s, c);
    else if (v->type == SQLITE_TEXT || v->type == SQLITE_BLOB) {
      const void *b = v->type == SQLITE_TEXT ? (const void *)sqlite3_column_text(s, c)
                                             : sqlite3_column_blob(s, c);
      v->len = (size_t)sqlite3_column_bytes(s, c);
      v->p = (char *)malloc(v->len + 1);
      if (v->p == NULL) { v->type = SQLITE_NULL; q->nrow++; return -1; }
      if (v->len) memcpy(v->p, b, v->len);
      v->p[v->len] = '\0';
    }
  }
  q->nrow++;
  return 0;
}

/* Runs one statement; 0, or -1 with r->err set. */
static int run_stmt(pf_store *st, sreq *r, sstmt *q) {
  sqlite3_stmt *s = prepare(st, q->sql);
  int rc;
  if (s == NULL) { req_fail(r, sqlite3_errmsg(st->db)); return -1; }
  if (bind_all(s, q) != SQLITE_OK) goto fail;
  q->ncol = sqlite3_column_count(s);
  while ((rc = sqlite3_step(s)) == SQLITE_ROW)
    if (keep_row(s, q) < 0) { req_fail(r, NULL); goto out; }
  if (rc != SQLITE_DONE) goto fail;
  q->changes = sqlite3_changes64(st->db);
  if (q->must && q->changes == 0) {
    req_fail(r, q->must);
    r->must_failed = 1;
    goto out;
  }
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  return 0;
fail:
  req_fail(r, sqlite3_errmsg(st->db));
out:
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  return -1;
}

static int run_sql(pf_store *st, sreq *r, const char *sql) {
  char *msg = NULL;
  if (sqlite3_exec(st->db, sql, NULL, NULL, &msg) == SQLITE_OK) return 0;
  req_fail(r, msg ? msg : sqlite3_errmsg(st->db));
  sqlite3_free(msg);
  return -1;
}

static void run_exec(pf_store *st, sreq *r) {
  int i;
  if (r->tx != TX_NONE &&
      run_sql(st, r, r->tx == TX_WRITE ? "BEGIN IMMEDIATE" : "BEGIN") < 0)
    return;
  for (i = 0; i < r->nst; i++)
    if (run_stmt(st, r, &r->st[i]) < 0) break;
  if (r->tx == TX_NONE) return;
  if (r->err == NULL) {
    if (run_sql(st, r, "COMMIT") == 0) return;
  }
  sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
}

/* WAL lets readers of other processes go on while this one writes;
** synchronous=NORMAL syncs the WAL at checkpoints, not at each commit
** (a commit survives the process dying, not a power cut). The first
** statement reads the file: a file that is not a database fails here. */
static void run_open(pf_store *st, sreq *r) {
  int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
              SQLITE_OPEN_NOMUTEX;
  if (sqlite3_open_v2(st->path, &st->db, flags, NULL) != SQLITE_OK) {
    req_fail(r, st->db ? sqlite3_errmsg(st->db) : NULL);
    return;
  }
  sqlite3_busy_timeout(st->db, st->busy_ms);
  sqlite3_extended_result_codes(st->db, 0);
  if (run_sql(st, r, "PRAGMA journal_mode=WAL") == 0)
    run_sql(st, r, "PRAGMA synchronous=NORMAL");
}

static void db_close(pf_store *st) {
  int i;
  for (i = 0; i < STMT_CACHE; i++) {
    if (st->cache[i].sql == NULL) continue;
    sqlite3_finalize(st->cache[i].s);
    free(st->cache[i].sql);
    st->cache[i].sql = NULL;
  }
  sqlite3_close(st->db);  /* NULL is a no-op */
  st->db = NULL;
}

static void writer(void *arg) {
  pf_store *st = (pf_store *)arg;
  for (;;) {
    sreq *r;
    int op;
    uv_mutex_lock(&st->mu);
    while (st->todo == NULL) uv_cond_wait(&st->cond, &st->mu);
    r = st->todo;
    st->todo = r->next;
    if (st->todo == NULL) st->todo_tail = &st->todo;
    uv_mutex_unlock(&st->mu);
    op = r->op;
    if (op == OP_OPEN) run_open(st, r);
    else if (op == OP_EXEC && st->db) run_exec(st, r);
    else if (op == OP_EXEC) req_fail(r, "the database is not open");
    else db_close(st);
    r->next = NULL;
    uv_mutex_lock(&st->mu);
    *st->done_tail = r;
    st->done_tail = &r->next;
    uv_mutex_unlock(&st->mu);
    uv_async_send(st->async);
    if (op == OP_CLOSE) return;
  }
}

/* ----------------------------------------------------- loop side */

static void push_sval(lua_State *L, const sval *v) {
  switch (v->type) {
    case SQLITE_INTEGER: lua_pushinteger(L, (lua_Integer)v->i); break;
    case SQLITE_FLOAT: lua_pushnumber(L, v->n); break;
    case SQLITE_TEXT: case SQLITE_BLOB: lua_pushlstring(L, v->p, v->len); break;
    default: lua_pushnil(L);
  }
}

/* Pushes the results: an array with, per statement, an array of rows
** (each an array of values, nil for NULL) and 'changes'. */
static void push_results(lua_State *L, sreq *r) {
  int i, c;
  size_t k;
  lua_createtable(L, r->nst, 0);
  for (i = 0; i < r->nst; i++) {
    sstmt *q = &r->st[i];
    lua_createtable(L, (int)q->nrow, 1);
    for (k = 0; k < q->nrow; k++) {
      lua_createtable(L, q->ncol, 0);
      for (c = 0; c < q->ncol; c++) {
        push_sval(L, &q->cells[k * (size_t)q->ncol + (size_t)c]);
        lua_rawseti(L, -2, c + 1);
      }
      lua_rawseti(L, -2, (lua_Integer)k + 1);
    }
    lua_pushinteger(L, (lua_Integer)q->changes);
    lua_setfield(L, -2, "changes");
    lua_rawseti(L, -2, i + 1);
  }
}

static void unanchor(pf_store *st) {
  if (--st->inflight == 0) {
    luaL_unref(st->L, LUA_REGISTRYINDEX, st->anchor);
    st->anchor = LUA_NOREF;
    uv_unref((uv_handle_t *)st->async);
  }
}

static int complete_push(lua_State *L) {
  sreq *r = (sreq *)lua_touserdata(L, 1);
  luaL_checkstack(L, 8, NULL);
  if (r->err) {
    lua_pushnil(L);
    lua_pushstring(L, r->err);
  } else {
    push_results(L, r);
    lua_pushnil(L);
  }
  lua_pushboolean(L, r->must_failed);
  return 3;
}

static void complete(pf_store *st, sreq *r) {
  pf_task *t = r->t;
  if (t) {
    r->t = NULL;
    pf_wait_wake_with(t, complete_push, r);
  } else if (r->async && r->err) {
    lua_pushfstring(st->L, "store '%s': a checkpoint save failed: %s",
                    st->path, r->err);
    pf_warn(st->L, lua_tostring(st->L, -1));
    lua_pop(st->L, 1);
  }
}

static void free_store_cb(uv_handle_t *h) {
  pf_store *st = (pf_store *)h->data;
  uv_mutex_destroy(&st->mu);
  uv_cond_destroy(&st->cond);
  free(h);
  free(st);
}

/* After the close request: the thread has returned or is returning. */
static void finish_close(pf_store *st) {
  if (!st->thread_live) return;
  st->thread_live = 0;
  uv_thread_join(&st->thread);
  uv_close((uv_handle_t *)st->async, free_store_cb);
}

static sreq *take_done(pf_store *st) {
  sreq *list;
  uv_mutex_lock(&st->mu);
  list = st->done;
  st->done = NULL;
  st->done_tail = &st->done;
  uv_mutex_unlock(&st->mu);
  return list;
}

/* Completes the finished requests. A completion may run Lua (a warning,
** a GC step): the record stays valid, since the userdata is anchored
** while requests are in flight and the close comes last. */
static void async_cb(uv_async_t *h) {
  pf_store *st = (pf_store *)h->data;
  sreq *r = take_done(st), *next;
  int closed = 0;
  for (; r; r = next) {
    next = r->next;
    if (r->op == OP_CLOSE) closed = 1;
    complete(st, r);
    req_free(r);
    unanchor(st);
  }
  if (closed) finish_close(st);
}

/* Cancelled task: its request still runs; the callback drops the result. */
static void req_cancel(pf_task *t, void *data) {
  (void)t;
  if (data) ((sreq *)data)->t = NULL;
}

static void enqueue(lua_State *L, pf_store *st, sreq *r, int udidx) {
  if (st->inflight++ == 0) {
    lua_pushvalue(L, udidx);
    st->anchor = luaL_ref(L, LUA_REGISTRYINDEX);
    uv_ref((uv_handle_t *)st->async);
  }
  r->next = NULL;
  uv_mutex_lock(&st->mu);
  *st->todo_tail = r;
  st->todo_tail = &r->next;
  uv_cond_signal(&st->cond);
  uv_mutex_unlock(&st->mu);
}

static int wait_k(lua_State *L, int status, lua_KContext ctx) {
  (void)L; (void)status; (void)ctx;
  return 3;
}

/* Queues r for the task running on L and parks it; resumes with
** (results, nil, false) or (nil, message, failed_must). */
static int park_on(lua_State *L, pf_store *st, sreq *r, int udidx,
                   lua_KFunction k) {
  pf_task *t = pf_current(L);
  r->t = t;
  enqueue(L, st, r, udidx);
  pf_wait_park(t, req_cancel, r);
  return pf_wait_yield(L, t, 0, k);
}

/* the handle (at 1) and nil, or the handle and SQLite's message */
static int open_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status; (void)ctx;
  lua_pushvalue(L, 1);
  lua_pushvalue(L, -3);
  return 2;
}

/* ------------------------------------------------------------- Lua API */

static pf_store *check_open(lua_State *L, const char *fname) {
  store_ud *u = (store_ud *)luaL_checkudata(L, 1, STORE_MT);
  if (u->st == NULL) luaL_error(L, "%s: the store is closed", fname);
  return u->st;
}

static void need_task(lua_State *L, const char *fname) {
  if (pf_wait_begin(L, fname) == NULL)
    luaL_error(L, "%s: not inside a pocketflow task; use pf.spawn or "
                  "pf.run to start one", fname);
}

static void to_sval(lua_State *L, int idx, sval *v, sreq *r) {
  size_t len;
  const char *s;
  memset(v, 0, sizeof *v);
  switch (lua_type(L, idx)) {
    case LUA_TNIL: v->type = SQLITE_NULL; return;
    case LUA_TBOOLEAN:
      v->type = SQLITE_INTEGER;
      v->i = lua_toboolean(L, idx);
      return;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) {
        v->type = SQLITE_INTEGER;
        v->i = (sqlite3_int64)lua_tointeger(L, idx);
      } else {
        v->type = SQLITE_FLOAT;
        v->n = (double)lua_tonumber(L, idx);
      }
      return;
    case LUA_TSTRING:
      s = lua_tolstring(L, idx, &len);
      v->type = SQLITE_BLOB;
      v->len = len;
      v->p = (char *)malloc(len ? len : 1);
      if (v->p == NULL) { v->type = SQLITE_NULL; req_fail(r, NULL); return; }
      memcpy(v->p, s, len);
      return;
    default:
      v->type = SQLITE_NULL;
      req_fail(r, "a value is not nil, boolean, number or string");
  }
}

/* { sql = "...", n = k, p1 .. pk, blob = {[i] = true}, must = msg } at
** idx: strings are bound as text, those marked in 'blob' as blobs. */
static void to_stmt(lua_State *L, int idx, sstmt *q, sreq *r) {
  int j;
  memset(q, 0, sizeof *q);
  lua_getfield(L, idx, "sql");
  q->sql = lua_isstring(L, -1) ? dupstr(lua_tostring(L, -1)) : NULL;
  lua_getfield(L, idx, "must");
  if (lua_isstring(L, -1)) q->must = dupstr(lua_tostring(L, -1));
  lua_getfield(L, idx, "n");
  q->npar = (int)lua_tointeger(L, -1);
  lua_pop(L, 3);
  if (q->sql == NULL || q->npar < 0) { req_fail(r, "bad statement"); q->npar = 0; }
  q->par = (sval *)calloc((size_t)q->npar + 1, sizeof(sval));
  if (q->par == NULL) { req_fail(r, NULL); q->npar = 0; }
  lua_getfield(L, idx, "blob");
  for (j = 0; j < q->npar; j++) {
    lua_rawgeti(L, idx, j + 1);
    to_sval(L, -1, &q->par[j], r);
    lua_pop(L, 1);
    if (q->par[j].type == SQLITE_BLOB && lua_istable(L, -1)) {
      lua_rawgeti(L, -1, j + 1);
      if (!lua_toboolean(L, -1)) q->par[j].type = SQLITE_TEXT;
      lua_pop(L, 1);
    } else if (q->par[j].type == SQLITE_BLOB) {
      q->par[j].type = SQLITE_TEXT;
    }
  }
  lua_pop(L, 1);
}

/* Builds a request from the statements at 3..top; conversion errors are
** left in r->err. */
static sreq *new_exec(lua_State *L, int op, int tx) {
  int i, n = lua_gettop(L) - 2;
  sreq *r;
  for (i = 3; i <= lua_gettop(L); i++) luaL_checktype(L, i, LUA_TTABLE);
  r = (sreq *)calloc(1, sizeof *r);
  if (r == NULL) luaL_error(L, "store: out of memory");
  r->op = op;
  r->tx = tx;
  if (n > 0) {
    r->st = (sstmt *)calloc((size_t)n, sizeof(sstmt));
    if (r->st == NULL) { free(r); luaL_error(L, "store: out of memory"); }
  }
  r->nst = n;
  luaL_checkstack(L, 8, NULL);
  for (i = 0; i < n; i++) to_stmt(L, i + 3, &r->st[i], r);
  return r;
}

/* h:exec(mode, stmt...): mode "r" (read transaction), "w" (write
** transaction), "a" (write transaction, returns at once; a failure is
** warned), "n" (no transaction). Waits for the result: an array of
** statement results, or nil and SQLite's message. */
static int l_exec(lua_State *L) {
  static const char *const modes[] = {"n", "r", "w", "a", NULL};
  pf_store *st = check_open(L, "store");
  int mode = luaL_checkoption(L, 2, NULL, modes);
  sreq *r;
  if (mode != 3) need_task(L, "store");
  r = new_exec(L, OP_EXEC, mode == 3 ? TX_WRITE : mode);
  if (r->err) {
    lua_pushnil(L);
    lua_pushstring(L, r->err);
    req_free(r);
    return 2;
  }
  if (mode == 3) {
    r->async = 1;
    enqueue(L, st, r, 1);
    return 0;
  }
  lua_settop(L, 1);
  return park_on(L, st, r, 1, wait_k);
}

/* h:close(): waits until the queued requests are done, closes the
** database and joins the thread. A closed store is closed again quietly. */
static int l_close(lua_State *L) {
  store_ud *u = (store_ud *)luaL_checkudata(L, 1, STORE_MT);
  pf_store *st = u->st;
  sreq *r;
  if (st == NULL) return 0;
  need_task(L, "store:close");
  r = (sreq *)calloc(1, sizeof *r);
  if (r == NULL) return luaL_error(L, "store:close: out of memory");
  r->op = OP_CLOSE;
  u->st = NULL;
  lua_settop(L, 1);
  return park_on(L, st, r, 1, wait_k);
}

/* At GC or when the state closes: the pending requests run to the end
** and the thread is joined here, on the loop thread (it can wait for the
** last writes; nothing else can be done from a finalizer). */
static int l_gc(lua_State *L) {
  store_ud *u = (store_ud *)luaL_checkudata(L, 1, STORE_MT);
  pf_store *st = u->st;
  sreq *r, *next;
  if (st == NULL || !st->thread_live) return 0;
  u->st = NULL;
  r = (sreq *)calloc(1, sizeof *r);
  if (r == NULL) return 0;  /* out of memory: the thread is left */
  r->op = OP_CLOSE;
  st->inflight++;  /* not anchored: the userdata is going */
  uv_mutex_lock(&st->mu);
  *st->todo_tail = r;
  st->todo_tail = &r->next;
  uv_cond_signal(&st->cond);
  uv_mutex_unlock(&st->mu);
  uv_thread_join(&st->thread);
  st->thread_live = 0;
  for (r = take_done(st); r; r = next) {
    next = r->next;
    if (r->t) {  /* the state is closing: the task is never resumed */
      r->t->cancel_data = NULL;
      r->t = NULL;
    }
    complete(st, r);
    req_free(r);
    unanchor(st);
  }
  uv_close((uv_handle_t *)st->async, free_store_cb);
  return 0;
}

static pf_store *new_store(lua_State *L, const char *path, int busy_ms) {
  size_t len = strlen(path);
  pf_store *st = (pf_store *)calloc(1, sizeof *st + len);
  uv_async_t *a = (uv_async_t *)malloc(sizeof *a);
  if (st == NULL || a == NULL) {
    free(st);
    free(a);
    luaL_error(L, "pf.sqlite: out of memory");
  }
  memcpy(st->path, path, len + 1);
  st->busy_ms = busy_ms;
  st->todo_tail = &st->todo;
  st->done_tail = &st->done;
  st->anchor = LUA_NOREF;
  st->async = a;
  return st;
}

/* core.sqlite_open(path, busy_ms): opens the database on a new writer
** thread; waits. Returns the handle, or nil and SQLite's message (the
** handle is closed then). */
static int l_open(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int busy = (int)luaL_checkinteger(L, 2);
  store_ud *u;
  pf_store *st;
  sreq *r;
  need_task(L, "pf.sqlite");
  lua_settop(L, 2);
  u = (store_ud *)lua_newuserdatauv(L, sizeof *u, 0);
  u->st = NULL;
  luaL_setmetatable(L, STORE_MT);
  st = new_store(L, path, busy);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  st->L = lua_tothread(L, -1);
  lua_pop(L, 1);
  r = (sreq *)calloc(1, sizeof *r);
  if (r == NULL || uv_mutex_init(&st->mu) != 0) goto oom;
  if (uv_cond_init(&st->cond) != 0) { uv_mutex_destroy(&st->mu); goto oom; }
  uv_async_init(pf_loop(L), st->async, async_cb);
  st->async->data = st;
  pf_handle_internal((uv_handle_t *)st->async);  /* not luv's: uv.walk skips it */
  uv_unref((uv_handle_t *)st->async);
  if (uv_thread_create(&st->thread, writer, st) != 0) {
    uv_close((uv_handle_t *)st->async, free_store_cb);
    free(r);
    return luaL_error(L, "pf.sqlite: cannot start the writer thread");
  }
  st->thread_live = 1;
  u->st = st;
  r->op = OP_OPEN;
  lua_replace(L, 1);
  lua_settop(L, 1);
  return park_on(L, st, r, 1, open_k);
oom:
  free(r);
  free(st->async);
  free(st);
  return luaL_error(L, "pf.sqlite: out of memory");
}

/* ------------------------------------------------------ process info */

/* The start time of process pid (clock ticks since boot, field 22 of
** /proc/pid/stat), or -1: with the pid it names one process, since a
** pid that is reused gets a later start time. */
static long long proc_start(long pid) {
  char path[64], buf[1024], *p;
  FILE *f;
  size_t n;
  long long start = -1;
  int field;
  snprintf(path, sizeof path, "/proc/%ld/stat", pid);
  if ((f = fopen(path, "r")) == NULL) return -1;
  n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  if ((p = strrchr(buf, ')')) == NULL) return -1;  /* after the name */
  for (field = 2; field < 22 && p; field++) p = strchr(p + 1, ' ');
  if (p) sscanf(p + 1, "%lld", &start);
  return start;
}

/* core.store_proc() -> pid, host, start: who holds a run */
static int l_proc(lua_State *L) {
  char host[256];
  size_t n = sizeof host;
  long pid = (long)uv_os_getpid();
  lua_pushinteger(L, pid);
  if (uv_os_gethostname(host, &n) == 0) lua_pushstring(L, host);
  else lua_pushliteral(L, "");
  lua_pushinteger(L, proc_start(pid));
  return 3;
}

/* core.store_alive(pid, start): the process lives and is the same one */
static int l_alive(lua_State *L) {
  lua_Integer pid = luaL_checkinteger(L, 1);
  lua_Integer start = luaL_optinteger(L, 2, -1);
  int alive = pid > 0 && (kill((pid_t)pid, 0) == 0 || errno == EPERM);
  if (alive && start >= 0) {
    long long now = proc_start((long)pid);
    alive = now < 0 || now == start;  /* no /proc: trust the pid */
  }
  lua_pushboolean(L, alive);
  return 1;
}

/* core.store_time(): unix time in seconds, fractional */
static int l_time(lua_State *L) {
  uv_timeval64_t tv;
  uv_gettimeofday(&tv);
  lua_pushnumber(L, (lua_Number)tv.tv_sec + (lua_Number)tv.tv_usec / 1e6);
  return 1;
}

/* core.store_id(): a new run id, time and 64 random bits */
static int l_id(lua_State *L) {
  unsigned char b[8];
  char out[64], stamp[32];
  uv_timeval64_t tv;
  time_t secs;
  struct tm tm;
  int i;
  if (uv_random(NULL, NULL, b, sizeof b, 0, NULL) != 0) {
    uint64_t x = uv_hrtime() ^ ((uint64_t)uv_os_getpid() << 32);
    for (i = 0; i < 8; i++) b[i] = (unsigned char)(x >> (i * 8));
  }
  uv_gettimeofday(&tv);
  secs = (time_t)tv.tv_sec;
  gmtime_r(&secs, &tm);
  strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &tm);
  snprintf(out, sizeof out, "%s-%02x%02x%02x%02x%02x%02x%02x%02x", stamp,
           b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]);
  lua_pushstring(L, out);
  return 1;
}

static const luaL_Reg methods[] = {
  {"exec", l_exec},
  {"close", l_close},
  {NULL, NULL}
};

static const luaL_Reg store_funcs[] = {
  {"sqlite_open", l_open},
  {"store_proc", l_proc},
  {"store_alive", l_alive},
  {"store_id", l_id},
  {"store_time", l_time},
  {NULL, NULL}
};

extern const pf_chunk pf_store_lua;

void pf_open_store(lua_State *L) {
  pf_preload(L, "pocketflow.store", &pf_store_lua);
  if (luaL_newmetatable(L, STORE_MT)) {
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, store_funcs, 0);
}

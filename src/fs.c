/*
** pf.read_file(path), pf.write_file(path, data) on libuv's thread pool:
** one fs_req walks open -> read/write... -> close, each step a uv_fs
** request whose callback starts the next. The request owns copies of the
** path and the data, so a cancelled task can go at once: the callback
** that comes later closes the file and frees the request.
*/
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

#include "io.h"

#define READ_CHUNK 65536

typedef struct fs_req {
  uv_fs_t req;
  pf_task *t;             /* NULL once woken or cancelled */
  pf_buf buf;             /* read: the contents; write: the data */
  size_t done;            /* bytes written so far */
  uv_file fd;             /* -1 when not open */
  int err;                /* first error, with the step that failed */
  const char *step;
  int writing;
  char path[1];           /* allocated to size */
} fs_req;

static void step_cb(uv_fs_t *req);

static void req_free(fs_req *r) {
  pf_buf_free(&r->buf);
  free(r);
}

/* Results onto the task's thread: true and the contents (or nothing), or
** false and the message. */
static void finish(fs_req *r) {
  pf_task *t = r->t;
  lua_State *co;
  if (t == NULL) {  /* cancelled meanwhile */
    req_free(r);
    return;
  }
  r->t = NULL;
  co = t->co;
  lua_checkstack(co, 2);
  if (r->err < 0) {
    lua_pushboolean(co, 0);
    lua_pushfstring(co, "%s: %s (%s)", r->path, uv_strerror(r->err), r->step);
  } else {
    lua_pushboolean(co, 1);
    if (r->writing) lua_pushinteger(co, (lua_Integer)r->done);
    else lua_pushlstring(co, r->buf.data ? r->buf.data : "", r->buf.len);
  }
  req_free(r);
  pf_wake(t, 2);
}

static void fail(fs_req *r, int err, const char *step) {
  if (r->err == 0) {
    r->err = err;
    r->step = step;
  }
}

/* Closes the file if open, then finishes. */
static void close_then_finish(fs_req *r) {
  if (r->fd >= 0) {
    uv_file fd = r->fd;
    r->fd = -1;
    if (uv_fs_close(r->req.loop, &r->req, fd, step_cb) == 0) return;
  }
  finish(r);
}

static int next_read(fs_req *r) {
  uv_buf_t b;
  if (pf_buf_reserve(&r->buf, READ_CHUNK) < 0) return UV_ENOMEM;
  b = uv_buf_init(r->buf.data + r->buf.len,
                  (unsigned)(r->buf.cap - r->buf.len));
  return uv_fs_read(r->req.loop, &r->req, r->fd, &b, 1, -1, step_cb);
}

static int next_write(fs_req *r) {
  uv_buf_t b = uv_buf_init(r->buf.data + r->done,
                           (unsigned)(r->buf.len - r->done));
  return uv_fs_write(r->req.loop, &r->req, r->fd, &b, 1, -1, step_cb);
}

/* Starts the step after the one that just ended; returns 1 if started. */
static int advance(fs_req *r, uv_fs_type type, ssize_t result) {
  int err = 0;
  switch (type) {
    case UV_FS_OPEN:
      r->fd = (uv_file)result;
      err = r->writing ? (r->buf.len ? next_write(r) : 1) : next_read(r);
      break;
    case UV_FS_READ:
      if (result == 0) return 0;  /* end of file */
      r->buf.len += (size_t)result;
      err = next_read(r);
      break;
    case UV_FS_WRITE:
      r->done += (size_t)result;
      err = r->done < r->buf.len ? next_write(r) : 1;
      break;
    default:
      return 0;
  }
  if (err == 1) return 0;
  if (err < 0) {
    fail(r, err, type == UV_FS_OPEN ? "open" : r->writing ? "write" : "read");
    return 0;
  }
  return 1;
}

static void step_cb(uv_fs_t *req) {
  fs_req *r = (fs_req *)req->data;
  uv_fs_type type = req->fs_type;
  ssize_t result = req->result;
  uv_fs_req_cleanup(req);
  if (type == UV_FS_CLOSE) {
    if (result < 0) fail(r, (int)result, "close");
    finish(r);
    return;
  }
  if (result < 0) {
    if (result != UV_ECANCELED || r->t != NULL)
      fail(r, (int)result, type == UV_FS_OPEN ? "open"
                           : r->writing ? "write" : "read");
    close_then_finish(r);
    return;
  }
  if (type == UV_FS_OPEN) r->fd = (uv_file)result;
  if (r->t == NULL || !advance(r, type, result)) close_then_finish(r);
}

/* Cancelled: the request is cancelled if it has not started; either way
** its callback comes, closes the file and frees the request. */
static void fs_cancel(pf_task *t, void *data) {
  fs_req *r = (fs_req *)data;
  (void)t;
  r->t = NULL;
  uv_cancel((uv_req_t *)&r->req);
}

static int fs_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  if (!lua_toboolean(L, -2))
    return luaL_error(L, "%s: %s", (const char *)ctx, lua_tostring(L, -1));
  return 1;
}

static int start(lua_State *L, int writing, const char *fname) {
  size_t plen, dlen = 0;
  const char *path = luaL_checklstring(L, 1, &plen);
  const char *data = writing ? luaL_checklstring(L, 2, &dlen) : NULL;
  pf_task *t = pf_current(L);  /* the callers checked it is a task */
  fs_req *r;
  int err;
  pf_check_yield(L, fname);
  r = (fs_req *)calloc(1, sizeof *r + plen);
  if (r == NULL) return luaL_error(L, "%s: out of memory", fname);
  memcpy(r->path, path, plen + 1);
  r->fd = -1;
  r->writing = writing;
  r->req.data = r;
  if (writing && pf_buf_add(&r->buf, data, dlen) < 0) {
    req_free(r);
    return luaL_error(L, "%s: out of memory", fname);
  }
  err = writing
    ? uv_fs_open(pf_loop(L), &r->req, r->path, O_WRONLY | O_CREAT | O_TRUNC,
                 0666, step_cb)
    : uv_fs_open(pf_loop(L), &r->req, r->path, O_RDONLY, 0, step_cb);
  if (err < 0) {
    req_free(r);
    return luaL_error(L, "%s: %s: %s", fname, path, uv_strerror(err));
  }
  r->t = t;
  pf_park(t, fs_cancel, r);
  return pf_yield(L, t, (lua_KContext)fname, fs_k);
}

static int l_read_file(lua_State *L) {
  if (pf_current(L) == NULL) {
    luaL_checkstring(L, 1);
    return pf_run_implicit(L, l_read_file, "pf.read_file");
  }
  return start(L, 0, "pf.read_file");
}

static int l_write_file(lua_State *L) {
  if (pf_current(L) == NULL) {
    luaL_checkstring(L, 1);
    luaL_checkstring(L, 2);
    return pf_run_implicit(L, l_write_file, "pf.write_file");
  }
  return start(L, 1, "pf.write_file");
}

void pf_open_fs(lua_State *L) {
  lua_pushcfunction(L, l_read_file);
  lua_setfield(L, -2, "read_file");
  lua_pushcfunction(L, l_write_file);
  lua_setfield(L, -2, "write_file");
}

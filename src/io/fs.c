/*
** pf.read_file(path), pf.write_file(path, data) on libuv's thread pool:
** one fs_req walks open -> fstat -> read/write... -> close, each step a
** uv_fs request whose callback starts the next. The request owns copies
** of the path and the data, so a cancelled task can go at once: the
** callback that comes later closes the file and frees the request.
**
** Only regular files: a FIFO or a device can block a pool thread in
** open() or read() for ever, and a cancelled task cannot get that thread
** back (libuv has 4 by default). So the file is opened with O_NONBLOCK,
** which never waits for a FIFO's other end, and fstat rejects anything
** but a regular file before the first read or write.
*/
#include <fcntl.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>

#include "io.h"


typedef struct fs_req {
  uv_fs_t req;
  pf_task *t;             /* NULL once woken or cancelled */
  pf_buf buf;             /* read: the contents; write: the data */
  size_t done;            /* bytes written so far */
  uv_file fd;             /* -1 when not open */
  int err;                /* first error, with the step that failed */
  const char *step;
  const char *kind;       /* set when the file is not a regular one */
  uint64_t mode;          /* st_mode from fstat */
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
static int file_push(lua_State *L) {
  fs_req *r = (fs_req *)lua_touserdata(L, 1);
  if (r->kind != NULL) {
    lua_pushboolean(L, 0);
    lua_pushfstring(L, "%s: not a regular file (%s)", r->path, r->kind);
  } else if (r->err < 0) {
    lua_pushboolean(L, 0);
    lua_pushfstring(L, "%s: %s (%s)", r->path, uv_strerror(r->err), r->step);
  } else {
    lua_pushboolean(L, 1);
    if (r->writing) lua_pushinteger(L, (lua_Integer)r->done);
    else lua_pushlstring(L, r->buf.data ? r->buf.data : "", r->buf.len);
  }
  return 2;
}

static void file_wake(fs_req *r) {
  pf_task *t = r->t;
  if (t == NULL) {  /* cancelled meanwhile */
    req_free(r);
    return;
  }
  r->t = NULL;
  pf_wait_wake_with(t, file_push, r);
  req_free(r);
}

/* keeps the first error and the step that met it */
static void file_error(fs_req *r, int err, const char *step) {
  if (r->err == 0) {
    r->err = err;
    r->step = step;
  }
}

/* Closes the file if open, then wakes the task. */
static void close_then_finish(fs_req *r) {
  if (r->fd >= 0) {
    uv_file fd = r->fd;
    r->fd = -1;
    if (uv_fs_close(r->req.loop, &r->req, fd, step_cb) == 0) return;
  }
  file_wake(r);
}

static int next_read(fs_req *r) {
  uv_buf_t b;
  if (pf_buf_reserve(&r->buf, PF_READ_CHUNK) < 0) return UV_ENOMEM;
  b = uv_buf_init(r->buf.data + r->buf.len,
                  pf_io_chunk(r->buf.cap - r->buf.len));
  return uv_fs_read(r->req.loop, &r->req, r->fd, &b, 1, -1, step_cb);
}

static int next_write(fs_req *r) {
  uv_buf_t b = uv_buf_init(r->buf.data + r->done,
                           pf_io_chunk(r->buf.len - r->done));
  return uv_fs_write(r->req.loop, &r->req, r->fd, &b, 1, -1, step_cb);
}

/* NULL for a regular file, else what it is */
static const char *file_kind(uint64_t mode) {
  switch (mode & S_IFMT) {
    case S_IFREG: return NULL;
    case S_IFDIR: return "a directory";
    case S_IFIFO: return "a FIFO";
    case S_IFSOCK: return "a socket";
    case S_IFCHR: return "a character device";
    case S_IFBLK: return "a block device";
    default: return "not a file";
  }
}

/* Starts the step after the one that just ended; returns 1 if started. */
static int advance(fs_req *r, uv_fs_type type, ssize_t result) {
  int err = 0;
  switch (type) {
    case UV_FS_OPEN:
      r->fd = (uv_file)result;
      err = uv_fs_fstat(r->req.loop, &r->req, r->fd, step_cb);
      break;
    case UV_FS_FSTAT:
      if ((r->kind = file_kind(r->mode)) != NULL) return 0;
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
    file_error(r, err, type == UV_FS_OPEN ? "fstat"
                 : r->writing ? "write" : "read");
    return 0;
  }
  return 1;
}

static void step_cb(uv_fs_t *req) {
  fs_req *r = (fs_req *)req->data;
  uv_fs_type type = req->fs_type;
  ssize_t result = req->result;
  if (type == UV_FS_FSTAT) r->mode = req->statbuf.st_mode;
  uv_fs_req_cleanup(req);
  if (type == UV_FS_CLOSE) {
    if (result < 0) file_error(r, (int)result, "close");
    file_wake(r);
    return;
  }
  if (result < 0) {
    if (result != UV_ECANCELED || r->t != NULL)
      file_error(r, (int)result, type == UV_FS_OPEN ? "open"
                           : type == UV_FS_FSTAT ? "fstat"
                           : r->writing ? "write" : "read");
    close_then_finish(r);
    return;
  }
  if (type == UV_FS_OPEN) r->fd = (uv_file)result;
  if (r->t == NULL || !advance(r, type, result)) close_then_finish(r);
}

/* Cancelled: the request is cancelled if it has not started; either way
** its callback comes, closes the file and frees the request. A close is
** never cancelled: the fd would stay open. */
static void fs_cancel(pf_task *t, void *data) {
  fs_req *r = (fs_req *)data;
  (void)t;
  r->t = NULL;
  if (r->req.fs_type != UV_FS_CLOSE) uv_cancel((uv_req_t *)&r->req);
}

static int fs_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  if (!lua_toboolean(L, -2))
    return luaL_error(L, "%s: %s", (const char *)ctx, lua_tostring(L, -1));
  return 1;
}

static int file_start(lua_State *L, int writing, const char *fname) {
  size_t plen, dlen = 0;
  const char *path = luaL_checklstring(L, 1, &plen);
  const char *data = writing ? luaL_checklstring(L, 2, &dlen) : NULL;
  pf_task *t;
  fs_req *r;
  int err;
  t = pf_wait_begin(L, fname);  /* the callers checked it is a task */
  if (pf_has_nul(path, plen))
    return luaL_error(L, "%s: the path contains a NUL byte", fname);
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
    ? uv_fs_open(pf_loop(L), &r->req, r->path,
                 O_WRONLY | O_CREAT | O_TRUNC | O_NONBLOCK, 0666, step_cb)
    : uv_fs_open(pf_loop(L), &r->req, r->path, O_RDONLY | O_NONBLOCK, 0,
                 step_cb);
  if (err < 0) {
    req_free(r);
    return luaL_error(L, "%s: %s: %s", fname, path, uv_strerror(err));
  }
  r->t = t;
  pf_wait_park(t, fs_cancel, r);
  return pf_wait_yield(L, t, (lua_KContext)fname, fs_k);
}

static int l_read_file(lua_State *L) {
  if (pf_current(L) == NULL) {
    luaL_checkstring(L, 1);
    return pf_wait_outside(L, l_read_file, "pf.read_file");
  }
  return file_start(L, 0, "pf.read_file");
}

static int l_write_file(lua_State *L) {
  if (pf_current(L) == NULL) {
    luaL_checkstring(L, 1);
    luaL_checkstring(L, 2);
    return pf_wait_outside(L, l_write_file, "pf.write_file");
  }
  return file_start(L, 1, "pf.write_file");
}

/* ------------------------------------------------------------ pf.stat,
** pf.list_dir, pf.mkdir, pf.remove, pf.rename: one op_req each, whose
** callback starts the next step (mkdir with parents, remove of a
** directory) or wakes the task with (true, result) or (false, message). */

typedef struct op_req {
  uv_fs_t req;
  uv_loop_t *loop;
  pf_task *t;               /* NULL once woken or cancelled */
  int parents;              /* mkdir: make the missing parents too */
  size_t pos;               /* mkdir: end of the prefix being made */
  const char *path2;        /* rename: the new name, inside this block */
  char path[1];             /* allocated to size */
} op_req;

static const char *type_name(uint64_t mode) {
  switch (mode & S_IFMT) {
    case S_IFREG: return "file";
    case S_IFDIR: return "directory";
    case S_IFLNK: return "link";
    case S_IFIFO: return "fifo";
    case S_IFSOCK: return "socket";
    case S_IFCHR: return "char";
    case S_IFBLK: return "block";
    default: return "unknown";
  }
}

static void push_stat(lua_State *co, const uv_stat_t *st) {
  lua_createtable(co, 0, 4);
  lua_pushstring(co, type_name(st->st_mode));
  lua_setfield(co, -2, "type");
  lua_pushinteger(co, (lua_Integer)st->st_size);
  lua_setfield(co, -2, "size");
  lua_pushnumber(co, (lua_Number)st->st_mtim.tv_sec +
                     (lua_Number)st->st_mtim.tv_nsec / 1e9);
  lua_setfield(co, -2, "mtime");
  lua_pushinteger(co, (lua_Integer)(st->st_mode & 07777));
  lua_setfield(co, -2, "mode");
}

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* the entries of a finished scandir, sorted bytewise. uv_fs_scandir_next
** frees each entry at the next call: the names are copied into Lua
** strings first, then sorted by pointer. */
static void push_names(lua_State *co, uv_fs_t *req) {
  uv_dirent_t ent;
  const char **names;
  lua_Integer i, n = 0;
  lua_newtable(co);
  while (uv_fs_scandir_next(req, &ent) != UV_EOF) {
    lua_pushstring(co, ent.name);
    lua_rawseti(co, -2, ++n);
  }
  /* Lua's memory: a raise below frees it */
  names = (const char **)lua_newuserdatauv(co, (size_t)(n ? n : 1) *
                                               sizeof *names, 0);
  lua_createtable(co, (int)n, 0);
  for (i = 0; i < n; i++) {
    lua_rawgeti(co, -3, i + 1);
    names[i] = lua_tostring(co, -1);  /* kept alive by the first table */
    lua_pop(co, 1);
  }
  qsort(names, (size_t)n, sizeof *names, cmp_names);
  for (i = 0; i < n; i++) {
    lua_pushstring(co, names[i]);
    lua_rawseti(co, -2, i + 1);
  }
  lua_replace(co, -3);
  lua_pop(co, 1);
}

typedef struct {
  op_req *r;
  int result;
  const uv_fs_t *req;
} op_done;

static int op_push(lua_State *L) {
  op_done *d = (op_done *)lua_touserdata(L, 1);
  op_req *r = d->r;
  luaL_checkstack(L, 4, NULL);
  if (d->result < 0) {
    lua_pushboolean(L, 0);
    if (r->path2) lua_pushfstring(L, "%s -> %s: %s", r->path, r->path2,
                                  uv_strerror(d->result));
    else lua_pushfstring(L, "%s: %s", r->path, uv_strerror(d->result));
  } else {
    lua_pushboolean(L, 1);
    if (d->req->fs_type == UV_FS_STAT && !r->parents)
      push_stat(L, &d->req->statbuf);
    else if (d->req->fs_type == UV_FS_SCANDIR) push_names(L, (uv_fs_t *)d->req);
    else lua_pushboolean(L, 1);
  }
  return 2;
}

static void op_wake(op_req *r, int result, const uv_fs_t *req) {
  pf_task *t = r->t;
  op_done d;
  d.r = r;
  d.result = result;
  d.req = req;
  r->t = NULL;
  pf_wait_wake_with(t, op_push, &d);
}

static void op_cb(uv_fs_t *req);

/* mkdir with parents: the next prefix of the path ending at a '/', or
** the whole path; libuv copies the path it is given */
static int mkdir_next(op_req *r) {
  size_t len = strlen(r->path), end = r->pos + 1;
  int err;
  while (end < len && r->path[end] != '/') end++;
  r->pos = end;
  if (end >= len) return uv_fs_mkdir(r->loop, &r->req, r->path, 0777, op_cb);
  r->path[end] = '\0';
  err = uv_fs_mkdir(r->loop, &r->req, r->path, 0777, op_cb);
  r->path[end] = '/';
  return err;
}

/* the step after one that ended with 'result': 1 if one started, else
** the result the task gets */
static int op_next(op_req *r, uv_fs_type type, int result) {
  uv_loop_t *loop = r->loop;
  int err;
  if (type == UV_FS_MKDIR && r->parents) {
    if (result < 0 && result != UV_EEXIST) return result;
    if (r->pos < strlen(r->path)) err = mkdir_next(r);
    else if (result == UV_EEXIST)   /* fine if it is a directory */
      err = uv_fs_stat(loop, &r->req, r->path, op_cb);
    else return 0;
  } else if (type == UV_FS_STAT && r->parents) {
    if (result < 0) return result;
    return (r->req.statbuf.st_mode & S_IFMT) == S_IFDIR ? 0 : UV_EEXIST;
  } else if (type == UV_FS_UNLINK && result == UV_EISDIR) {
    err = uv_fs_rmdir(loop, &r->req, r->path, op_cb);
  } else {
    return result;
  }
  return err < 0 ? err : 1;
}

static void op_cb(uv_fs_t *req) {
  op_req *r = (op_req *)req->data;
  uv_fs_type type = req->fs_type;
  int result = (int)req->result;
  if (r->t != NULL && (type == UV_FS_SCANDIR ||
                       (type == UV_FS_STAT && !r->parents)))
    op_wake(r, result, req);    /* the results live in req until cleanup */
  uv_fs_req_cleanup(req);       /* the statbuf stays */
  if (r->t != NULL) {
    result = op_next(r, type, result);
    if (result == 1) return;
    op_wake(r, result, req);
  }
  free(r);
}

static void op_cancel(pf_task *t, void *data) {
  op_req *r = (op_req *)data;
  (void)t;
  r->t = NULL;   /* the callback comes and frees it */
  uv_cancel((uv_req_t *)&r->req);
}

/* a request with copies of the path at 1 (and at 2 with two paths) */
static op_req *op_new(lua_State *L, const char *fname, int two) {
  size_t len1, len2 = 0;
  const char *p1 = luaL_checklstring(L, 1, &len1);
  const char *p2 = two ? luaL_checklstring(L, 2, &len2) : NULL;
  op_req *r;
  if (pf_has_nul(p1, len1) || (p2 && pf_has_nul(p2, len2)))
    luaL_error(L, "%s: the path contains a NUL byte", fname);
  r = (op_req *)calloc(1, sizeof *r + len1 + len2 + 1);
  if (r == NULL) luaL_error(L, "%s: out of memory", fname);
  memcpy(r->path, p1, len1 + 1);
  if (p2) {
    char *q = r->path + len1 + 1;
    memcpy(q, p2, len2 + 1);
    r->path2 = q;
  }
  r->req.data = r;
  r->loop = pf_loop(L);
  return r;
}

/* parks the task on the request that 'err' says was started */
static int op_park(lua_State *L, op_req *r, int err, const char *fname) {
  if (err < 0) {
    lua_pushfstring(L, "%s: %s: %s", fname, r->path, uv_strerror(err));
    free(r);
    return lua_error(L);
  }
  r->t = pf_current(L);
  pf_wait_park(r->t, op_cancel, r);
  return pf_wait_yield(L, r->t, (lua_KContext)fname, fs_k);
}

/* outside a task, f runs in one that pf_wait_outside starts */
#define OP_ENTRY(f, fname, nstr) \
  if (pf_current(L) == NULL) { \
    for (int i = 1; i <= (nstr); i++) luaL_checkstring(L, i); \
    return pf_wait_outside(L, f, fname); \
  } \
  pf_wait_begin(L, fname)

static int l_stat(lua_State *L) {
  op_req *r;
  OP_ENTRY(l_stat, "pf.stat", 1);
  r = op_new(L, "pf.stat", 0);
  return op_park(L, r, uv_fs_stat(pf_loop(L), &r->req, r->path, op_cb),
                 "pf.stat");
}

static int l_list_dir(lua_State *L) {
  op_req *r;
  OP_ENTRY(l_list_dir, "pf.list_dir", 1);
  r = op_new(L, "pf.list_dir", 0);
  return op_park(L, r, uv_fs_scandir(pf_loop(L), &r->req, r->path, 0, op_cb),
                 "pf.list_dir");
}

static int l_remove(lua_State *L) {
  op_req *r;
  OP_ENTRY(l_remove, "pf.remove", 1);
  r = op_new(L, "pf.remove", 0);
  return op_park(L, r, uv_fs_unlink(pf_loop(L), &r->req, r->path, op_cb),
                 "pf.remove");
}

static int l_rename(lua_State *L) {
  op_req *r;
  OP_ENTRY(l_rename, "pf.rename", 2);
  r = op_new(L, "pf.rename", 1);
  return op_park(L, r, uv_fs_rename(pf_loop(L), &r->req, r->path, r->path2,
                                    op_cb), "pf.rename");
}

/* opts of pf.mkdir: { parents = bool } */
static int mkdir_parents(lua_State *L) {
  int parents = 0;
  if (lua_isnoneornil(L, 2)) return 0;
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    if (lua_type(L, -2) != LUA_TSTRING ||
        strcmp(lua_tostring(L, -2), "parents") != 0)
      luaL_error(L, "pf.mkdir: unknown option '%s' (options: parents)",
                 lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2)
                                                : luaL_typename(L, -2));
    parents = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  return parents;
}

static int l_mkdir(lua_State *L) {
  op_req *r;
  int parents;
  OP_ENTRY(l_mkdir, "pf.mkdir", 1);
  parents = mkdir_parents(L);
  r = op_new(L, "pf.mkdir", 0);
  r->parents = parents;
  return op_park(L, r, parents ? mkdir_next(r)
                       : uv_fs_mkdir(pf_loop(L), &r->req, r->path, 0777, op_cb),
                 "pf.mkdir");
}

static const luaL_Reg fs_funcs[] = {
  {"read_file", l_read_file},
  {"write_file", l_write_file},
  {"stat", l_stat},
  {"list_dir", l_list_dir},
  {"mkdir", l_mkdir},
  {"remove", l_remove},
  {"rename", l_rename},
  {NULL, NULL}
};

void pf_open_fs(lua_State *L) {
  luaL_setfuncs(L, fs_funcs, 0);
}

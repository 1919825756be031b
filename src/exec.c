/*
** pf.exec(argv, opts): a subprocess whose stdout and stderr are read
** through pipes into growing buffers while the task waits. One exec_req
** owns the process, its pipes and the timeout timer; it is freed by the
** close callback of the last of them, on every path.
*/
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>

#include "io.h"

#define READ_CHUNK 65536

/* the handles of a request, as bits of 'inited' */
enum { H_PROC = 1, H_IN = 2, H_OUT = 4, H_ERR = 8, H_TIMER = 16 };

typedef struct exec_req {
  uv_process_t proc;
  uv_pipe_t in, out, err;
  uv_timer_t timer;
  uv_write_t wreq;
  pf_task *t;               /* NULL once woken or cancelled */
  pf_buf obuf, ebuf;
  char *input;              /* copy of opts.stdin */
  size_t input_len;
  int64_t code;
  int signal;
  int inited;               /* handles initialized, not yet closed */
  int open;                 /* handles whose close callback is pending */
  unsigned char exited, out_done, err_done, timed_out;
} exec_req;

static void on_close(uv_handle_t *h) {
  exec_req *r = (exec_req *)h->data;
  /* freed with the last handle, once all are closing */
  if (--r->open > 0 || r->inited != 0) return;
  pf_buf_free(&r->obuf);
  pf_buf_free(&r->ebuf);
  free(r->input);
  free(r);
}

static void close_one(exec_req *r, int bit, uv_handle_t *h) {
  if (!(r->inited & bit)) return;
  r->inited &= ~bit;
  r->open++;
  uv_close(h, on_close);
}

static void close_all(exec_req *r) {
  close_one(r, H_PROC, (uv_handle_t *)&r->proc);
  close_one(r, H_IN, (uv_handle_t *)&r->in);
  close_one(r, H_OUT, (uv_handle_t *)&r->out);
  close_one(r, H_ERR, (uv_handle_t *)&r->err);
  close_one(r, H_TIMER, (uv_handle_t *)&r->timer);
}

/* Once the child has exited and both pipes are drained: the results go
** onto the task's thread, and everything is closed. */
static void maybe_finish(exec_req *r) {
  pf_task *t = r->t;
  lua_State *co;
  if (t == NULL || !r->exited || !r->out_done || !r->err_done) return;
  r->t = NULL;
  co = t->co;
  lua_checkstack(co, 5);
  lua_pushlstring(co, r->obuf.data ? r->obuf.data : "", r->obuf.len);
  lua_pushlstring(co, r->ebuf.data ? r->ebuf.data : "", r->ebuf.len);
  lua_pushinteger(co, (lua_Integer)r->code);
  lua_pushinteger(co, r->signal);
  lua_pushboolean(co, r->timed_out);
  pf_buf_free(&r->obuf);
  pf_buf_free(&r->ebuf);
  close_all(r);
  pf_wake(t, 5);
}

static void on_exit(uv_process_t *p, int64_t status, int term_signal) {
  exec_req *r = (exec_req *)p->data;
  r->code = status;
  r->signal = term_signal;
  r->exited = 1;
  if (r->inited & H_TIMER) uv_timer_stop(&r->timer);
  maybe_finish(r);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  exec_req *r = (exec_req *)h->data;
  pf_buf *b = h == (uv_handle_t *)&r->out ? &r->obuf : &r->ebuf;
  (void)hint;
  if (pf_buf_reserve(b, READ_CHUNK) < 0) {
    *buf = uv_buf_init(NULL, 0);  /* read_cb gets UV_ENOBUFS */
    return;
  }
  *buf = uv_buf_init(b->data + b->len, (unsigned)(b->cap - b->len));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  exec_req *r = (exec_req *)s->data;
  int is_out = s == (uv_stream_t *)&r->out;
  (void)buf;
  if (nread > 0) {
    (is_out ? &r->obuf : &r->ebuf)->len += (size_t)nread;
    return;
  }
  if (nread == 0) return;  /* EAGAIN */
  /* EOF, or an error: this output is as complete as it gets */
  uv_read_stop(s);
  if (is_out) r->out_done = 1; else r->err_done = 1;
  maybe_finish(r);
}

static void on_write(uv_write_t *w, int status) {
  exec_req *r = (exec_req *)w->data;
  (void)status;  /* EPIPE: the child did not read all its input; fine */
  free(r->input);
  r->input = NULL;
  close_one(r, H_IN, (uv_handle_t *)&r->in);  /* the child sees EOF */
}

/* The deadline: the child is killed; output a grandchild keeps open is
** not waited for. */
static void on_timer(uv_timer_t *h) {
  exec_req *r = (exec_req *)h->data;
  r->timed_out = 1;
  if (r->inited & H_PROC) uv_process_kill(&r->proc, SIGKILL);
  if (!r->out_done) { uv_read_stop((uv_stream_t *)&r->out); r->out_done = 1; }
  if (!r->err_done) { uv_read_stop((uv_stream_t *)&r->err); r->err_done = 1; }
  maybe_finish(r);
}

/* The task was cancelled: the child is killed and reaped, and every
** handle closed; the task is not woken. */
static void exec_cancel(pf_task *t, void *data) {
  exec_req *r = (exec_req *)data;
  (void)t;
  r->t = NULL;
  if ((r->inited & H_PROC) && !r->exited) {
    int pid = r->proc.pid;
    uv_process_kill(&r->proc, SIGKILL);
    close_all(r);   /* libuv stops watching the pid: reap it here */
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
    return;
  }
  close_all(r);
}

/* ------------------------------------------------------------ options */

static const char *opt_string(lua_State *L, int opts, const char *name,
                              size_t *len) {
  const char *s = NULL;
  if (lua_getfield(L, opts, name) != LUA_TNIL) {
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_error(L, "pf.exec: opts.%s must be a string (got %s)", name,
                 luaL_typename(L, -1));
    s = lua_tolstring(L, -1, len);
  }
  lua_pop(L, 1);  /* still referenced by opts */
  return s;
}

/* argv as a NULL-terminated array in a userdata pushed on L, above a
** table that keeps its strings (numbers converted) alive */
static char **make_args(lua_State *L, int idx) {
  lua_Integer i, n = (lua_Integer)lua_rawlen(L, idx);
  char **args;
  if (n < 1) luaL_error(L, "pf.exec: argv must not be empty");
  lua_createtable(L, (int)n, 0);
  args = (char **)lua_newuserdatauv(L, sizeof(char *) * (size_t)(n + 1), 0);
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, idx, i);
    if (!lua_isstring(L, -1))
      luaL_error(L, "pf.exec: argv[%d] must be a string (got %s)", (int)i,
                 luaL_typename(L, -1));
    args[i - 1] = (char *)lua_tostring(L, -1);  /* a copy on the stack */
    lua_rawseti(L, -3, i);
  }
  args[n] = NULL;
  return args;
}

/* opts.env as "name=value" strings, kept alive in a table pushed on L,
** then the array in a userdata pushed above it */
static char **make_env(lua_State *L, int opts) {
  int n = 0, tbl;
  char **env;
  if (lua_getfield(L, opts, "env") == LUA_TNIL) {
    lua_pushnil(L);
    return NULL;
  }
  if (!lua_istable(L, -1))
    luaL_error(L, "pf.exec: opts.env must be a table (got %s)",
               luaL_typename(L, -1));
  tbl = lua_gettop(L);
  lua_newtable(L);
  lua_pushnil(L);
  while (lua_next(L, tbl)) {
    if (lua_type(L, -2) != LUA_TSTRING || !lua_isstring(L, -1))
      luaL_error(L, "pf.exec: opts.env must map names to strings");
    lua_pushfstring(L, "%s=%s", lua_tostring(L, -2), lua_tostring(L, -1));
    lua_rawseti(L, tbl + 1, ++n);
    lua_pop(L, 1);
  }
  lua_remove(L, tbl);
  env = (char **)lua_newuserdatauv(L, sizeof(char *) * (size_t)(n + 1), 0);
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, -2, i + 1);
    env[i] = (char *)lua_tostring(L, -1);
    lua_pop(L, 1);
  }
  env[n] = NULL;
  return env;
}

/* ------------------------------------------------------------- pf.exec */

static int exec_k(lua_State *L, int status, lua_KContext ctx) {
  int top = lua_gettop(L);
  (void)status; (void)ctx;
  if (lua_toboolean(L, top)) {
    lua_rawgeti(L, 1, 1);
    return luaL_error(L, "pf.exec: %s: timeout after %f s",
                      lua_tostring(L, -1), (double)ctx / 1000.0);
  }
  lua_createtable(L, 0, 4);
  lua_pushvalue(L, top - 2);
  lua_setfield(L, -2, "code");
  lua_pushvalue(L, top - 1);
  lua_setfield(L, -2, "signal");
  lua_pushvalue(L, top - 4);
  lua_setfield(L, -2, "stdout");
  lua_pushvalue(L, top - 3);
  lua_setfield(L, -2, "stderr");
  return 1;
}

static int spawn_failed(lua_State *L, exec_req *r, const char *prog, int err) {
  r->t = NULL;
  if (r->open == 0 && r->inited == 0) {
    free(r->input);
    free(r);
  } else {
    close_all(r);
  }
  return luaL_error(L, "pf.exec: cannot run '%s': %s", prog, uv_strerror(err));
}

static int init_pipes(uv_loop_t *loop, exec_req *r, int with_input) {
  int err;
  if ((err = uv_pipe_init(loop, &r->out, 0)) < 0) return err;
  r->inited |= H_OUT;
  if ((err = uv_pipe_init(loop, &r->err, 0)) < 0) return err;
  r->inited |= H_ERR;
  if (with_input) {
    if ((err = uv_pipe_init(loop, &r->in, 0)) < 0) return err;
    r->inited |= H_IN;
  }
  pf_handle_internal((uv_handle_t *)&r->out);
  pf_handle_internal((uv_handle_t *)&r->err);
  if (with_input) pf_handle_internal((uv_handle_t *)&r->in);
  r->out.data = r->err.data = r->in.data = r->proc.data = r;
  r->timer.data = r->wreq.data = r;
  return 0;
}

static int l_exec(lua_State *L) {
  uv_process_options_t po;
  uv_stdio_container_t stdio[3];
  uv_loop_t *loop;
  exec_req *r;
  pf_task *t;
  const char *input, *cwd;
  size_t input_len = 0;
  double timeout = 0;
  char **args, **env;
  int err;
  luaL_checktype(L, 1, LUA_TTABLE);
  if (lua_isnoneornil(L, 2)) { lua_settop(L, 1); lua_newtable(L); }
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  t = pf_current(L);
  if (t == NULL) return pf_run_implicit(L, l_exec, "pf.exec");
  pf_check_yield(L, "pf.exec");
  args = make_args(L, 1);
  env = make_env(L, 2);
  input = opt_string(L, 2, "stdin", &input_len);
  cwd = opt_string(L, 2, "cwd", NULL);
  if (lua_getfield(L, 2, "timeout") != LUA_TNIL) {
    int isnum;
    timeout = (double)lua_tonumberx(L, -1, &isnum);
    if (!isnum || !(timeout > 0))
      return luaL_error(L, "pf.exec: opts.timeout must be a positive number");
  }
  lua_pop(L, 1);
  loop = pf_loop(L);
  r = (exec_req *)calloc(1, sizeof *r);
  if (r == NULL) return luaL_error(L, "pf.exec: out of memory");
  if (input != NULL) {
    r->input = (char *)malloc(input_len ? input_len : 1);
    if (r->input == NULL) { free(r); return luaL_error(L, "pf.exec: out of memory"); }
    memcpy(r->input, input, input_len);
    r->input_len = input_len;
  }
  if ((err = init_pipes(loop, r, input != NULL)) < 0)
    return spawn_failed(L, r, args[0], err);
  memset(&po, 0, sizeof po);
  po.exit_cb = on_exit;
  po.file = args[0];
  po.args = args;
  po.env = env;
  po.cwd = cwd;
  po.stdio_count = 3;
  po.stdio = stdio;
  if (input != NULL) {
    stdio[0].flags = UV_CREATE_PIPE | UV_READABLE_PIPE;
    stdio[0].data.stream = (uv_stream_t *)&r->in;
  } else {
    stdio[0].flags = UV_IGNORE;
  }
  stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
  stdio[1].data.stream = (uv_stream_t *)&r->out;
  stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
  stdio[2].data.stream = (uv_stream_t *)&r->err;
  err = uv_spawn(loop, &r->proc, &po);
  r->inited |= H_PROC;  /* initialized even when the spawn failed */
  pf_handle_internal((uv_handle_t *)&r->proc);
  if (err < 0) return spawn_failed(L, r, args[0], err);
  uv_read_start((uv_stream_t *)&r->out, on_alloc, on_read);
  uv_read_start((uv_stream_t *)&r->err, on_alloc, on_read);
  if (input != NULL) {
    uv_buf_t b = uv_buf_init(r->input, (unsigned)r->input_len);
    if (uv_write(&r->wreq, (uv_stream_t *)&r->in, &b, 1, on_write) < 0)
      close_one(r, H_IN, (uv_handle_t *)&r->in);
  }
  if (timeout > 0) {
    uv_timer_init(loop, &r->timer);
    pf_handle_internal((uv_handle_t *)&r->timer);
    r->inited |= H_TIMER;
    uv_timer_start(&r->timer, on_timer, pf_ms_from_seconds(timeout), 0);
  }
  r->t = t;
  pf_park(t, exec_cancel, r);
  return pf_yield(L, t, (lua_KContext)pf_ms_from_seconds(timeout), exec_k);
}

void pf_open_exec(lua_State *L) {
  lua_pushcfunction(L, l_exec);
  lua_setfield(L, -2, "exec");
}

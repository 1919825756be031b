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


/* the handles of a request, as bits of 'inited' */
enum { H_PROC = 1, H_IN = 2, H_OUT = 4, H_ERR = 8, H_TIMER = 16 };

/* how a run ended, as exec_k reports it */
enum { END_OK, END_TIMEOUT, END_NOMEM, END_LIMIT };

typedef struct exec_watch exec_watch;

typedef struct exec_req {
  uv_process_t proc;
  uv_pipe_t in, out, err;
  uv_timer_t timer;
  uv_write_t wreq;
  pf_task *t;               /* NULL once woken or cancelled */
  pf_buf obuf, ebuf;
  char *input;              /* copy of opts.stdin */
  size_t input_len, input_off, chunk;
  size_t max_output;        /* bytes per stream; 0: no limit */
  int64_t code;
  int signal;
  int inited;               /* handles initialized, not yet closed */
  int open;                 /* handles whose close callback is pending */
  int end;                  /* END_* */
  unsigned char exited, out_done, err_done;
  exec_watch *watch;        /* the binary's list of children, or NULL */
  pf_list watch_link;       /* in watch->children */
} exec_req;

/* The binary's signal handles and its running children (see below). */
struct exec_watch {
  uv_signal_t *sig[2];
  pf_list children;
};

static void unwatch(exec_req *r) {
  exec_watch *w = r->watch;
  if (w == NULL) return;
  pf_list_remove(&r->watch_link);
  r->watch = NULL;
}

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
  if (bit == H_PROC) unwatch(r);
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

/* The child leads a process group of its own (UV_PROCESS_DETACHED is
** setsid), so one kill reaches what it started too. The group outlives
** the child while a grandchild is in it, so its id is not reused. */
static void kill_group(exec_req *r) {
  if ((r->inited & H_PROC) && r->proc.pid > 0) kill(-r->proc.pid, SIGKILL);
}

/* Once the child has exited and both pipes are drained: the results go
** onto the task's thread, and everything is closed. */
static int finish_push(lua_State *L) {
  exec_req *r = (exec_req *)lua_touserdata(L, 1);
  luaL_checkstack(L, 5, NULL);
  lua_pushlstring(L, r->obuf.data ? r->obuf.data : "", r->obuf.len);
  lua_pushlstring(L, r->ebuf.data ? r->ebuf.data : "", r->ebuf.len);
  lua_pushinteger(L, (lua_Integer)r->code);
  lua_pushinteger(L, r->signal);
  lua_pushinteger(L, r->end);
  return 5;
}

static void maybe_finish(exec_req *r) {
  pf_task *t = r->t;
  if (t == NULL || !r->exited || !r->out_done || !r->err_done) return;
  r->t = NULL;
  if (r->end != END_OK) {   /* an error is raised: the output goes */
    pf_buf_free(&r->obuf);
    pf_buf_free(&r->ebuf);
  }
  pf_wait_wake_with(t, finish_push, r);
  pf_buf_free(&r->obuf);
  pf_buf_free(&r->ebuf);
  close_all(r);
}

/* Gives up on the run: the group is killed and its output no longer
** waited for; the task is woken once the child's exit is seen. */
static void abandon(exec_req *r, int end) {
  if (r->end == END_OK) r->end = end;
  kill_group(r);
  if (!r->out_done) { uv_read_stop((uv_stream_t *)&r->out); r->out_done = 1; }
  if (!r->err_done) { uv_read_stop((uv_stream_t *)&r->err); r->err_done = 1; }
  maybe_finish(r);
}

/* The timer is not stopped here: a grandchild may keep the pipes open
** after the child has gone, and the deadline bounds that wait too. */
static void child_exit(uv_process_t *p, int64_t status, int term_signal) {
  exec_req *r = (exec_req *)p->data;
  r->code = status;
  r->signal = term_signal;
  r->exited = 1;
  maybe_finish(r);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  exec_req *r = (exec_req *)h->data;
  pf_buf *b = h == (uv_handle_t *)&r->out ? &r->obuf : &r->ebuf;
  size_t room = PF_READ_CHUNK;
  (void)hint;
  /* one byte past the limit tells that there was more */
  if (r->max_output && r->max_output + 1 - b->len < room)
    room = r->max_output + 1 - b->len;
  if (pf_buf_reserve(b, room) < 0) {
    r->end = END_NOMEM;
    *buf = uv_buf_init(NULL, 0);  /* read_cb gets UV_ENOBUFS */
    return;
  }
  *buf = uv_buf_init(b->data + b->len, pf_io_chunk(room));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  exec_req *r = (exec_req *)s->data;
  int is_out = s == (uv_stream_t *)&r->out;
  pf_buf *b = is_out ? &r->obuf : &r->ebuf;
  (void)buf;
  if (nread > 0) {
    b->len += (size_t)nread;
    if (r->max_output && b->len > r->max_output) abandon(r, END_LIMIT);
    return;
  }
  if (nread == 0) return;  /* EAGAIN */
  if (nread == UV_ENOBUFS) {  /* the buffer cannot grow: do not hang */
    abandon(r, END_NOMEM);
    return;
  }
  /* EOF, or an error: this output is as complete as it gets */
  uv_read_stop(s);
  if (is_out) r->out_done = 1; else r->err_done = 1;
  maybe_finish(r);
}

static void on_write(uv_write_t *w, int status);

/* Input goes in chunks a uv_buf_t can describe; at its end, or on an
** error (EPIPE: the child did not read it all; fine), the pipe closes
** and the child sees EOF. */
static void write_next(exec_req *r) {
  if (r->input_off < r->input_len && (r->inited & H_IN)) {
    uv_buf_t b;
    r->chunk = pf_io_chunk(r->input_len - r->input_off);
    b = uv_buf_init(r->input + r->input_off, (unsigned)r->chunk);
    if (uv_write(&r->wreq, (uv_stream_t *)&r->in, &b, 1, on_write) == 0)
      return;
  }
  free(r->input);
  r->input = NULL;
  close_one(r, H_IN, (uv_handle_t *)&r->in);
}

static void on_write(uv_write_t *w, int status) {
  exec_req *r = (exec_req *)w->data;
  if (status < 0) r->input_off = r->input_len;
  else r->input_off += r->chunk;
  write_next(r);
}

static void on_timer(uv_timer_t *h) {
  abandon((exec_req *)h->data, END_TIMEOUT);
}

/* The task was cancelled: the group is killed, the child reaped, and
** every handle closed; the task is not woken. */
static void exec_cancel(pf_task *t, void *data) {
  exec_req *r = (exec_req *)data;
  (void)t;
  r->t = NULL;
  kill_group(r);
  if ((r->inited & H_PROC) && !r->exited) {
    int pid = r->proc.pid;
    close_all(r);   /* libuv stops watching the pid: reap it here */
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
    return;
  }
  close_all(r);
}

/* ------------------------------------------------------------ signals */

static const char SIGNALS_KEY = 'G';

static void on_signal(uv_signal_t *h, int signum) {
  exec_watch *w = (exec_watch *)h->data;
  for (pf_list *l = w->children.next; l != &w->children; l = l->next)
    kill_group(pf_list_entry(l, exec_req, watch_link));
  fflush(NULL);
  exit(128 + signum);
}

/* At lua_close: the handles close, and requests still open forget the
** list, which goes with this userdata. */
static int watch_gc(lua_State *L) {
  exec_watch *w = (exec_watch *)lua_touserdata(L, 1);
  for (int i = 0; i < 2; i++)
    if (w->sig[i] != NULL) uv_close((uv_handle_t *)w->sig[i], pf_close_free_cb);
  while (!pf_list_empty(&w->children))
    unwatch(pf_list_entry(w->children.next, exec_req, watch_link));
  return 0;
}

/* The binary's list of running children, or NULL. It asked for it with
** pf_exec_signals; on the first spawn, SIGINT and SIGTERM start to be
** watched (so the REPL keeps its Ctrl-C until then). The handles do not
** keep the loop alive, and close when the state does. */
static exec_watch *watch_signals(lua_State *L) {
  static const int sigs[2] = { SIGINT, SIGTERM };
  exec_watch *w;
  int type = lua_rawgetp(L, LUA_REGISTRYINDEX, &SIGNALS_KEY);
  w = type == LUA_TUSERDATA ? (exec_watch *)lua_touserdata(L, -1) : NULL;
  lua_pop(L, 1);
  if (type != LUA_TBOOLEAN) return w;
  w = (exec_watch *)lua_newuserdatauv(L, sizeof *w, 0);
  memset(w, 0, sizeof *w);
  pf_list_init(&w->children);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, watch_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &SIGNALS_KEY);
  for (int i = 0; i < 2; i++) {
    uv_signal_t *h = (uv_signal_t *)malloc(sizeof *h);
    if (h == NULL || uv_signal_init(pf_loop(L), h) < 0) { free(h); break; }
    w->sig[i] = h;
    h->data = w;
    pf_handle_internal((uv_handle_t *)h);
    uv_signal_start(h, on_signal, sigs[i]);
    uv_unref((uv_handle_t *)h);
  }
  return w;
}

void pf_exec_signals(lua_State *L) {
  lua_pushboolean(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &SIGNALS_KEY);
}

/* links a spawned child into the binary's list */
static void watch_child(exec_req *r, exec_watch *w) {
  if (w == NULL) return;
  r->watch = w;
  pf_list_push_head(&w->children, &r->watch_link);
}

/* ------------------------------------------------------------ options */

static const char *const OPTIONS[] = {
  "stdin", "cwd", "env", "timeout", "max_output", NULL
};

/* Every key of opts must be an option: a misspelt one is an error, not
** silently ignored. */
static void check_keys(lua_State *L, int opts) {
  lua_pushnil(L);
  while (lua_next(L, opts)) {
    int i;
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_error(L, "pf.exec: opts has a %s key; options are named by "
                    "strings", luaL_typename(L, -1));
    for (i = 0; OPTIONS[i] && strcmp(OPTIONS[i], lua_tostring(L, -1)); i++) {}
    if (OPTIONS[i] == NULL)
      luaL_error(L, "pf.exec: unknown option '%s' (options: stdin, cwd, "
                    "env, timeout, max_output)", lua_tostring(L, -1));
  }
}

static const char *opt_string(lua_State *L, int opts, const char *name,
                              size_t *len) {
  const char *s = NULL;
  size_t n = 0;
  if (lua_getfield(L, opts, name) != LUA_TNIL) {
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_error(L, "pf.exec: opts.%s must be a string (got %s)", name,
                 luaL_typename(L, -1));
    s = lua_tolstring(L, -1, &n);
  }
  lua_pop(L, 1);  /* still referenced by opts */
  if (len != NULL) *len = n;
  else if (s != NULL && pf_has_nul(s, n))
    luaL_error(L, "pf.exec: opts.%s contains a NUL byte", name);
  return s;
}

/* a positive number (or integer), or 0 if absent */
static double opt_positive(lua_State *L, int opts, const char *name,
                           int integer) {
  double v = 0;
  if (lua_getfield(L, opts, name) != LUA_TNIL) {
    int ok;
    if (integer) {
      lua_Integer n = lua_tointegerx(L, -1, &ok);
      v = (double)n;
      ok = ok && n > 0;
    } else {
      v = (double)lua_tonumberx(L, -1, &ok);
      ok = ok && v > 0;
    }
    if (!ok || lua_type(L, -1) != LUA_TNUMBER)
      luaL_error(L, "pf.exec: opts.%s must be a positive %s (got %s)", name,
                 integer ? "integer" : "number",
                 lua_type(L, -1) == LUA_TNUMBER ? lua_tostring(L, -1)
                                                : luaL_typename(L, -1));
  }
  lua_pop(L, 1);
  return v;
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
    size_t len;
    lua_rawgeti(L, idx, i);
    if (!lua_isstring(L, -1))
      luaL_error(L, "pf.exec: argv[%d] must be a string (got %s)", (int)i,
                 luaL_typename(L, -1));
    args[i - 1] = (char *)lua_tolstring(L, -1, &len);  /* a copy on the stack */
    if (pf_has_nul(args[i - 1], len))
      luaL_error(L, "pf.exec: argv[%d] contains a NUL byte", (int)i);
    lua_rawseti(L, -3, i);
  }
  args[n] = NULL;
  return args;
}

/* one entry of opts.env, name at -2 and value at -1, checked */
static void check_env_entry(lua_State *L) {
  size_t nlen, vlen;
  const char *name, *value;
  if (lua_type(L, -2) != LUA_TSTRING)
    luaL_error(L, "pf.exec: opts.env has a %s key; names must be strings",
               luaL_typename(L, -2));
  name = lua_tolstring(L, -2, &nlen);
  if (!lua_isstring(L, -1))
    luaL_error(L, "pf.exec: opts.env.%s must be a string (got %s)", name,
               luaL_typename(L, -1));
  if (nlen == 0 || memchr(name, '=', nlen) != NULL)
    luaL_error(L, "pf.exec: opts.env name '%s' is empty or contains '='",
               name);
  if (pf_has_nul(name, nlen))
    luaL_error(L, "pf.exec: an opts.env name contains a NUL byte");
  lua_pushvalue(L, -1);  /* a number is converted on a copy */
  value = lua_tolstring(L, -1, &vlen);
  if (pf_has_nul(value, vlen))
    luaL_error(L, "pf.exec: opts.env.%s contains a NUL byte", name);
  lua_pop(L, 1);
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
    check_env_entry(L);
    lua_pushvalue(L, -1);
    lua_pushfstring(L, "%s=%s", lua_tostring(L, -3), lua_tostring(L, -1));
    lua_rawseti(L, tbl + 1, ++n);
    lua_pop(L, 2);
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
  (void)status;
  switch ((int)lua_tointeger(L, top)) {
    case END_TIMEOUT:
      lua_rawgeti(L, 1, 1);
      return luaL_error(L, "pf.exec: %s: timeout after %f s",
                        lua_tostring(L, -1), (double)ctx / 1000.0);
    case END_LIMIT:
      lua_rawgeti(L, 1, 1);
      return luaL_error(L, "pf.exec: %s: output over opts.max_output; the "
                           "child was killed", lua_tostring(L, -1));
    case END_NOMEM:
      lua_rawgeti(L, 1, 1);
      return luaL_error(L, "pf.exec: %s: not enough memory for the output; "
                           "the child was killed", lua_tostring(L, -1));
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

/* the request, with its copy of the input; NULL when out of memory */
static exec_req *new_req(const char *input, size_t input_len) {
  exec_req *r = (exec_req *)calloc(1, sizeof *r);
  if (r == NULL || input == NULL) return r;
  r->input = (char *)malloc(input_len ? input_len : 1);
  if (r->input == NULL) { free(r); return NULL; }
  memcpy(r->input, input, input_len);
  r->input_len = input_len;
  return r;
}

static void set_stdio(uv_stdio_container_t *stdio, exec_req *r, int input) {
  if (input) {
    stdio[0].flags = UV_CREATE_PIPE | UV_READABLE_PIPE;
    stdio[0].data.stream = (uv_stream_t *)&r->in;
  } else {
    stdio[0].flags = UV_IGNORE;
  }
  stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
  stdio[1].data.stream = (uv_stream_t *)&r->out;
  stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
  stdio[2].data.stream = (uv_stream_t *)&r->err;
}

static int l_exec(lua_State *L) {
  uv_process_options_t po;
  uv_stdio_container_t stdio[3];
  exec_req *r;
  pf_task *t;
  const char *input, *cwd;
  size_t input_len = 0;
  double timeout, max_output;
  char **args, **env;
  exec_watch *watch;
  int err;
  luaL_checktype(L, 1, LUA_TTABLE);
  if (lua_isnoneornil(L, 2)) { lua_settop(L, 1); lua_newtable(L); }
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  t = pf_wait_begin(L, "pf.exec");
  if (t == NULL) return pf_wait_outside(L, l_exec, "pf.exec");
  check_keys(L, 2);
  args = make_args(L, 1);
  env = make_env(L, 2);
  input = opt_string(L, 2, "stdin", &input_len);
  cwd = opt_string(L, 2, "cwd", NULL);
  timeout = opt_positive(L, 2, "timeout", 0);
  max_output = opt_positive(L, 2, "max_output", 1);
  watch = watch_signals(L);
  if ((r = new_req(input, input_len)) == NULL)
    return luaL_error(L, "pf.exec: out of memory");
  r->max_output = max_output >= 9e18 ? (size_t)-2 : (size_t)max_output;
  if ((err = init_pipes(pf_loop(L), r, input != NULL)) < 0)
    return spawn_failed(L, r, args[0], err);
  memset(&po, 0, sizeof po);
  po.exit_cb = child_exit;
  po.file = args[0];
  po.args = args;
  po.env = env;
  po.cwd = cwd;
  po.flags = UV_PROCESS_DETACHED;   /* a process group to kill as one */
  po.stdio_count = 3;
  po.stdio = stdio;
  set_stdio(stdio, r, input != NULL);
  err = uv_spawn(pf_loop(L), &r->proc, &po);
  r->inited |= H_PROC;  /* initialized even when the spawn failed */
  pf_handle_internal((uv_handle_t *)&r->proc);
  if (err < 0) return spawn_failed(L, r, args[0], err);
  watch_child(r, watch);
  uv_read_start((uv_stream_t *)&r->out, on_alloc, on_read);
  uv_read_start((uv_stream_t *)&r->err, on_alloc, on_read);
  if (input != NULL) write_next(r);
  if (timeout > 0) {
    uv_update_time(pf_loop(L));
    uv_timer_init(pf_loop(L), &r->timer);
    pf_handle_internal((uv_handle_t *)&r->timer);
    r->inited |= H_TIMER;
    uv_timer_start(&r->timer, on_timer, pf_ms_from_seconds(timeout), 0);
  }
  r->t = t;
  pf_wait_park(t, exec_cancel, r);
  return pf_wait_yield(L, t, (lua_KContext)pf_ms_from_seconds(timeout), exec_k);
}

static const luaL_Reg exec_funcs[] = {
  {"exec", l_exec},
  {NULL, NULL}
};

void pf_open_exec(lua_State *L) {
  luaL_setfuncs(L, exec_funcs, 0);
}

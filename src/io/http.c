/*
** HTTP on libcurl's multi interface, driven by the scheduler's loop: a
** uv_poll per socket curl asks for (CURLMOPT_SOCKETFUNCTION) and one
** uv_timer (CURLMOPT_TIMERFUNCTION). One multi per Lua state keeps the
** connection cache, so requests to one host reuse connections.
**
** core.http_request(opts) runs a request in the calling task and returns
** its result. For streaming, core.http_start(opts) returns the transfer,
** a userdata the Lua layer holds in a to-be-closed variable: its methods
** :next() (the next buffered body chunk) and :result() wait in the task.
** curl's callbacks only buffer and wake the task; they never call Lua.
**
** Once warm, a request allocates nothing on the C side: easy handles and
** their buffers are pooled (slot), and so are the uv_polls (sock).
**
** A uv_poll watches a socket only while curl wants it watched: it is
** closed when curl says CURL_POLL_REMOVE, which curl does before it
** closes the socket (sometimes without CURLOPT_CLOSESOCKETFUNCTION). A
** poll left on a closed fd makes libuv abort on its next epoll_ctl, and
** closing it later would unregister whatever reused the fd number.
**
** libcurl is not linked: it and the ~35 libraries it pulls in would cost
** every start of the program several ms of dynamic loading. The first
** request dlopens it and fills the context's table of functions.
*/
#include <ctype.h>
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <curl/curl.h>

#include "io.h"

#define CURL_SONAME "libcurl.so.4"
#define CURL_MIN_VERSION 0x075500   /* 7.85.0: CURLOPT_PROTOCOLS_STR */

#define XFER_MT "pocketflow.http.transfer"
#define STREAM_HIGH_WATER (1u << 20)   /* buffered bytes that pause a stream */
#define POOL_MAX 64                    /* idle easy handles (and polls) kept */
#define IDLE_CONNS 64                  /* CURLMOPT_MAXCONNECTS at most */
#define TOTAL_MIN 8                    /* CURLMOPT_MAX_TOTAL_CONNECTIONS at least */
#define BUF_KEEP (64u << 10)           /* larger buffers are not kept idle */

static const char HTTP_KEY = 'H';

typedef struct xfer xfer;
typedef struct sock sock;
typedef struct slot slot;

/* the libcurl functions used here, found with dlsym as "curl_" name */
#define CURL_FUNCS(X) \
  X(CURLcode, global_init, (long)) \
  X(void, global_cleanup, (void)) \
  X(curl_version_info_data *, version_info, (CURLversion)) \
  X(CURL *, easy_init, (void)) \
  X(void, easy_cleanup, (CURL *)) \
  X(void, easy_reset, (CURL *)) \
  X(CURLcode, easy_setopt, (CURL *, CURLoption, ...)) \
  X(CURLcode, easy_getinfo, (CURL *, CURLINFO, ...)) \
  X(CURLcode, easy_pause, (CURL *, int)) \
  X(const char *, easy_strerror, (CURLcode)) \
  X(struct curl_slist *, slist_append, (struct curl_slist *, const char *)) \
  X(void, slist_free_all, (struct curl_slist *)) \
  X(CURLM *, multi_init, (void)) \
  X(CURLMcode, multi_cleanup, (CURLM *)) \
  X(CURLMcode, multi_setopt, (CURLM *, CURLMoption, ...)) \
  X(CURLMcode, multi_add_handle, (CURLM *, CURL *)) \
  X(CURLMcode, multi_remove_handle, (CURLM *, CURL *)) \
  X(CURLMcode, multi_socket_action, (CURLM *, curl_socket_t, int, int *)) \
  X(CURLMcode, multi_assign, (CURLM *, curl_socket_t, void *)) \
  X(CURLMsg *, multi_info_read, (CURLM *, int *))

typedef struct curl_api {
#define X(ret, name, args) ret (*name) args;
  CURL_FUNCS(X)
#undef X
} curl_api;

typedef struct http_ctx {
  void *lib;            /* libcurl's dlopen handle, NULL until loaded */
  curl_api c;
  CURLM *multi;
  uv_loop_t *loop;
  uv_timer_t *timer;
  pf_list xfers;        /* transfers not yet released */
  pf_list live;         /* polls curl watches a socket with */
  pf_list closing;      /* polls in uv_close, back to 'spare' when closed */
  pf_list spare;        /* closed polls kept for reuse, up to POOL_MAX */
  int nspare;
  pf_list idle;         /* pooled easy handles, up to POOL_MAX */
  int nidle;
  struct curl_slist *expect;   /* the headers of a request without any */
  int closed;
  int warned_insecure;  /* verify = false was warned about */
} http_ctx;

/* An easy handle with the buffers of its transfer, reused across requests
** (curl_easy_reset) instead of made and freed for each. */
struct slot {
  CURL *easy;
  pf_buf body, head;
  pf_list link;         /* in the idle list */
  char errbuf[CURL_ERROR_SIZE];
};

/* A uv_poll on a socket curl watches, from curl's first interest in the
** socket to its CURL_POLL_REMOVE (curl_multi_assign ties it to the fd).
** It is in one of the context's lists: live, closing or spare. */
struct sock {
  uv_poll_t poll;
  http_ctx *h;          /* NULL once the context is gone: the close frees */
  pf_list link;         /* in live, closing or spare */
  curl_socket_t fd;
  int events;           /* UV_ events the poll is started with */
  int want;             /* UV_ events curl asked for */
  unsigned char closing;
};

enum { W_NONE, W_DATA, W_DONE };   /* what a parked task waits for */

/* A transfer: a userdata whose user values are its method and URL (for
** messages). It holds a slot from its start until released. */
struct xfer {
  http_ctx *h;
  slot *s;              /* NULL once released */
  CURL *easy;           /* s->easy */
  struct curl_slist *hdrs;   /* request headers of its own, or NULL */
  pf_list link;         /* in h->xfers while it holds a slot */
  pf_task *t;           /* the parked task, or NULL */
  CURLcode result;
  int sys_errno;        /* why on_opensocket could not make a socket */
  int wait;
  unsigned char active, done, stream, paused, retried;
};

/* --------------------------------------------------------------- slots */

static void slot_free(http_ctx *h, slot *s) {
  h->c.easy_cleanup(s->easy);
  pf_buf_free(&s->body);
  pf_buf_free(&s->head);
  free(s);
}

#define ENTRY(l, type) pf_list_entry(l, type, link)

static slot *slot_get(http_ctx *h) {
  slot *s;
  if (!pf_list_empty(&h->idle)) {
    s = ENTRY(h->idle.next, slot);
    pf_list_remove(&s->link);
    h->nidle--;
    return s;
  }
  s = (slot *)calloc(1, sizeof *s);
  if (s == NULL) return NULL;
  if ((s->easy = h->c.easy_init()) == NULL) {
    free(s);
    return NULL;
  }
  return s;
}

static void buf_recycle(pf_buf *b) {
  if (b->cap > BUF_KEEP) pf_buf_free(b);
  b->len = 0;
}

/* Back to the pool, out of the multi; the handle forgets every option. */
static void slot_put(http_ctx *h, slot *s) {
  if (h->nidle >= POOL_MAX) {
    slot_free(h, s);
    return;
  }
  h->c.easy_reset(s->easy);
  buf_recycle(&s->body);
  buf_recycle(&s->head);
  s->errbuf[0] = '\0';
  pf_list_push_head(&h->idle, &s->link);
  h->nidle++;
}

/* ----------------------------------------------------------- transfers */

static void xfer_release(xfer *x) {
  http_ctx *h = x->h;
  if (x->s == NULL) return;
  if (x->active) h->c.multi_remove_handle(h->multi, x->easy);
  x->active = 0;
  slot_put(h, x->s);
  x->s = NULL;
  x->easy = NULL;
  h->c.slist_free_all(x->hdrs);
  x->hdrs = NULL;
  pf_list_remove(&x->link);
}

static void xfer_wake(xfer *x) {
  pf_task *t = x->t;
  x->t = NULL;
  x->wait = W_NONE;
  pf_wait_wake(t, 0);
}

/* A request on a kept-alive connection that the server reset just after
** curl's liveness check fails to send before any answer came; curl does
** not retry that. Once per transfer, it starts again on a new connection. */
static int retry_reused(http_ctx *h, xfer *x, CURLcode r) {
  long conns = 1;
  if (r != CURLE_SEND_ERROR || x->retried || x->s->head.len || x->s->body.len)
    return 0;
  h->c.easy_getinfo(x->easy, CURLINFO_NUM_CONNECTS, &conns);
  if (conns != 0) return 0;   /* it was a new connection */
  x->retried = 1;
  x->s->errbuf[0] = '\0';
  h->c.easy_setopt(x->easy, CURLOPT_FRESH_CONNECT, 1L);
  return h->c.multi_add_handle(h->multi, x->easy) == CURLM_OK;
}

/* Transfers that ended: out of the multi, their task woken. */
static void check_done(http_ctx *h) {
  CURLMsg *m;
  int left;
  while ((m = h->c.multi_info_read(h->multi, &left)) != NULL) {
    xfer *x = NULL;
    CURLcode r = m->data.result;
    if (m->msg != CURLMSG_DONE) continue;
    h->c.easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
    h->c.multi_remove_handle(h->multi, m->easy_handle);
    if (retry_reused(h, x, r)) continue;
    x->result = r;
    x->done = 1;
    x->active = 0;
    if (x->t) xfer_wake(x);
  }
}

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
  xfer *x = (xfer *)ud;
  size_t len = size * n;
  if (x->stream && x->s->body.len >= STREAM_HIGH_WATER) {
    x->paused = 1;   /* curl keeps this chunk until the task takes some */
    return CURL_WRITEFUNC_PAUSE;
  }
  if (pf_buf_add(&x->s->body, p, len) < 0) return 0;  /* CURLE_WRITE_ERROR */
  if (x->t && x->wait == W_DATA) xfer_wake(x);
  return len;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud) {
  xfer *x = (xfer *)ud;
  size_t len = size * n;
  if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) x->s->head.len = 0;  /* a new response */
  if (pf_buf_add(&x->s->head, p, len) < 0) return 0;
  return len;
}

/* --------------------------------------------------- curl <-> the loop */

static void on_sock_closed(uv_handle_t *p) {
  sock *s = (sock *)p->data;
  http_ctx *h = s->h;
  if (h == NULL) {   /* the context went first */
    free(s);
    return;
  }
  pf_list_remove(&s->link);
  if (h->nspare >= POOL_MAX) {
    free(s);
    return;
  }
  pf_list_push_head(&h->spare, &s->link);
  h->nspare++;
}

/* Closes the poll while its fd is still open (curl closes it after). */
static void sock_close(http_ctx *h, sock *s) {
  pf_list_remove(&s->link);
  pf_list_push_head(&h->closing, &s->link);
  s->closing = 1;
  uv_close((uv_handle_t *)&s->poll, on_sock_closed);
}

static sock *sock_new(http_ctx *h, curl_socket_t fd) {
  sock *s = NULL;
  if (!pf_list_empty(&h->spare)) {
    s = ENTRY(h->spare.next, sock);
    pf_list_remove(&s->link);
    h->nspare--;
  } else if ((s = (sock *)malloc(sizeof *s)) == NULL) {
    return NULL;
  }
  memset(s, 0, sizeof *s);
  if (uv_poll_init_socket(h->loop, &s->poll, fd) < 0) {
    free(s);
    return NULL;
  }
  pf_handle_internal((uv_handle_t *)&s->poll);
  s->h = h;
  s->fd = fd;
  s->poll.data = s;
  pf_list_push_head(&h->live, &s->link);
  return s;
}

static void on_poll(uv_poll_t *p, int status, int events);

/* Each uv_poll_start costs two epoll_ctl calls in libuv, even for the
** same events: only when they change. */
static int sock_watch(sock *s, int events) {
  int r;
  if (events == s->events) return 0;
  r = events ? uv_poll_start(&s->poll, events, on_poll)
             : uv_poll_stop(&s->poll);
  if (r < 0) return -1;
  s->events = events;
  return 0;
}

/* On a poll error (EPOLLERR: a reset) libuv has stopped the poll. curl
** is not told CURL_CSELECT_ERR, which it reports as a failed send: it
** reads and writes, and finds the real state (the reset, an EOF, data).
** curl only calls on_socket when what it wants changes, so the poll is
** started again here if the socket is still watched. */
static void on_poll(uv_poll_t *p, int status, int events) {
  sock *s = (sock *)p->data;
  http_ctx *h = s->h;
  int flags = 0, running;
  if (status < 0) {
    s->events = 0;
    flags = CURL_CSELECT_IN | CURL_CSELECT_OUT;
  }
  if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  h->c.multi_socket_action(h->multi, s->fd, flags, &running);
  if (!s->closing && s->events == 0 && s->want) sock_watch(s, s->want);
  check_done(h);
}

static int on_socket(CURL *e, curl_socket_t fd, int what, void *ud, void *sp) {
  http_ctx *h = (http_ctx *)ud;
  sock *s = (sock *)sp;
  int events = 0;
  (void)e;
  if (what == CURL_POLL_REMOVE) {
    if (s) sock_close(h, s);
    return 0;
  }
  if (s == NULL) {
    if ((s = sock_new(h, fd)) == NULL) return -1;
    h->c.multi_assign(h->multi, fd, s);
  }
  if (what & CURL_POLL_IN) events |= UV_READABLE;
  if (what & CURL_POLL_OUT) events |= UV_WRITABLE;
  s->want = events;
  return sock_watch(s, events);
}

/* Sockets are made here to be close-on-exec (not inherited by pf.exec's
** children), and so that running out of descriptors is named. */
static curl_socket_t on_opensocket(void *ud, curlsocktype purpose,
                                   struct curl_sockaddr *a) {
  xfer *x = (xfer *)ud;
  int type = a->socktype;
  curl_socket_t fd;
  (void)purpose;
#ifdef SOCK_CLOEXEC
  type |= SOCK_CLOEXEC;
#endif
  fd = socket(a->family, type, a->protocol);
  if (fd == CURL_SOCKET_BAD) x->sys_errno = errno;
  return fd;
}

static void on_timer(uv_timer_t *t) {
  http_ctx *h = (http_ctx *)t->data;
  int running;
  h->c.multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_done(h);
}

static int on_curl_timer(CURLM *m, long ms, void *ud) {
  http_ctx *h = (http_ctx *)ud;
  (void)m;
  if (ms < 0) {
    uv_timer_stop(h->timer);
    return 0;
  }
  uv_update_time(h->loop);   /* ms counts from now, not the loop's last turn */
  uv_timer_start(h->timer, on_timer, (uint64_t)ms, 0);
  return 0;
}

/* ------------------------------------------------------------- libcurl */

/* Raises "pf.http: <what>: <dlerror()>"; lib is closed after dlerror()
** was read. */
static int load_error(lua_State *L, void *lib, const char *what) {
  const char *why = dlerror();
  lua_pushfstring(L, "pf.http: %s: %s", what, why ? why : "unknown error");
  if (lib) dlclose(lib);
  return lua_error(L);
}

/* RTLD_NODELETE: libcurl and the TLS library it pulls in register
** handlers that outlive the Lua state (atexit, thread keys), so the
** library stays mapped after dlclose. */
static void *curl_open(lua_State *L, curl_api *c) {
  void *lib = dlopen(CURL_SONAME, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE), *sym;
  if (lib == NULL) load_error(L, NULL, "cannot load " CURL_SONAME);
#define X(ret, name, args) \
  if ((sym = dlsym(lib, "curl_" #name)) == NULL) \
    load_error(L, lib, CURL_SONAME " has no curl_" #name); \
  c->name = (ret (*) args)sym;
  CURL_FUNCS(X)
#undef X
  return lib;
}

static void check_version(lua_State *L, http_ctx *h) {
  const curl_version_info_data *v = h->c.version_info(CURLVERSION_NOW);
  if (v->version_num < CURL_MIN_VERSION) {
    lua_pushfstring(L, "pf.http: %s is libcurl %s; 7.85.0 or later is needed",
                    CURL_SONAME, v->version);
    dlclose(h->lib);
    h->lib = NULL;
    lua_error(L);
  }
}

/* Bounds on connections, so requests cannot take every descriptor: open
** at once, half the soft RLIMIT_NOFILE (at least TOTAL_MIN; transfers
** beyond wait in curl's queue); kept open idle, IDLE_CONNS or half the
** former if less. */
static void multi_limits(http_ctx *h) {
  struct rlimit r;
  long total = 0, idle = IDLE_CONNS;
  if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur != RLIM_INFINITY &&
      r.rlim_cur / 2 < (rlim_t)LONG_MAX) {
    total = (long)(r.rlim_cur / 2);
    if (total < TOTAL_MIN) total = TOTAL_MIN;
    if (idle > total / 2) idle = total / 2;
  }
  h->c.multi_setopt(h->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, total);
  h->c.multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, idle);
}

/* The multi handle and its timer; undoes curl_global_init on failure. */
static void multi_open(lua_State *L, http_ctx *h) {
  const curl_api *c = &h->c;
  h->multi = c->multi_init();
  h->timer = (uv_timer_t *)malloc(sizeof(uv_timer_t));
  /* no "Expect: 100-continue" round trip before large bodies */
  h->expect = c->slist_append(NULL, "Expect:");
  if (h->multi == NULL || h->timer == NULL || h->expect == NULL) {
    if (h->multi) c->multi_cleanup(h->multi);
    free(h->timer);
    c->slist_free_all(h->expect);
    h->multi = NULL;
    h->timer = NULL;
    h->expect = NULL;
    c->global_cleanup();
    dlclose(h->lib);
    h->lib = NULL;
    luaL_error(L, "pf.http: out of memory");
  }
  uv_timer_init(h->loop, h->timer);
  pf_handle_internal((uv_handle_t *)h->timer);
  h->timer->data = h;
  c->multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  c->multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
  c->multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
  c->multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
  multi_limits(h);
}

/* libcurl, its global state and the multi, on the first request */
static void ctx_load(lua_State *L, http_ctx *h) {
  if (h->lib) return;
  if (h->closed) luaL_error(L, "pf.http: the Lua state is closing");
  h->lib = curl_open(L, &h->c);
  check_version(L, h);
  if (h->c.global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    dlclose(h->lib);
    h->lib = NULL;
    luaL_error(L, "pf.http: curl_global_init failed");
  }
  multi_open(L, h);
}

/* ------------------------------------------------------------- context */

static void pool_free(http_ctx *h) {
  while (!pf_list_empty(&h->idle)) {
    slot *s = ENTRY(h->idle.next, slot);
    pf_list_remove(&s->link);
    slot_free(h, s);
  }
  h->nidle = 0;
}

/* Before curl_multi_cleanup closes the sockets: their polls close while
** the fds are open. Polls still closing are left to free themselves. */
static void socks_close(http_ctx *h) {
  while (!pf_list_empty(&h->live)) {
    sock *s = ENTRY(h->live.next, sock);
    h->c.multi_assign(h->multi, s->fd, NULL);
    sock_close(h, s);
  }
}

static void socks_free(http_ctx *h) {
  pf_list *l;
  for (l = h->closing.next; l != &h->closing; l = l->next)
    ENTRY(l, sock)->h = NULL;
  pf_list_init(&h->closing);   /* they free themselves, unlinked */
  while (!pf_list_empty(&h->spare)) {
    sock *s = ENTRY(h->spare.next, sock);
    pf_list_remove(&s->link);
    free(s);
  }
  h->nspare = 0;
}

static int ctx_gc(lua_State *L) {
  http_ctx *h = (http_ctx *)lua_touserdata(L, 1);
  h->closed = 1;
  if (h->lib == NULL) return 0;
  while (!pf_list_empty(&h->xfers)) xfer_release(ENTRY(h->xfers.next, xfer));
  socks_close(h);
  h->c.multi_cleanup(h->multi);   /* closes the kept connections */
  h->multi = NULL;
  pool_free(h);
  h->c.slist_free_all(h->expect);
  h->expect = NULL;
  socks_free(h);
  uv_close((uv_handle_t *)h->timer, pf_close_free_cb);
  h->timer = NULL;
  h->c.global_cleanup();
  dlclose(h->lib);
  h->lib = NULL;
  return 0;
}

static http_ctx *ctx_get(lua_State *L) {
  http_ctx *h;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &HTTP_KEY);
  h = (http_ctx *)lua_touserdata(L, -1);
  lua_pop(L, 1);
  return h;
}

/* The state's context, made once: loading the module again finds it.
** Made after the scheduler, so it is finalized first at lua_close. */
static void ctx_open(lua_State *L) {
  http_ctx *h;
  if (ctx_get(L)) return;
  h = (http_ctx *)lua_newuserdatauv(L, sizeof *h, 0);
  memset(h, 0, sizeof *h);
  pf_list_init(&h->xfers);
  pf_list_init(&h->live);
  pf_list_init(&h->closing);
  pf_list_init(&h->spare);
  pf_list_init(&h->idle);
  h->loop = pf_loop(L);
  lua_newtable(L);
  lua_pushcfunction(L, ctx_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &HTTP_KEY);
}

/* ------------------------------------------------------ core.http_start */

/* Pushes opts.name (index 1): a string, or nil, then NULL. Without len
** the string goes to curl as a C string: a NUL byte in it is an error. */
static const char *opt_string(lua_State *L, const char *name, size_t *len) {
  size_t n;
  const char *s;
  int t = lua_getfield(L, 1, name);
  if (t == LUA_TNIL) return NULL;
  if (t != LUA_TSTRING)
    luaL_error(L, "pf.http: %s must be a string (got %s)", name,
               lua_typename(L, t));
  s = lua_tolstring(L, -1, &n);
  if (len) *len = n;
  else if (strlen(s) != n) luaL_error(L, "pf.http: %s contains a NUL byte", name);
  return s;
}

/* Request headers of the transfer's own when opts has some; the
** context's list (only "Expect:") otherwise. */
static void set_headers(lua_State *L, xfer *x) {
  const curl_api *c = &x->h->c;
  struct curl_slist *l = x->h->expect;
  if (lua_getfield(L, 1, "headers") == LUA_TTABLE) {
    x->hdrs = c->slist_append(NULL, "Expect:");
    if (x->hdrs == NULL) luaL_error(L, "pf.http: out of memory");
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      if (lua_type(L, -2) != LUA_TSTRING || !lua_isstring(L, -1))
        luaL_error(L, "pf.http: headers must map names to strings");
      lua_pushfstring(L, "%s: %s", lua_tostring(L, -2), lua_tostring(L, -1));
      l = c->slist_append(x->hdrs, lua_tostring(L, -1));
      if (l == NULL) luaL_error(L, "pf.http: out of memory");
      x->hdrs = l;
      lua_pop(L, 2);
    }
    l = x->hdrs;
  } else if (!lua_isnil(L, -1)) {
    luaL_error(L, "pf.http: headers must be a table (got %s)",
               luaL_typename(L, -1));
  }
  lua_pop(L, 1);
  c->easy_setopt(x->easy, CURLOPT_HTTPHEADER, l);
}

static void set_method(xfer *x, const char *method, const char *body,
                       size_t blen) {
  const curl_api *c = &x->h->c;
  CURL *e = x->easy;
  if (strcmp(method, "HEAD") == 0) {
    c->easy_setopt(e, CURLOPT_NOBODY, 1L);
    return;
  }
  if (body) {
    c->easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
    c->easy_setopt(e, CURLOPT_COPYPOSTFIELDS, body);
  }
  if (strcmp(method, "POST") != 0 && (body || strcmp(method, "GET") != 0))
    c->easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
}

/* the options every transfer has: after curl_easy_reset, set again */
static void set_callbacks(xfer *x) {
  const curl_api *c = &x->h->c;
  CURL *e = x->easy;
  c->easy_setopt(e, CURLOPT_PRIVATE, (char *)x);
  c->easy_setopt(e, CURLOPT_ERRORBUFFER, x->s->errbuf);
  c->easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  c->easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  c->easy_setopt(e, CURLOPT_USERAGENT, "pocketflow/" PF_VERSION);
  c->easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  c->easy_setopt(e, CURLOPT_WRITEDATA, x);
  c->easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  c->easy_setopt(e, CURLOPT_HEADERDATA, x);
  c->easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_opensocket);
  c->easy_setopt(e, CURLOPT_OPENSOCKETDATA, x);
}

static void set_options(lua_State *L, xfer *x, const char *url) {
  const curl_api *c = &x->h->c;
  CURL *e = x->easy;
  c->easy_setopt(e, CURLOPT_URL, url);
  lua_getfield(L, 1, "follow");
  if (lua_isnil(L, -1) || lua_toboolean(L, -1)) {
    c->easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
    c->easy_setopt(e, CURLOPT_MAXREDIRS, 10L);
  }
  lua_pop(L, 1);
  if (lua_getfield(L, 1, "timeout") != LUA_TNIL) {
    int isnum;
    double timeout = (double)lua_tonumberx(L, -1, &isnum);
    if (!isnum || !(timeout > 0))
      luaL_error(L, "pf.http: timeout must be a positive number of seconds");
    c->easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)pf_ms_from_seconds(timeout));
  }
  lua_pop(L, 1);
  lua_getfield(L, 1, "stream");
  x->stream = (unsigned char)lua_toboolean(L, -1);
  lua_pop(L, 1);
}

/* A string option given to curl as it is (curl copies it), if set. */
static void set_string(lua_State *L, xfer *x, const char *name, CURLoption o) {
  const char *v = opt_string(L, name, NULL);
  if (v) x->h->c.easy_setopt(x->easy, o, v);
  lua_pop(L, 1);
}

/* TLS and proxy options. Without 'proxy', curl takes http_proxy,
** https_proxy and no_proxy from the environment. */
static void set_tls(lua_State *L, xfer *x) {
  http_ctx *h = x->h;
  set_string(L, x, "ca_file", CURLOPT_CAINFO);
  set_string(L, x, "client_cert", CURLOPT_SSLCERT);
  set_string(L, x, "client_key", CURLOPT_SSLKEY);
  set_string(L, x, "proxy", CURLOPT_PROXY);
  lua_getfield(L, 1, "verify");
  if (!lua_isnil(L, -1) && !lua_toboolean(L, -1)) {
    h->c.easy_setopt(x->easy, CURLOPT_SSL_VERIFYPEER, 0L);
    h->c.easy_setopt(x->easy, CURLOPT_SSL_VERIFYHOST, 0L);
    h->c.easy_setopt(x->easy, CURLOPT_PROXY_SSL_VERIFYPEER, 0L);
    h->c.easy_setopt(x->easy, CURLOPT_PROXY_SSL_VERIFYHOST, 0L);
    if (!h->warned_insecure) {
      h->warned_insecure = 1;
      pf_warn(L, "pf.http: verify = false: TLS certificates and host names "
                 "are not checked (this warning is given once)");
    }
  }
  lua_pop(L, 1);
}

/* A new transfer on the stack, holding a slot; method and URL (indices 3
** and 2) are kept as its user values. */
static xfer *xfer_new(lua_State *L, http_ctx *h) {
  xfer *x = (xfer *)lua_newuserdatauv(L, sizeof *x, 2);
  memset(x, 0, sizeof *x);
  x->h = h;
  luaL_setmetatable(L, XFER_MT);
  lua_pushvalue(L, 3);
  lua_setiuservalue(L, -2, 1);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, -2, 2);
  if ((x->s = slot_get(h)) == NULL) luaL_error(L, "pf.http: out of memory");
  x->easy = x->s->easy;
  pf_list_push_head(&h->xfers, &x->link);
  return x;
}

/* Replaces the string on top with "pf.http: METHOD url: " .. it; the
** transfer is at idx. */
static void xfer_message(lua_State *L, int idx) {
  lua_getiuservalue(L, idx, 1);
  lua_getiuservalue(L, idx, 2);
  lua_pushfstring(L, "pf.http: %s %s: %s", lua_tostring(L, -2),
                  lua_tostring(L, -1), lua_tostring(L, -3));
  lua_replace(L, -4);
  lua_pop(L, 2);
}

/* Pushes opts.method as tostring() gives it, upper-cased; "GET" if nil. */
static const char *push_method(lua_State *L) {
  size_t n, i;
  const char *m;
  if (lua_getfield(L, 1, "method") == LUA_TNIL) {
    lua_pop(L, 1);
    return lua_pushliteral(L, "GET");
  }
  m = luaL_tolstring(L, -1, &n);
  lua_remove(L, -2);
  for (i = 0; i < n; i++)
    if (m[i] >= 'a' && m[i] <= 'z') break;
  if (i < n) {   /* "post" -> "POST" */
    luaL_Buffer b;
    char *d = luaL_buffinitsize(L, &b, n);
    for (i = 0; i < n; i++)
      d[i] = (char)toupper((unsigned char)m[i]);
    luaL_pushresultsize(&b, n);
    lua_remove(L, -2);
    m = lua_tostring(L, -1);
  }
  return m;
}

/* Reads opts (index 1) and starts the transfer, pushed at index 5 above
** the URL, the method and the body (or nil). */
static xfer *xfer_start(lua_State *L) {
  http_ctx *h = ctx_get(L);
  size_t blen = 0;
  const char *url, *method, *body;
  xfer *x;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  url = opt_string(L, "url", NULL);
  if (url == NULL) luaL_error(L, "pf.http: url is required");
  method = push_method(L);
  body = opt_string(L, "body", &blen);
  ctx_load(L, h);
  x = xfer_new(L, h);
  set_callbacks(x);
  set_options(L, x, url);
  set_tls(L, x);
  set_headers(L, x);
  set_method(x, method, body, blen);
  if (h->c.multi_add_handle(h->multi, x->easy) != CURLM_OK) {
    lua_pushliteral(L, "cannot start the transfer");
    xfer_message(L, 5);
    lua_error(L);
  }
  x->active = 1;
  return x;
}

/* core.http_start(opts): a transfer, already running */
static int l_http_start(lua_State *L) {
  xfer_start(L);
  return 1;
}

/* ------------------------------------------------------- waiting on it */

static void xfer_cancel(pf_task *t, void *data) {
  xfer *x = (xfer *)data;
  (void)t;
  x->t = NULL;
  x->wait = W_NONE;
  xfer_release(x);
}

static xfer *check_xfer(lua_State *L) {
  xfer *x = (xfer *)luaL_checkudata(L, 1, XFER_MT);
  if (x->s == NULL) luaL_error(L, "pf.http: the transfer was closed");
  return x;
}

static int park(lua_State *L, xfer *x, int what, lua_KFunction k) {
  pf_task *t = pf_wait_begin(L, "pf.http");
  if (t == NULL) return pf_wait_outside(L, NULL, "pf.http");
  x->t = t;
  x->wait = what;
  pf_wait_park(t, xfer_cancel, x);
  return pf_wait_yield(L, t, 0, k);
}

/* The transfer at idx failed: raises libcurl's reason, released. */
static int raise_failure(lua_State *L, xfer *x, int idx) {
  const char *why = x->h->c.easy_strerror(x->result);
  const char *detail = x->s->errbuf[0] ? x->s->errbuf : why;
  if (x->result == CURLE_OPERATION_TIMEDOUT)
    lua_pushfstring(L, "timeout (%s)", detail);
  else if (x->result == CURLE_OUT_OF_MEMORY)   /* 7.88 says so for these */
    lua_pushfstring(L, "%s (%s, or a response header line over 100 KB)",
                    why, detail);
  else if (x->sys_errno == EMFILE || x->sys_errno == ENFILE)
    lua_pushfstring(L, "too many open files: no descriptor for a socket "
                    "(%s; see ulimit -n)", detail);
  else
    lua_pushfstring(L, "%s (%s)", why, detail);
  xfer_message(L, idx);
  xfer_release(x);
  return lua_error(L);
}

/* transfer:next(): the body bytes that arrived since the last call,
** waiting for some; nil at the end */
static int next_k(lua_State *L, int status, lua_KContext ctx) {
  xfer *x = check_xfer(L);
  pf_buf *body = &x->s->body;
  (void)status; (void)ctx;
  if (body->len > 0) {
    lua_pushlstring(L, body->data, body->len);
    body->len = 0;
    if (x->paused) {
      x->paused = 0;
      x->h->c.easy_pause(x->easy, CURLPAUSE_CONT);
    }
    return 1;
  }
  if (x->done) {
    if (x->result != CURLE_OK) return raise_failure(L, x, 1);
    lua_pushnil(L);
    return 1;
  }
  return park(L, x, W_DATA, next_k);
}

static int l_next(lua_State *L) {
  lua_settop(L, 1);
  return next_k(L, LUA_OK, 0);
}

static void push_lower(lua_State *L, const char *p, size_t n) {
  char small[64], *d = small;
  luaL_Buffer b;
  size_t i;
  if (n > sizeof small) d = luaL_buffinitsize(L, &b, n);
  for (i = 0; i < n; i++)
    d[i] = (p[i] >= 'A' && p[i] <= 'Z') ? (char)(p[i] + ('a' - 'A')) : p[i];
  if (d == small) lua_pushlstring(L, small, n);
  else luaL_pushresultsize(&b, n);
}

/* "Name: value" lines after the status line, into a table with lower-case
** names; repeated names are joined with ", " */
static void push_headers(lua_State *L, const char *p, size_t n) {
  const char *end = p + n, *eol;
  int lines = 0;
  for (eol = p; (eol = memchr(eol, '\n', (size_t)(end - eol))) != NULL; eol++)
    lines++;
  lua_createtable(L, 0, lines > 2 ? lines - 2 : 0);  /* not the status, blank */
  eol = memchr(p, '\n', n);
  p = eol ? eol + 1 : end;   /* skip the status line */
  for (; p < end; p = eol + 1) {
    const char *colon, *v, *ve;
    eol = memchr(p, '\n', (size_t)(end - p));
    if (eol == NULL) eol = end;
    colon = memchr(p, ':', (size_t)(eol - p));
    if (colon == NULL) continue;
    for (v = colon + 1; v < eol && (*v == ' ' || *v == '\t'); v++) {}
    for (ve = eol; ve > v && isspace((unsigned char)ve[-1]); ve--) {}
    push_lower(L, p, (size_t)(colon - p));
    lua_pushvalue(L, -1);
    if (lua_rawget(L, -3) == LUA_TSTRING) {
      lua_pushliteral(L, ", ");
      lua_pushlstring(L, v, (size_t)(ve - v));
      lua_concat(L, 3);
    } else {
      lua_pop(L, 1);
      lua_pushlstring(L, v, (size_t)(ve - v));
    }
    lua_rawset(L, -3);
    if (eol == end) break;
  }
}

/* The ended transfer at idx: its result (or its error), released. */
static int xfer_result(lua_State *L, xfer *x, int idx) {
  slot *s = x->s;
  long code = 0;
  char *url = NULL;
  if (x->result != CURLE_OK) return raise_failure(L, x, idx);
  x->h->c.easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &code);
  x->h->c.easy_getinfo(x->easy, CURLINFO_EFFECTIVE_URL, &url);
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, code);
  lua_setfield(L, -2, "status");
  if (url) lua_pushstring(L, url);
  else lua_getiuservalue(L, idx, 2);
  lua_setfield(L, -2, "url");
  push_headers(L, s->head.data ? s->head.data : "", s->head.len);
  lua_setfield(L, -2, "headers");
  lua_pushlstring(L, s->body.data ? s->body.data : "", s->body.len);
  lua_setfield(L, -2, "body");
  xfer_release(x);
  return 1;
}

/* transfer:result(): waits for the end; { status =, headers =, body = } */
static int result_k(lua_State *L, int status, lua_KContext ctx) {
  xfer *x = check_xfer(L);
  (void)status; (void)ctx;
  if (!x->done) {
    if (x->paused) {   /* nobody streams: take everything */
      x->paused = 0;
      x->stream = 0;
      x->h->c.easy_pause(x->easy, CURLPAUSE_CONT);
    }
    return park(L, x, W_DONE, result_k);
  }
  return xfer_result(L, x, 1);
}

static int l_result(lua_State *L) {
  lua_settop(L, 1);
  return result_k(L, LUA_OK, 0);
}

/* core.http_request(opts): runs the request in the calling task (or as
** the main task of an implicit pf.run) and returns its result, with no
** transfer object for the Lua layer to hold: not for streaming. */
static int request_k(lua_State *L, int status, lua_KContext ctx) {
  xfer *x = (xfer *)lua_touserdata(L, 5);
  (void)status; (void)ctx;
  if (!x->done) return park(L, x, W_DONE, request_k);
  return xfer_result(L, x, 5);
}

static int l_http_request(lua_State *L) {
  if (pf_wait_begin(L, "pf.http") == NULL)
    return pf_wait_outside(L, l_http_request, "pf.http.request");
  xfer_start(L)->stream = 0;   /* nobody takes chunks: never pause */
  return request_k(L, LUA_OK, 0);
}

/* __close and __gc: the transfer stops and everything it holds is freed */
static int l_close(lua_State *L) {
  xfer *x = (xfer *)luaL_checkudata(L, 1, XFER_MT);
  xfer_release(x);
  return 0;
}

static const luaL_Reg http_funcs[] = {
  {"http_start", l_http_start},
  {"http_request", l_http_request},
  {NULL, NULL}
};

void pf_open_http(lua_State *L) {
  ctx_open(L);
  if (luaL_newmetatable(L, XFER_MT)) {
    static const luaL_Reg methods[] = {
      {"next", l_next}, {"result", l_result}, {"close", l_close}, {NULL, NULL}
    };
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, l_close);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, http_funcs, 0);
}

/*
** pf_open_io: adds the I/O functions onto the core table, and the helpers
** the I/O files share.
*/
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "embed.h"
#include "io.h"

int pf_buf_reserve(pf_buf *b, size_t extra) {
  size_t cap;
  char *p;
  if (b->cap - b->len >= extra) return 0;
  cap = b->cap ? b->cap : 4096;
  while (cap - b->len < extra) {
    if (cap > (size_t)-1 / 2) return -1;
    cap *= 2;
  }
  p = (char *)realloc(b->data, cap);
  if (p == NULL) return -1;
  b->data = p;
  b->cap = cap;
  return 0;
}

int pf_buf_add(pf_buf *b, const void *p, size_t n) {
  if (n == 0) return 0;
  if (pf_buf_reserve(b, n) < 0) return -1;
  memcpy(b->data + b->len, p, n);
  b->len += n;
  return 0;
}

void pf_buf_free(pf_buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

void pf_close_free_cb(uv_handle_t *h) {
  free(h);
}

/* Writing to a pipe or socket whose reader has gone must fail with EPIPE,
** not kill the process: libuv leaves SIGPIPE to the program. A handler
** the program set is kept. */
static void ignore_sigpipe(void) {
  struct sigaction sa;
  if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) {
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGPIPE, &sa, NULL);
  }
}

/* the Lua modules built in (tools/embed.c) */
extern const pf_chunk pf_http_lua, pf_json_lua, pf_diagram_lua;

void pf_open_io(lua_State *L) {
  ignore_sigpipe();
  pf_preload(L, "pocketflow.http", &pf_http_lua);
  pf_preload(L, "pocketflow.json", &pf_json_lua);
  pf_preload(L, "pocketflow.diagram", &pf_diagram_lua);
  pf_open_exec(L);
  pf_open_fs(L);
  pf_open_http(L);
  pf_open_redis(L);
}

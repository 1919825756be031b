/*
** Allocation-failure injection, in SQLite's manner: a state whose Lua
** allocator fails its N-th allocation opens the libraries, loads
** pocketflow and runs representative flows, for N = 1, 2, ... until a
** run makes fewer than N allocations. Each run is a child process, so a
** crash, a hang (alarm) or a leak (ASan, valgrind) shows as its status.
** A run must end in success or in a "not enough memory" error that the
** script or the host caught, and the flows after a caught one must work.
**
** usage: alloc_test [--load] [STEP [FIRST [LAST]]]
** (every STEP-th point from FIRST; --load: only load the module and build
** a flow, without running it)
*/
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#include "../../src/embed.h"   /* not -I src: src/sched.h hides <sched.h> */

LUALIB_API int luaopen_pocketflow_core(lua_State *L);
extern const pf_chunk pf_init_lua;

/* what a child run ended in */
enum { R_CLEAN = 0, R_MEMERR = 10, R_RECOVERED = 11, R_BAD = 3, R_LEAK = 4 };
#define R_LAST 64   /* added when the run made fewer allocations than N */

#define HANG_SECONDS 120

/* The allocator: counts allocations (new blocks and growths), fails the
** fail_at-th, and also Lua's retry of it after its emergency collection,
** so that the failure reaches the code that asked. */
typedef struct {
  unsigned long count, fail_at;
  size_t live;                 /* bytes held: 0 after lua_close */
  int failed;
  const void *retry_ptr;       /* the failed request, while armed */
  size_t retry_size;
  int retry_armed;
} counter;

static void *l_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  counter *c = (counter *)ud;
  void *p;
  if (ptr == NULL) osize = 0;  /* osize is then the object's type */
  if (nsize == 0) {
    free(ptr);
    c->live -= osize;
    return NULL;
  }
  if (nsize > osize) {
    int retry = c->retry_armed && ptr == c->retry_ptr && nsize == c->retry_size;
    c->retry_armed = 0;
    if (retry) return NULL;
    if (++c->count == c->fail_at) {
      c->failed = 1;
      c->retry_armed = 1;
      c->retry_ptr = ptr;
      c->retry_size = nsize;
      return NULL;
    }
  }
  p = realloc(ptr, nsize);
  if (p != NULL) c->live += nsize - osize;
  return p;
}

/* The flows: each check runs one in a pcall. A memory error is expected
** once at most (one allocation fails); anything else sets BAD, a global
** made at the start so that setting it allocates nothing. */
static const char script[] =
  "local pf = require 'pocketflow'\n"
  "BAD, OOM, OK = false, 0, 0\n"
  "local function mem(e)\n"
  "  e = type(e) == 'string' and e or ''\n"
  "  return e:find('not enough memory', 1, true) or e:find('out of memory', 1, true)\n"
  "end\n"
  "local function check(want, fn)\n"
  "  local ok, got = pcall(fn)\n"
  "  if ok and got == want then OK = OK + 1\n"
  "  elseif not ok and mem(got) then OOM = OOM + 1\n"
  "  elseif not BAD then\n"
  "    BAD = ('check at line %d: %s'):format(debug.getinfo(fn, 'S').linedefined,\n"
  "      ok and 'wrong result: ' .. tostring(got) or tostring(got))\n"
  "  end\n"
  "end\n"
  /* a node with retries and a wait between attempts */
  "check('r2', function()\n"
  "  local n = pf.Node{ max_retries = 3, wait = 0.001 }\n"
  "  function n:exec() if self.cur_retry < 2 then error('again') end\n"
  "    return 'r' .. self.cur_retry end\n"
  "  function n:post(s, _, r) s.r = r end\n"
  "  local s = {} n:run(s) return s.r end)\n"
  /* a flow of three nodes with a fallback and an action */
  "check('fb', function()\n"
  "  local a, b, c = pf.Node(), pf.Node(), pf.Node()\n"
  "  function a:post() return 'go' end\n"
  "  function b:exec() error({}) end\n"
  "  function b:exec_fallback() return 'fb' end\n"
  "  function b:post(s, _, r) s.r = r end\n"
  "  a:next(b, 'go') b:next(c)\n"
  "  local s = {} pf.Flow{ start = a }:run(s) return s.r end)\n"
  /* a batch node and a parallel batch node with max_concurrency */
  "check(12, function()\n"
  "  local b = pf.BatchNode{ prep = function() return { 1, 2, 3 } end,\n"
  "    exec = function(_, x) return x * 2 end,\n"
  "    post = function(_, s, _, r) s.n = r[1] + r[2] + r[3] end }\n"
  "  local s = {} b:run(s) return s.n end)\n"
  "check(20, function()\n"
  "  local b = pf.ParallelBatchNode{ max_concurrency = 2,\n"
  "    prep = function() return { 1, 2, 3, 4 } end,\n"
  "    exec = function(_, x) pf.sleep(0.001 * x) return x * 2 end,\n"
  "    exec_fallback = function(_, x, e) if mem(e) then error(e, 0) end return x end,\n"
  "    post = function(_, s, _, r) s.n = r[1] + r[2] + r[3] + r[4] end }\n"
  "  local s = {} b:run(s) return s.n end)\n"
  /* batch flows: sequential and parallel walks */
  "check(6, function()\n"
  "  local seen = 0\n"
  "  local step = pf.Node{ exec = function() pf.sleep(0) end,\n"
  "    post = function(self) seen = seen + self.params.k end }\n"
  "  local f = pf.ParallelBatchFlow{ start = step, max_concurrency = 2,\n"
  "    prep = function() return { { k = 1 }, { k = 2 }, { k = 3 } } end }\n"
  "  f:run({}) return seen end)\n"
  "check(3, function()\n"
  "  local seen = 0\n"
  "  local f = pf.BatchFlow{ start = pf.Node{ post = function() seen = seen + 1 end },\n"
  "    prep = function() return { {}, {}, {} } end }\n"
  "  f:run({}) return seen end)\n"
  /* spawn, gather, timeout, cancel, await, sleep */
  "check('done', function() return pf.run(function()\n"
  "  local t = pf.spawn(function(x) pf.sleep(0.001) return x end, 'done')\n"
  "  local r = pf.gather({ function() return 1 end,\n"
  "                        function() pf.sleep(0) return 2 end })\n"
  "  assert(r[1] + r[2] == 3)\n"
  "  local ok, e = pcall(pf.timeout, 0.001, pf.sleep, 5)\n"
  "  assert(not ok and (tostring(e):find('timeout') or mem(e)), e)\n"
  "  local c = pf.spawn(pf.sleep, 5) pf.sleep(0) c:cancel()\n"
  "  assert(c:status() == 'cancelled')\n"
  "  local v = pf.await(function(resume) pf.spawn(resume, 7) end)\n"
  "  assert(v == 7)\n"
  "  return t:wait() end) end)\n"
  /* files and a subprocess: their libuv callbacks make the results */
  "check('abc|hi\\n', function() return pf.run(function()\n"
  "  pf.write_file(TMP, 'abc')\n"
  "  local d = pf.read_file(TMP)\n"
  "  return d .. '|' .. pf.exec({ 'echo', 'hi' }).stdout end) end)\n"
  /* a failing parallel batch cancels its other items */
  "check('boom', function()\n"
  "  local b = pf.ParallelBatchNode{ prep = function() return { 1, 2, 3 } end,\n"
  "    exec = function(_, x) if x == 2 then error('boom', 0) end pf.sleep(1) end }\n"
  "  local ok, e = pcall(b.run, b, {})\n"
  "  if ok then return 'no error' end\n"
  "  if mem(e) then error(e, 0) end\n"
  "  return e:match('^boom') or e end)\n";

/* --load: the module loads and builds a flow, which does not run */
static const char load_script[] =
  "local pf = require 'pocketflow'\n"
  "BAD, OOM, OK = false, 0, 1\n"
  "local a, b = pf.Node{ max_retries = 2 }, pf.ParallelBatchNode{ max_concurrency = 2 }\n"
  "local f = pf.ParallelBatchFlow{ start = a }\n"
  "a:next(b, 'go') local _ = a - 'x' >> pf.BatchFlow(pf.Flow(b))\n";

static const char *chosen = script;
static char tmp_path[64];   /* the file the flows write, one per run */

static int l_setup(lua_State *L) {
  luaL_openlibs(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_pocketflow_core);
  lua_setfield(L, -2, "pocketflow.core");
  lua_pop(L, 1);
  pf_preload(L, "pocketflow", &pf_init_lua);
  lua_pushstring(L, tmp_path);
  lua_setglobal(L, "TMP");
  if (luaL_loadbuffer(L, chosen, strlen(chosen), "=alloc_test") != LUA_OK)
    return lua_error(L);
  lua_call(L, 0, 0);
  return 0;
}

static int is_memory_error(lua_State *L, int status) {
  const char *msg = lua_tostring(L, -1);
  return status == LUA_ERRMEM ||
         (msg && (strstr(msg, "not enough memory") || strstr(msg, "out of memory")));
}

/* One run, in the child: returns its exit status. */
static int run(unsigned long fail_at, unsigned long *count) {
  counter c;
  lua_State *L;
  int status, result;
  memset(&c, 0, sizeof c);
  c.fail_at = fail_at;
  snprintf(tmp_path, sizeof tmp_path, "/tmp/pf_alloc_test.%ld", (long)getpid());
  L = lua_newstate(l_alloc, &c);
  if (L == NULL) return c.failed ? R_MEMERR : R_BAD;
  lua_pushcfunction(L, l_setup);
  status = lua_pcall(L, 0, 0, 0);
  if (status != LUA_OK) {
    result = c.failed && is_memory_error(L, status) ? R_MEMERR : R_BAD;
    if (result == R_BAD) fprintf(stderr, "alloc_test: N=%lu: %s\n", fail_at,
                                 lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
  } else {
    lua_getglobal(L, "BAD");
    lua_getglobal(L, "OOM");
    if (lua_toboolean(L, -2)) {
      fprintf(stderr, "alloc_test: N=%lu: %s\n", fail_at,
              lua_tostring(L, -2) ? lua_tostring(L, -2) : "bad result");
      result = R_BAD;
    } else if (lua_tointeger(L, -1) > (c.failed ? 1 : 0)) {
      fprintf(stderr, "alloc_test: N=%lu: %d memory errors\n", fail_at,
              (int)lua_tointeger(L, -1));
      result = R_BAD;
    } else {
      result = !c.failed ? R_CLEAN : lua_tointeger(L, -1) ? R_MEMERR : R_RECOVERED;
    }
  }
  lua_close(L);   /* may fail the allocation in a __gc: the error is a warning */
  unlink(tmp_path);
  if (c.failed && result == R_CLEAN) result = R_RECOVERED;
  *count = c.count;
  if (c.live != 0) {
    fprintf(stderr, "alloc_test: N=%lu: %zu bytes left after lua_close\n",
            fail_at, c.live);
    result = R_LEAK;
  }
  return c.failed ? result : result + R_LAST;
}

int main(int argc, char **argv) {
  unsigned long step, n, last, points = 0, memerr = 0, recovered = 0, bad = 0;
  if (argc > 1 && strcmp(argv[1], "--load") == 0) {
    chosen = load_script;
    argc--, argv++;
  }
  step = argc > 1 ? strtoul(argv[1], NULL, 10) : 1;
  n = argc > 2 ? strtoul(argv[2], NULL, 10) : 1;
  last = argc > 3 ? strtoul(argv[3], NULL, 10) : (unsigned long)-1;
  if (step == 0) step = 1;
  for (; n <= last; n += step) {
    int st;
    pid_t pid = fork();
    if (pid < 0) return perror("fork"), 1;
    if (pid == 0) {
      unsigned long count = 0;
      int r;
      alarm(HANG_SECONDS);
      r = run(n, &count);
      if (r >= R_LAST) printf("alloc_test: a run makes %lu allocations\n", count);
      fflush(stdout);
      exit(r);
    }
    if (waitpid(pid, &st, 0) < 0) return perror("waitpid"), 1;
    points++;
    if (WIFEXITED(st) && WEXITSTATUS(st) >= R_LAST) {
      if (WEXITSTATUS(st) != R_LAST + R_CLEAN) {
        fprintf(stderr, "alloc_test: the run with no failure: exit status %d\n",
                WEXITSTATUS(st) - R_LAST);
        bad++;
      }
      break;
    }
    if (WIFEXITED(st) && WEXITSTATUS(st) == R_MEMERR) memerr++;
    else if (WIFEXITED(st) && WEXITSTATUS(st) == R_RECOVERED) recovered++;
    else {
      bad++;
      if (WIFSIGNALED(st))
        fprintf(stderr, "alloc_test: N=%lu: killed by signal %d%s\n", n,
                WTERMSIG(st), WTERMSIG(st) == SIGALRM ? " (hung)" : "");
      else
        fprintf(stderr, "alloc_test: N=%lu: exit status %d\n", n, WEXITSTATUS(st));
    }
  }
  printf("alloc_test: %lu allocation points (every %lu from the first): "
         "%lu ended in a memory error, %lu recovered, %lu failed\n",
         points, step, memerr, recovered, bad);
  return bad == 0 ? 0 : 1;
}

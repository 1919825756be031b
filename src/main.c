/*
** pocketflow: a Lua 5.4 interpreter whose chunks run as tasks inside the
** event loop, with the pocketflow module preloaded. Options as lua's.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#include "embed.h"
#include "io.h"
#include "pf.h"

LUALIB_API int luaopen_pocketflow_core(lua_State *L);
extern const pf_chunk pf_init_lua;

static const char *progname = "pocketflow";

static void usage(void) {
  fprintf(stderr,
    "usage: %s [options] [script [args...]]\n"
    "Available options are:\n"
    "  -e stat   execute string 'stat'\n"
    "  -l mod    require library 'mod' into global 'mod'\n"
    "  -l g=mod  require library 'mod' into global 'g'\n"
    "  -v        show version information\n"
    "  -h        show this help\n"
    "  --        stop handling options\n"
    "  -         stop handling options and execute stdin\n"
    "Each chunk runs as a task inside the event loop; the program exits\n"
    "when no task is left.\n", progname);
}

static void message(const char *msg) {
  fprintf(stderr, "%s: %s\n", progname, msg);
  fflush(stderr);
}

/* Reports the error on top, if any; returns status. */
static int report(lua_State *L, int status) {
  if (status != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    if (msg == NULL) msg = luaL_tolstring(L, -1, NULL);
    message(msg);
    lua_pop(L, 1);
  }
  return status;
}

static int msghandler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)",
                          luaL_typename(L, 1));
  }
  if (pf_has_traceback(L, -1)) return 1;
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Runs the function on top with nargs below... as a task: pf.run(f, ...) */
static int run_task(lua_State *L, int nargs) {
  int status, base = lua_gettop(L) - nargs;   /* the function's index */
  lua_pushcfunction(L, msghandler);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, "pocketflow");
  lua_getfield(L, -1, "run");
  lua_replace(L, -3);
  lua_pop(L, 1);
  lua_insert(L, base);       /* pf.run below the function */
  lua_insert(L, base);       /* the handler below pf.run */
  status = lua_pcall(L, nargs + 1, 0, base);
  lua_remove(L, base);
  return report(L, status);
}

/* run_task reports its own errors; the chunk's load error is reported here */
static int dochunk(lua_State *L, int status) {
  if (status == LUA_OK) return run_task(L, 0);
  return report(L, status);
}

static int dostring(lua_State *L, const char *s, const char *name) {
  return dochunk(L, luaL_loadbuffer(L, s, strlen(s), name));
}

static int dolibrary(lua_State *L, char *spec) {
  char *eq = strchr(spec, '=');
  const char *global = spec, *mod = spec;
  int status;
  if (eq) {
    *eq = '\0';
    mod = eq + 1;
  }
  lua_getglobal(L, "require");
  lua_pushstring(L, mod);
  status = lua_pcall(L, 1, 1, 0);
  if (status == LUA_OK) lua_setglobal(L, global);
  return report(L, status);
}

static void createargtable(lua_State *L, char **argv, int argc, int script) {
  int i;
  if (script == argc) script = 0;   /* no script: arg[0] is the program */
  lua_createtable(L, argc - (script + 1), script + 1);
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
}

static int pushargs(lua_State *L) {
  int i, n;
  if (lua_getglobal(L, "arg") != LUA_TTABLE)
    luaL_error(L, "'arg' is not a table");
  n = (int)luaL_len(L, -1);
  luaL_checkstack(L, n + 3, "too many arguments to script");
  for (i = 1; i <= n; i++) lua_rawgeti(L, -i, i);
  lua_remove(L, -i);
  return n;
}

static int handle_script(lua_State *L, char **argv) {
  const char *fname = argv[0];
  int status;
  if (strcmp(fname, "-") == 0 && strcmp(argv[-1], "--") != 0) fname = NULL;
  status = luaL_loadfile(L, fname);
  if (status == LUA_OK) return run_task(L, pushargs(L));
  return report(L, status);
}

/* ------------------------------------------------------------ the REPL */

static int incomplete(lua_State *L, int status) {
  size_t lmsg;
  const char *msg;
  if (status != LUA_ERRSYNTAX) return 0;
  msg = lua_tolstring(L, -1, &lmsg);
  return lmsg >= 5 && strcmp(msg + lmsg - 5, "<eof>") == 0;
}

/* Statements typed at the prompt run as tasks; "=expr" is not needed:
** an expression's values are printed, as lua does. */
static void repl(lua_State *L) {
  char line[4096];
  if (luaL_loadstring(L, "local r = table.pack((...)()) "
                         "if r.n > 0 then print(table.unpack(r, 1, r.n)) end")
      != LUA_OK)
    return;
  lua_pushliteral(L, "");                      /* the pending statement */
  for (;;) {
    const char *code;
    int status;
    fputs(lua_rawlen(L, -1) ? ">> " : "> ", stdout);
    fflush(stdout);
    if (fgets(line, sizeof line, stdin) == NULL) break;
    lua_pushstring(L, line);
    lua_concat(L, 2);
    code = lua_tostring(L, -1);
    lua_pushfstring(L, "return %s", code);
    status = luaL_loadbuffer(L, lua_tostring(L, -1), lua_rawlen(L, -1), "=stdin");
    lua_remove(L, -2);
    if (status != LUA_OK) {
      lua_pop(L, 1);
      status = luaL_loadbuffer(L, code, strlen(code), "=stdin");
      if (incomplete(L, status)) {
        lua_pop(L, 1);
        continue;
      }
    }
    lua_remove(L, -2);                         /* the statement is done */
    if (status == LUA_OK) {
      lua_pushvalue(L, -2);                    /* the printing wrapper */
      lua_insert(L, -2);
      status = run_task(L, 1);
    }
    report(L, status);
    lua_pushliteral(L, "");
  }
  lua_pop(L, 2);
  fputs("\n", stdout);
}

/* ----------------------------------------------------------- options */

#define HAS_E 1
#define HAS_V 2
#define HAS_ERROR 4

/* Returns the flags and the index of the script in argv (argc if none). */
static int collectargs(char **argv, int *first) {
  int flags = 0, i;
  for (i = 1; argv[i] != NULL; i++) {
    *first = i;
    if (argv[i][0] != '-') return flags;
    switch (argv[i][1]) {
      case '-':
        if (argv[i][2] != '\0') return HAS_ERROR;
        *first = i + 1;
        return flags;
      case '\0':
        return flags;
      case 'e':
        flags |= HAS_E;
        /* fall through */
      case 'l':
        if (argv[i][2] == '\0') {
          i++;
          if (argv[i] == NULL || argv[i][0] == '-') return HAS_ERROR;
        }
        break;
      case 'v':
        if (argv[i][2] != '\0') return HAS_ERROR;
        flags |= HAS_V;
        break;
      case 'h':
        if (argv[i][2] != '\0') return HAS_ERROR;
        usage();
        exit(EXIT_SUCCESS);
      default:
        return HAS_ERROR;
    }
  }
  *first = i;
  return flags;
}

static int runargs(lua_State *L, char **argv, int n) {
  int i;
  for (i = 1; i < n; i++) {
    int option = argv[i][1];
    if (option == 'e' || option == 'l') {
      char *extra = argv[i] + 2;
      if (*extra == '\0') extra = argv[++i];
      if (option == 'e' ? dostring(L, extra, "=(command line)") != LUA_OK
                        : dolibrary(L, extra) != LUA_OK)
        return 0;
    }
  }
  return 1;
}

static int pmain(lua_State *L) {
  int argc = (int)lua_tointeger(L, 1);
  char **argv = (char **)lua_touserdata(L, 2);
  int script = argc, flags;
  if (argv[0] && argv[0][0]) progname = argv[0];
  flags = collectargs(argv, &script);
  if (flags & HAS_ERROR) {
    usage();
    return 0;
  }
  luaL_openlibs(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_pocketflow_core);
  lua_setfield(L, -2, "pocketflow.core");
  lua_pop(L, 1);
  pf_preload(L, "pocketflow", &pf_init_lua);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "pocketflow");
  lua_call(L, 1, 0);
  pf_exec_signals(L);   /* SIGINT/SIGTERM end pf.exec's children (exec.c) */
  createargtable(L, argv, argc, script);
  if (flags & HAS_V)
    printf("pocketflow %s (%s)\n", PF_VERSION, LUA_RELEASE);
  if (!runargs(L, argv, script)) return 0;
  if (script < argc) {
    if (handle_script(L, argv + script) != LUA_OK) return 0;
  } else if (!(flags & (HAS_E | HAS_V))) {
    if (isatty(0)) {
      printf("pocketflow %s (%s)\n", PF_VERSION, LUA_RELEASE);
      repl(L);
    } else if (dochunk(L, luaL_loadfile(L, NULL)) != LUA_OK) {
      return 0;
    }
  }
  lua_pushboolean(L, 1);
  return 1;
}

int main(int argc, char **argv) {
  int status, ok;
  lua_State *L = luaL_newstate();
  if (L == NULL) {
    message("cannot create state: not enough memory");
    return EXIT_FAILURE;
  }
  lua_pushcfunction(L, pmain);
  lua_pushinteger(L, argc);
  lua_pushlightuserdata(L, argv);
  status = lua_pcall(L, 2, 1, 0);
  ok = lua_toboolean(L, -1);
  report(L, status);
  lua_close(L);
  return (ok && status == LUA_OK) ? EXIT_SUCCESS : EXIT_FAILURE;
}

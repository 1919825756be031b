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

#include <editline/readline.h>

#include "embed.h"
#include "io/io.h"
#include "pf.h"

LUALIB_API int luaopen_pocketflow_core(lua_State *L);
extern const pf_chunk pf_init_lua;

static const char *progname = "pocketflow";

static void print_usage(FILE *f) {
  fprintf(f,
    "usage: %s [options] [script [args...]]\n"
    "Available options are:\n"
    "  -e stat   execute string 'stat'\n"
    "  -i        enter interactive mode after executing 'script'\n"
    "  -l mod    require library 'mod' into global 'mod'\n"
    "  -l g=mod  require library 'mod' into global 'g'\n"
    "  -v        show version information (also --version)\n"
    "  -h        show this help (also --help)\n"
    "  --        stop handling options\n"
    "  -         stop handling options and execute stdin\n"
    "Each chunk runs as a task inside the event loop; the program exits\n"
    "when no task is left. The global 'pf' is the pocketflow module.\n",
    progname);
  fflush(f);
}

/* A bad option: says which, as lua does, then the usage on stderr. */
static void bad_option(const char *opt) {
  if ((opt[1] == 'e' || opt[1] == 'l') && opt[2] == '\0')
    fprintf(stderr, "%s: '%s' needs argument\n", progname, opt);
  else
    fprintf(stderr, "%s: unrecognized option '%s'\n", progname, opt);
  print_usage(stderr);
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

/* Runs the function below its nargs arguments as a task, pf.run(f, ...),
** leaving nres results (LUA_MULTRET: all) where the function was. */
static int run_task(lua_State *L, int nargs, int nres) {
  int status, base = lua_gettop(L) - nargs;   /* the function's index */
  lua_pushcfunction(L, msghandler);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, "pocketflow");
  lua_getfield(L, -1, "run");
  lua_replace(L, -3);
  lua_pop(L, 1);
  lua_insert(L, base);       /* pf.run below the function */
  lua_insert(L, base);       /* the handler below pf.run */
  status = lua_pcall(L, nargs + 1, nres, base);
  lua_remove(L, base);
  return report(L, status);
}

/* run_task reports its own errors; the chunk's load error is reported here */
static int dochunk(lua_State *L, int status) {
  if (status == LUA_OK) return run_task(L, 0, 0);
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
  if (status == LUA_OK) return run_task(L, pushargs(L), 0);
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

/* Pushes the next line, without its newline; 0 at the end of input. On a
** terminal libedit edits the line and keeps the history; otherwise (-i
** with a pipe) the line is read as it comes. */
static int pushline(lua_State *L, int first) {
  const char *prompt = first ? "> " : ">> ";
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  if (isatty(STDIN_FILENO)) {
    line = readline(prompt);
    if (line == NULL) return 0;
    if (line[0] != '\0') add_history(line);
    len = (ssize_t)strlen(line);
  } else {
    fputs(prompt, stdout);
    fflush(stdout);
    len = getline(&line, &cap, stdin);
    if (len < 0) {
      free(line);
      return 0;
    }
    if (len > 0 && line[len - 1] == '\n') len--;
  }
  lua_pushlstring(L, line, (size_t)len);
  free(line);
  return 1;
}

/* Reads a statement and compiles it: first as an expression, whose values
** are printed, then as statements, with more lines while it is
** incomplete. Leaves the chunk or the error; -1 at the end of input. */
static int loadstatement(lua_State *L) {
  int status;
  if (!pushline(L, 1)) return -1;
  for (;;) {
    size_t len;
    const char *code = lua_tolstring(L, -1, &len);
    const char *ret = lua_pushfstring(L, "return %s;", code);
    status = luaL_loadbuffer(L, ret, strlen(ret), "=stdin");
    lua_remove(L, -2);                         /* the "return" text */
    if (status == LUA_OK) break;
    lua_pop(L, 1);
    status = luaL_loadbuffer(L, code, len, "=stdin");
    if (!incomplete(L, status) || !pushline(L, 0)) break;
    lua_remove(L, -2);                         /* the <eof> message */
    lua_pushliteral(L, "\n");
    lua_insert(L, -2);
    lua_concat(L, 3);
  }
  lua_remove(L, -2);                           /* the code */
  return status;
}

/* Prints the values from base up, as lua's REPL does. */
static void print_results(lua_State *L, int base) {
  int n = lua_gettop(L) - base + 1;
  if (n <= 0) return;
  luaL_checkstack(L, LUA_MINSTACK, "too many results to print");
  lua_getglobal(L, "print");
  lua_insert(L, base);
  if (lua_pcall(L, n, 0, 0) != LUA_OK)
    message(lua_pushfstring(L, "error calling 'print' (%s)",
                            lua_tostring(L, -1)));
  lua_settop(L, base - 1);
}

/* Each statement typed runs as a task; errors are reported once, with the
** task's own traceback. */
static void repl(lua_State *L) {
  int status, base = lua_gettop(L) + 1;
  while ((status = loadstatement(L)) != -1) {
    if (status == LUA_OK && run_task(L, 0, LUA_MULTRET) == LUA_OK)
      print_results(L, base);
    else if (status != LUA_OK)
      report(L, status);
    lua_settop(L, base - 1);
  }
  fputs("\n", stdout);
  fflush(stdout);
}

/* ----------------------------------------------------------- options */

#define HAS_E 1
#define HAS_V 2
#define HAS_I 4
#define HAS_H 8
#define HAS_ERROR 16

/* Returns the flags and the index of the script in argv (argc if none);
** on a bad option, HAS_ERROR with its index in *first. */
static int collectargs(char **argv, int *first) {
  int flags = 0, i;
  for (i = 1; argv[i] != NULL; i++) {
    const char *a = argv[i];
    *first = i;
    if (a[0] != '-') return flags;
    if (strcmp(a, "--help") == 0) a = "-h";
    else if (strcmp(a, "--version") == 0) a = "-v";
    switch (a[1]) {
      case '-':
        if (a[2] != '\0') return HAS_ERROR;
        *first = i + 1;
        return flags;
      case '\0':
        return flags;
      case 'e':
        flags |= HAS_E;
        /* fall through */
      case 'l':
        if (a[2] == '\0' && (argv[i + 1] == NULL || argv[i + 1][0] == '-'))
          return HAS_ERROR;
        if (a[2] == '\0') i++;
        break;
      case 'i':
        flags |= HAS_I | HAS_V;   /* as lua: -i shows the version */
        /* fall through */
      case 'v':
      case 'h':
        if (a[2] != '\0') return HAS_ERROR;
        flags |= a[1] == 'h' ? HAS_H : a[1] == 'v' ? HAS_V : 0;
        break;
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

/* The module preloaded, required, and set as the global pf. */
static void openpocketflow(lua_State *L) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_pocketflow_core);
  lua_setfield(L, -2, "pocketflow.core");
  lua_pop(L, 1);
  pf_preload(L, "pocketflow", &pf_init_lua);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "pocketflow");
  lua_call(L, 1, 1);
  lua_setglobal(L, "pf");
  pf_exec_signals(L);   /* SIGINT/SIGTERM end pf.exec's children (exec.c) */
}

static int pmain(lua_State *L) {
  int argc = (int)lua_tointeger(L, 1);
  char **argv = (char **)lua_touserdata(L, 2);
  int script = argc, flags;
  if (argv[0] && argv[0][0]) progname = argv[0];
  flags = collectargs(argv, &script);
  if (flags & HAS_ERROR) {
    bad_option(argv[script]);
    return 0;
  }
  if (flags & HAS_H) {
    print_usage(stdout);
    lua_pushboolean(L, 1);
    return 1;
  }
  luaL_openlibs(L);
  openpocketflow(L);
  createargtable(L, argv, argc, script);
  if (flags & HAS_V)
    printf("pocketflow %s (%s)\n", PF_VERSION, LUA_RELEASE);
  if (!runargs(L, argv, script)) return 0;
  if (script < argc && handle_script(L, argv + script) != LUA_OK) return 0;
  if (flags & HAS_I) {
    repl(L);
  } else if (script == argc && !(flags & (HAS_E | HAS_V))) {
    if (isatty(STDIN_FILENO)) {
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

/*
** I/O waits of pf: subprocesses, files, HTTP. Shared helpers.
*/
#ifndef PF_IO_H
#define PF_IO_H

#include <stddef.h>
#include <string.h>

#include "pf_sched.h"
#include "buf.h"

/* The bytes one read asks for (a pipe read, a file read). */
#define PF_READ_CHUNK 65536

/* The most one libuv read or write request moves: uv_buf_t lengths are
** unsigned int, so bigger transfers go in chunks of at most this. */
#define PF_IO_MAX ((size_t)1 << 30)

/* the length of the next chunk of a transfer with 'left' bytes to go */
static inline unsigned pf_io_chunk(size_t left) {
  return (unsigned)(left < PF_IO_MAX ? left : PF_IO_MAX);
}

/* True if s[0..len) holds a NUL byte: C would silently cut it there. */
static inline int pf_has_nul(const char *s, size_t len) {
  return memchr(s, '\0', len) != NULL;
}

/* The binary only: SIGINT and SIGTERM end pf.exec's children, then the
** process (exit 130 / 143). */
void pf_exec_signals(lua_State *L);

/* one open function per I/O kind, called from core.c */
void pf_open_exec(lua_State *L);   /* io/exec.c */
void pf_open_fs(lua_State *L);     /* io/fs.c */
void pf_open_http(lua_State *L);   /* io/http.c */
void pf_open_redis(lua_State *L);  /* io/redis.c */

#endif

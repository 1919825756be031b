/*
** A growing byte buffer, and the close callback that frees a handle.
*/
#ifndef PF_BUF_H
#define PF_BUF_H

#include <stddef.h>
#include <uv.h>

typedef struct pf_buf {
  char *data;
  size_t len, cap;
} pf_buf;

int pf_buf_reserve(pf_buf *b, size_t extra);   /* 0, or -1 out of memory */
int pf_buf_add(pf_buf *b, const void *p, size_t n);
void pf_buf_free(pf_buf *b);

void pf_close_free_cb(uv_handle_t *h);         /* uv_close cb: free(h) */

#endif

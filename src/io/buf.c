/*
** The growing byte buffer of the I/O files, and their handle close.
*/
#include <stdlib.h>
#include <string.h>

#include "buf.h"

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

/*
** The chunking of big transfers (src/io.h: pf_io_chunk), as fs.c and
** exec.c use it for reads and writes over 4 GiB, without the memory: a
** uv_buf_t length is unsigned int, so a size_t cast to it wraps
** (4 GiB -> 0: a write that never progresses).
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "../src/io/io.h"

static int failures = 0;

#define CHECK(c, len) do { if (!(c)) { \
  fprintf(stderr, "io_chunk_test: %s fails for %llu bytes\n", #c, \
          (unsigned long long)(len)); failures++; } } while (0)

/* a transfer of len bytes, chunk by chunk as write_next/next_write go */
static void transfer(size_t len) {
  size_t done = 0, chunks = 0;
  while (done < len) {
    unsigned n = pf_io_chunk(len - done);
    CHECK(n > 0, len);
    CHECK((size_t)n <= PF_IO_MAX, len);
    CHECK((size_t)n <= len - done, len);
    if (n == 0) return;
    done += n;
    chunks++;
  }
  CHECK(done == len, len);
  CHECK(chunks == (len + PF_IO_MAX - 1) / PF_IO_MAX, len);
}

int main(void) {
  const size_t G = (size_t)1 << 30;
  const size_t sizes[] = {
    0, 1, 65536, PF_IO_MAX - 1, PF_IO_MAX, PF_IO_MAX + 1,
    4 * G - 1, 4 * G, 4 * G + 1, 5 * G + 3, 8 * G, ((size_t)1 << 40) + 7,
    ((size_t)1 << 45) + PF_IO_MAX - 1,
  };
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
    transfer(sizes[i]);
  /* a read buffer whose free room is over 4 GiB gets one bounded chunk */
  CHECK(pf_io_chunk(6 * G) == PF_IO_MAX, 6 * G);
  CHECK(pf_io_chunk(4 * G) != 0, 4 * G);   /* (unsigned)(4 GiB) == 0 */
  CHECK(pf_io_chunk(12345) == 12345, 12345);
  if (failures) return 1;
  puts("io_chunk_test: ok");
  return 0;
}

/*
** The floor of bench/store.lua: N checkpoints of one blob inserted by
** plain libsqlite3 in the settings of pf.sqlite (WAL, synchronous=NORMAL,
** the same tables, keep = 100 trimmed in the same transaction, one
** transaction per checkpoint), on the calling thread.
** usage: store_floor DB N BLOB_BYTES  -> prints "floor_us_per_save=X"
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sqlite3.h>

static const char *const schema =
  "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
  "CREATE TABLE IF NOT EXISTS runs(id TEXT PRIMARY KEY, status TEXT NOT NULL,"
  " step INTEGER NOT NULL DEFAULT 0, updated REAL NOT NULL, pid INTEGER,"
  " host TEXT, pstart INTEGER, graph TEXT, meta BLOB);"
  "CREATE TABLE IF NOT EXISTS checkpoints(run_id TEXT NOT NULL,"
  " step INTEGER NOT NULL, path TEXT, t REAL NOT NULL, blob BLOB,"
  " PRIMARY KEY(run_id, step));"
  "INSERT INTO runs VALUES('floor', 'running', 0, 0, 1, 'h', 1, NULL, NULL);";

#define NOW "((julianday('now') - 2440587.5) * 86400.0)"

static const char *const sqls[] = {
  "UPDATE runs SET step = ?2, updated = " NOW " WHERE id = ?1",
  "INSERT OR REPLACE INTO checkpoints(run_id, step, path, t, blob) "
  "VALUES (?1, ?2, 'Flow.Node', " NOW ", ?3)",
  "DELETE FROM checkpoints WHERE run_id = ?1 AND step < (SELECT step FROM "
  "checkpoints WHERE run_id = ?1 ORDER BY step DESC LIMIT 1 OFFSET 99)",
};

static void check(sqlite3 *db, int rc) {
  if (rc != SQLITE_OK && rc != SQLITE_DONE) {
    fprintf(stderr, "store_floor: %s\n", sqlite3_errmsg(db));
    exit(1);
  }
}

int main(int argc, char **argv) {
  sqlite3 *db;
  sqlite3_stmt *st[3];
  struct timespec a, b;
  long n, size, i;
  int k;
  char *blob;
  if (argc != 4) { fprintf(stderr, "usage: store_floor DB N BYTES\n"); return 2; }
  n = atol(argv[2]);
  size = atol(argv[3]);
  blob = malloc((size_t)size);
  memset(blob, 'b', (size_t)size);
  check(db, sqlite3_open(argv[1], &db));
  check(db, sqlite3_exec(db, schema, NULL, NULL, NULL));
  for (k = 0; k < 3; k++) check(db, sqlite3_prepare_v2(db, sqls[k], -1, &st[k], NULL));
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (i = 1; i <= n; i++) {
    check(db, sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL));
    for (k = 0; k < 3; k++) {
      sqlite3_bind_text(st[k], 1, "floor", -1, SQLITE_STATIC);
      if (k < 2) sqlite3_bind_int64(st[k], 2, i);
      if (k == 1) sqlite3_bind_blob(st[k], 3, blob, (int)size, SQLITE_STATIC);
      check(db, sqlite3_step(st[k]));
      sqlite3_reset(st[k]);
    }
    check(db, sqlite3_exec(db, "COMMIT", NULL, NULL, NULL));
  }
  clock_gettime(CLOCK_MONOTONIC, &b);
  printf("floor_us_per_save=%.2f\n",
         ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / 1e3 / (double)n);
  for (k = 0; k < 3; k++) sqlite3_finalize(st[k]);
  sqlite3_close(db);
  free(blob);
  return 0;
}

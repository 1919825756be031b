#!/bin/sh
# Line and branch coverage of src/ by the specs and the C tests.
# usage: tools/coverage.sh [BUILD_DIR]   (default build-cov)
# Builds a separate tree with gcc --coverage, runs every spec file (plain)
# and the C tests (the allocation sweeps included: they reach the
# out-of-memory paths), then prints gcov's figures per file of src/ and
# the totals. Branches count as covered when taken at least once.
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$src/build-cov}
mkdir -p "$build"
build=$(cd "$build" && pwd)
flags="--coverage -O0"
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_FLAGS="$flags" \
  -DCMAKE_EXE_LINKER_FLAGS=--coverage -DCMAKE_MODULE_LINKER_FLAGS=--coverage \
  >/dev/null
cmake --build "$build" -j"$(nproc 2>/dev/null || echo 2)" >/dev/null
find "$build" -name '*.gcda' -delete

failed=0
cd "$src"
for spec in spec/*_spec.lua; do
  if ! sh spec/run "$build" "$spec" >/dev/null 2>&1; then
    echo "coverage: $spec failed" >&2
    failed=$((failed + 1))
  fi
done
"$build/heap_test" >/dev/null 2>&1 || echo "coverage: heap_test failed" >&2
"$build/embed_test" >/dev/null 2>&1 || echo "coverage: embed_test failed" >&2
"$build/alloc_test" --load 1 >/dev/null 2>&1 || true
"$build/alloc_test" 1 >/dev/null 2>&1 || true   # its pending failures do not matter here

# gcov per source file, from the objects of the core (module and binary)
# and of the program's main.c
objs="$build/CMakeFiles/pfcore.dir/src $build/CMakeFiles/pocketflow.dir/src"
printf '%-12s %8s %7s %9s %7s\n' file lines "%" branches "%"
for f in "$src"/src/*.c; do
  name=$(basename "$f")
  for o in $objs; do
    [ -f "$o/$name.gcda" ] || continue
    (cd "$o" && gcov -b -n -o "$name.o" "$f" 2>/dev/null) | awk -v name="$name" '
      /^File / { mine = index($0, "/src/" name "'"'"'") > 0 }
      mine && /^Lines executed:/ { split($2, a, "[:%]"); l = a[2]; ln = $4 }
      mine && /^Taken at least once:/ { split($4, b, "[:%]"); br = b[2]; bn = $6 }
      END { if (ln != "") printf "%-12s %8d %6.1f%% %9d %6.1f%%\n", name, ln, l, bn, bn ? br : 100 }'
  done
done | tee "$build/coverage.txt"
awk 'NR > 0 { lt += $2; lc += $2 * $3 / 100; bt += $4; bc += $4 * $5 / 100 }
     END { printf "%-12s %8d %6.1f%% %9d %6.1f%%\n", "total", lt, 100 * lc / lt, bt, 100 * bc / bt }' \
  "$build/coverage.txt"
[ "$failed" -eq 0 ] || { echo "coverage: $failed spec file(s) failed" >&2; exit 1; }

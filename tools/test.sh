#!/bin/sh
# The whole test suite: installs what is missing, builds the normal tree
# and a sanitizer tree (AddressSanitizer + UBSan), then one CTest run
# covers the specs, the specs again on the sanitizer build, the specs
# under valgrind memcheck, the C tests, the rockspec and the benchmark
# smoke run. CTest's last line gives the pass/fail count.
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
cd "$src"
sh tools/setup.sh
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build-asan -DPF_WERROR=ON -DPF_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build-asan -j"$jobs"
cmake -S . -B build -DPF_WERROR=ON -DPF_ASAN_DIR="$src/build-asan" -DPF_VALGRIND=ON >/dev/null
cmake --build build -j"$jobs"
exec ctest --test-dir build -j"$jobs" --output-on-failure "$@"

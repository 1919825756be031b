# benchmark smoke tests are registered here (bench/)
# bench.smoke: every workload of bench/run once at a small N, against this
# build tree as it is (no second build inside CTest); fails if one fails.
# The full benchmark is `bench/run` (its own Release tree, build-bench).
find_program(PF_LUA54 lua5.4)
if(PF_LUA54)
  add_test(NAME bench.smoke
           COMMAND ${PF_LUA54} ${CMAKE_SOURCE_DIR}/bench/run --smoke --no-build
                   --build-dir ${CMAKE_BINARY_DIR})
  set_tests_properties(bench.smoke PROPERTIES LABELS bench TIMEOUT 120)
endif()

# bench/store.lua's floor: the same checkpoints by plain libsqlite3
add_executable(store_floor bench/store_floor.c)
target_link_libraries(store_floor PRIVATE PkgConfig::SQLITE)
add_test(NAME bench.store_smoke
         COMMAND ${CMAKE_BINARY_DIR}/pocketflow ${CMAKE_SOURCE_DIR}/bench/store.lua
                 20 1000 $<TARGET_FILE:store_floor>)
set_tests_properties(bench.store_smoke PROPERTIES LABELS bench TIMEOUT 120)

# bench/<name>.lua's smoke test against its floor: the same Redis traffic
# from plain hiredis in C (bench/<name>_floor.c), built into build/bench
function(pf_redis_bench name timeout)
  add_executable(${name}_floor bench/${name}_floor.c)
  target_link_libraries(${name}_floor PRIVATE PkgConfig::HIREDIS)
  set_target_properties(${name}_floor PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bench)
  add_test(NAME bench.${name}_smoke
           COMMAND ${CMAKE_BINARY_DIR}/pocketflow ${CMAKE_SOURCE_DIR}/bench/${name}.lua
                   --smoke --floor ${CMAKE_BINARY_DIR}/bench/${name}_floor)
  set_tests_properties(bench.${name}_smoke PROPERTIES LABELS bench TIMEOUT ${timeout})
endfunction()

# bench/redis.lua: plain Redis commands
pf_redis_bench(redis 120)
# bench/queue.lua: Redis Streams (a coordinator and forked workers)
pf_redis_bench(queue 300)

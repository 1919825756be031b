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

# bench/redis.lua's floor: the same Redis traffic from plain hiredis in C
add_executable(redis_floor bench/redis_floor.c)
target_link_libraries(redis_floor PRIVATE PkgConfig::HIREDIS)
set_target_properties(redis_floor PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bench)
add_test(NAME bench.redis_smoke
         COMMAND ${CMAKE_BINARY_DIR}/pocketflow ${CMAKE_SOURCE_DIR}/bench/redis.lua
                 --smoke --floor ${CMAKE_BINARY_DIR}/bench/redis_floor)
set_tests_properties(bench.redis_smoke PROPERTIES LABELS bench TIMEOUT 120)

# bench/queue.lua's floor: the same Redis Streams traffic from plain
# hiredis in C (a coordinator and forked workers)
add_executable(queue_floor bench/queue_floor.c)
target_link_libraries(queue_floor PRIVATE PkgConfig::HIREDIS)
set_target_properties(queue_floor PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bench)
add_test(NAME bench.queue_smoke
         COMMAND ${CMAKE_BINARY_DIR}/pocketflow ${CMAKE_SOURCE_DIR}/bench/queue.lua
                 --smoke --floor ${CMAKE_BINARY_DIR}/bench/queue_floor)
set_tests_properties(bench.queue_smoke PROPERTIES LABELS bench TIMEOUT 300)

# C tests of the core's pure parts, registered in CTest.

# the sleep queue (sleep.c: FIFO + heap) on a real libuv loop
add_executable(heap_test spec/c/heap_test.c src/sleep.c)
target_link_libraries(heap_test PRIVATE PkgConfig::LUA PkgConfig::UV m)
add_test(NAME c.heap COMMAND heap_test)
set_tests_properties(c.heap PROPERTIES LABELS c TIMEOUT 60)

# pf_load_chunk's choice between the built-in bytecode and text
add_executable(embed_test spec/c/embed_test.c src/embed.c)
target_link_libraries(embed_test PRIVATE PkgConfig::LUA)
add_test(NAME c.embed COMMAND embed_test)
set_tests_properties(c.embed PROPERTIES LABELS c TIMEOUT 60)

# the chunking of transfers over 4 GiB (src/io/io.h), without the memory
add_executable(io_chunk_test spec/c/io_chunk_test.c)
target_include_directories(io_chunk_test PRIVATE src)
target_link_libraries(io_chunk_test PRIVATE PkgConfig::LUA PkgConfig::UV)
add_test(NAME c.io_chunk COMMAND io_chunk_test)
set_tests_properties(c.io_chunk PROPERTIES LABELS c TIMEOUT 60)

# pf.deserialize against truncated, altered and random blobs (serial.c);
# with PF_ASAN_DIR the same sweep runs on the sanitizer build's binary
add_executable(serial_test spec/c/serial_test.c src/serial.c)
target_link_libraries(serial_test PRIVATE PkgConfig::LUA)
add_test(NAME c.serial COMMAND serial_test)
set_tests_properties(c.serial PROPERTIES LABELS c TIMEOUT 300)
if(PF_ASAN_DIR)
  add_test(NAME asan.c.serial COMMAND ${PF_ASAN_DIR}/serial_test 50000)
  set_tests_properties(asan.c.serial PROPERTIES LABELS asan TIMEOUT 600
    ENVIRONMENT "ASAN_OPTIONS=detect_leaks=1;UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1")
endif()

# pf_retry_delay: the wait between exec attempts (src/attempts.c)
add_executable(attempts_test spec/c/attempts_test.c src/attempts.c)
target_link_libraries(attempts_test PRIVATE m)
add_test(NAME c.attempts COMMAND attempts_test)
set_tests_properties(c.attempts PROPERTIES LABELS c TIMEOUT 60)
if(PF_ASAN_DIR)
  add_test(NAME asan.c.attempts COMMAND ${PF_ASAN_DIR}/attempts_test)
  set_tests_properties(asan.c.attempts PROPERTIES LABELS asan TIMEOUT 120
    ENVIRONMENT "UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1")
endif()

# allocation-failure injection: the module and the built-in init.lua as
# the binary has them, under a Lua allocator that fails the N-th allocation,
# for every N (spec/c/alloc_test.c). c.alloc.load sweeps loading the module
# and building a flow; c.alloc sweeps running the representative flows.
add_executable(alloc_test spec/c/alloc_test.c ${CMAKE_BINARY_DIR}/pf_init_lua.c
                          $<TARGET_OBJECTS:pfcore>)
target_link_libraries(alloc_test PRIVATE PkgConfig::LUA PkgConfig::UV PkgConfig::LUV PkgConfig::SQLITE PkgConfig::HIREDIS
                                         ${CMAKE_DL_LIBS} m)
add_test(NAME c.alloc.load COMMAND alloc_test --load 1)
set_tests_properties(c.alloc.load PROPERTIES LABELS c TIMEOUT 600)
if(PF_ASAN_DIR)
  add_test(NAME asan.c.alloc.load COMMAND ${PF_ASAN_DIR}/alloc_test --load 1)
  set_tests_properties(asan.c.alloc.load PROPERTIES LABELS asan TIMEOUT 600
    ENVIRONMENT "ASAN_OPTIONS=detect_leaks=1;UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1")
endif()
if(PF_VALGRIND)   # every 25th point: each child is a valgrind process
  add_test(NAME valgrind.c.alloc.load COMMAND valgrind -q --leak-check=full
    --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect
    --error-exitcode=1 $<TARGET_FILE:alloc_test> --load 25)
  set_tests_properties(valgrind.c.alloc.load PROPERTIES LABELS valgrind TIMEOUT 1200)
endif()
add_test(NAME c.alloc COMMAND alloc_test 1)
set_tests_properties(c.alloc PROPERTIES LABELS c TIMEOUT 600)
if(PF_ASAN_DIR)   # every 3rd point: the whole sweep takes minutes under ASan
  add_test(NAME asan.c.alloc COMMAND ${PF_ASAN_DIR}/alloc_test 3)
  set_tests_properties(asan.c.alloc PROPERTIES LABELS asan TIMEOUT 900
    ENVIRONMENT "ASAN_OPTIONS=detect_leaks=1;UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1")
endif()
if(PF_VALGRIND)   # every 100th point (tools/test.sh time); 25th by hand
  add_test(NAME valgrind.c.alloc COMMAND valgrind -q --leak-check=full
    --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect
    --error-exitcode=1 $<TARGET_FILE:alloc_test> 100)
  set_tests_properties(valgrind.c.alloc PROPERTIES LABELS valgrind TIMEOUT 1200)
endif()

# C tests of the core's pure parts, registered in CTest.

# the sleepers (timer.c: FIFO + heap) on a real libuv loop; pf_wake is stubbed.
# No -I src: src/sched.h would hide the system <sched.h> that uv.h needs.
add_executable(heap_test spec/c/heap_test.c src/timer.c)
target_link_libraries(heap_test PRIVATE PkgConfig::LUA PkgConfig::UV m)
add_test(NAME c.heap COMMAND heap_test)
set_tests_properties(c.heap PROPERTIES LABELS c TIMEOUT 60)

# pf_load_chunk's choice between the built-in bytecode and text
add_executable(embed_test spec/c/embed_test.c src/embed.c)
target_link_libraries(embed_test PRIVATE PkgConfig::LUA)
add_test(NAME c.embed COMMAND embed_test)
set_tests_properties(c.embed PROPERTIES LABELS c TIMEOUT 60)

# the chunking of transfers over 4 GiB (src/io.h), without the memory
add_executable(io_chunk_test spec/c/io_chunk_test.c)
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

# Every spec/*_spec.lua is a CTest test; with PF_ASAN_DIR (a build tree
# made with -DPF_SANITIZE=ON) each also runs there, and with PF_VALGRIND
# each runs once under valgrind memcheck.
set(PF_ASAN_DIR "" CACHE PATH "sanitizer build tree whose module the asan.* tests load")
option(PF_VALGRIND "register valgrind.* tests" OFF)

file(GLOB PF_SPECS RELATIVE ${CMAKE_SOURCE_DIR}/spec ${CMAKE_SOURCE_DIR}/spec/*_spec.lua)
set(PF_SPEC_RUN ${CMAKE_SOURCE_DIR}/spec/run)
foreach(spec ${PF_SPECS})
  string(REPLACE "_spec.lua" "" name ${spec})
  add_test(NAME spec.${name} COMMAND sh ${PF_SPEC_RUN} ${CMAKE_BINARY_DIR} spec/${spec})
  set_tests_properties(spec.${name} PROPERTIES LABELS spec TIMEOUT 300)
  if(PF_ASAN_DIR)
    add_test(NAME asan.${name} COMMAND sh ${PF_SPEC_RUN} ${PF_ASAN_DIR} spec/${spec} asan)
    set_tests_properties(asan.${name} PROPERTIES LABELS asan TIMEOUT 600)
  endif()
  if(PF_VALGRIND)
    add_test(NAME valgrind.${name} COMMAND sh ${PF_SPEC_RUN} ${CMAKE_BINARY_DIR} spec/${spec} valgrind)
    set_tests_properties(valgrind.${name} PROPERTIES LABELS valgrind TIMEOUT 1200)
  endif()
endforeach()

# the rockspec builds with Debian's luarocks into a temporary tree
add_test(NAME rockspec COMMAND sh ${CMAKE_SOURCE_DIR}/tools/check-rockspec.sh)
set_tests_properties(rockspec PROPERTIES LABELS packaging TIMEOUT 600)

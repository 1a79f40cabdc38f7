# Lua layer tests: each tests/lua/test_*.lua runs with the thinklab command
# (so also in the sanitizer pass), and one runs under the stock lua5.4
# interpreter through require "thinklab".
#
# Every script gets, as thinklab.params overrides, the thinklab command
# (for scripts that run it as a child process), the Tiny Shakespeare file, the
# fixtures folder, and a scratch folder of its own. TL_SANITIZE in the
# environment is the build option's value (ON or OFF).
set(TL_LUA_TEST_DIR ${CMAKE_CURRENT_SOURCE_DIR}/lua)
set(TL_LUA_TEXT ${CMAKE_SOURCE_DIR}/experiments/data/tinyshakespeare.txt)

file(GLOB TL_LUA_TESTS CONFIGURE_DEPENDS ${TL_LUA_TEST_DIR}/test_*.lua)
list(REMOVE_ITEM TL_LUA_TESTS ${TL_LUA_TEST_DIR}/test_stock_lua.lua)
foreach(script ${TL_LUA_TESTS})
  get_filename_component(name ${script} NAME_WE)
  set(scratch ${CMAKE_CURRENT_BINARY_DIR}/lua_scratch/${name})
  file(MAKE_DIRECTORY ${scratch})
  add_test(NAME lua_${name}
           COMMAND $<TARGET_FILE:thinklab_cli> run ${script}
                   thinklab=$<TARGET_FILE:thinklab_cli> text=${TL_LUA_TEXT}
                   fixtures=${TL_LUA_TEST_DIR}/fixtures scratch=${scratch}
           WORKING_DIRECTORY ${scratch})
  set_tests_properties(lua_${name} PROPERTIES TIMEOUT 600 LABELS lua
                       ENVIRONMENT "OMP_NUM_THREADS=2;TL_SANITIZE=${TL_SANITIZE}")
endforeach()

# The module loaded into Debian's lua5.4. Not in the sanitizer pass: an
# AddressSanitizer-instrumented module cannot load into an uninstrumented
# interpreter unless the ASan runtime is preloaded.
find_program(TL_LUA_INTERPRETER lua5.4 PATHS /usr/bin NO_DEFAULT_PATH)
if(TL_LUA_INTERPRETER)
  set(scratch ${CMAKE_CURRENT_BINARY_DIR}/lua_scratch/test_stock_lua)
  file(MAKE_DIRECTORY ${scratch})
  add_test(NAME lua_test_stock_lua
           COMMAND ${TL_LUA_INTERPRETER} ${TL_LUA_TEST_DIR}/test_stock_lua.lua ${TL_LUA_TEXT}
           WORKING_DIRECTORY ${scratch})
  set_tests_properties(lua_test_stock_lua PROPERTIES TIMEOUT 300 LABELS "lua;no_sanitize"
                       ENVIRONMENT "OMP_NUM_THREADS=2;LUA_CPATH=$<TARGET_FILE_DIR:thinklab_lua>/?.so")
endif()

# Plugin tests: the test_plugin_* executables need the built plugins, the
# deliberately broken plugins below, and the helpers in plugin_util.c.
set(TL_BAD_PLUGIN_DIR ${CMAKE_CURRENT_BINARY_DIR}/bad_plugins)
set(TL_BAD_PLUGINS abi_mismatch:BAD_ABI size_mismatch:BAD_SIZE no_entry:BAD_NO_ENTRY
    bad_default:BAD_DEFAULT no_option_name:BAD_OPTION_NAME silent_create:BAD_SILENT_CREATE
    flat_forward:BAD_FLAT_FORWARD)
set(TL_BAD_PLUGIN_TARGETS "")
foreach(entry ${TL_BAD_PLUGINS})
  string(REPLACE ":" ";" parts ${entry})
  list(GET parts 0 name)
  list(GET parts 1 define)
  add_library(tl_test_plugin_${name} MODULE ${CMAKE_CURRENT_SOURCE_DIR}/bad_plugin.c)
  target_link_libraries(tl_test_plugin_${name} PRIVATE thinklab)
  target_compile_definitions(tl_test_plugin_${name} PRIVATE ${define})
  set_target_properties(tl_test_plugin_${name} PROPERTIES
    OUTPUT_NAME ${name} PREFIX "" SUFFIX ".so"
    LIBRARY_OUTPUT_DIRECTORY ${TL_BAD_PLUGIN_DIR}
    C_VISIBILITY_PRESET hidden)
  list(APPEND TL_BAD_PLUGIN_TARGETS tl_test_plugin_${name})
endforeach()

add_library(tl_plugin_testlib STATIC ${CMAKE_CURRENT_SOURCE_DIR}/plugin_util.c)
target_link_libraries(tl_plugin_testlib PUBLIC tl_testlib)
target_compile_definitions(tl_plugin_testlib PUBLIC
  TL_TEST_PLUGIN_DIR="${CMAKE_BINARY_DIR}/plugins"
  TL_TEST_BAD_PLUGIN_DIR="${TL_BAD_PLUGIN_DIR}")

foreach(src ${TL_C_TESTS})
  get_filename_component(name ${src} NAME_WE)
  if(name MATCHES "^test_plugin_")
    target_link_libraries(${name} PRIVATE tl_plugin_testlib)
    add_dependencies(${name} ${TL_PLUGIN_TARGETS} ${TL_BAD_PLUGIN_TARGETS})
  endif()
endforeach()

# The out-of-tree example: install this build into a temporary prefix, build
# plugins/example against it with find_package(thinklab), and load the
# result through THINKLAB_PLUGIN_PATH.
add_test(NAME plugin_example_installed
  COMMAND ${CMAKE_COMMAND}
    -DTL_BUILD_DIR=${CMAKE_BINARY_DIR}
    -DTL_EXAMPLE_SOURCE=${CMAKE_SOURCE_DIR}/plugins/example
    -DTL_WORK_DIR=${CMAKE_CURRENT_BINARY_DIR}/example_installed
    -DTL_SANITIZE=${TL_SANITIZE}
    -P ${CMAKE_CURRENT_SOURCE_DIR}/cmake/plugin_example.cmake)

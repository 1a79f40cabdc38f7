# Script run by the plugin_example_installed test (cmake -P): installs the
# build into a temporary prefix, configures and builds the example plugin
# against it, and runs the example's loader check with THINKLAB_PLUGIN_PATH
# pointing at the example's build folder.
file(REMOVE_RECURSE ${TL_WORK_DIR})
set(prefix ${TL_WORK_DIR}/prefix)
set(build ${TL_WORK_DIR}/build)

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "command failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
endfunction()

run(${CMAKE_COMMAND} --install ${TL_BUILD_DIR} --prefix ${prefix})
# A sanitized libthinklab needs its consumers built with the same runtime,
# which must come first in the executable's library list.
set(flags "")
if(TL_SANITIZE)
  set(flags "-fsanitize=address,undefined")
endif()
run(${CMAKE_COMMAND} -S ${TL_EXAMPLE_SOURCE} -B ${build} -DCMAKE_PREFIX_PATH=${prefix}
    -DCMAKE_BUILD_TYPE=Release "-DCMAKE_C_FLAGS=${flags}")
run(${CMAKE_COMMAND} --build ${build})
run(${CMAKE_COMMAND} -E env THINKLAB_PLUGIN_PATH=${build} ${build}/example_check)
# The installed command runs from the prefix alone: it loads the shipped
# plugins installed beside its library, not those of the build tree, and
# lists the example plugin it finds through THINKLAB_PLUGIN_PATH.
execute_process(COMMAND ${CMAKE_COMMAND} -E env THINKLAB_PLUGIN_PATH=${build}
                        ${prefix}/bin/thinklab plugins
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR NOT out MATCHES "example")
  message(FATAL_ERROR "installed thinklab plugins failed (${rc}) or did not list the "
                      "example plugin:\n${out}\n${err}")
endif()
if(NOT out MATCHES "transformer 1.0 \\(${prefix}/[^)\n]*/thinklab/plugins/transformer.so\\)")
  message(FATAL_ERROR "installed thinklab did not load the transformer plugin from ${prefix}:\n${out}")
endif()
string(FIND "${out}" "${TL_BUILD_DIR}/plugins" at)
if(NOT at EQUAL -1)
  message(FATAL_ERROR "installed thinklab searches the build tree's plugins:\n${out}")
endif()
message(STATUS "example plugin built against ${prefix} and loaded from ${build}")

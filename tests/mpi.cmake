# Data-parallel tests under mpirun, only when libthinklab was built with MPI.
# tests/mpi/run.sh starts each case with two ranks on this machine (shared
# memory, no network) and checks what it prints. Not in the sanitizer pass:
# Open MPI's start-up allocations are reported as leaks.
if(TL_HAVE_MPI)
  find_program(TL_MPIRUN NAMES mpirun mpiexec HINTS ${MPIEXEC_EXECUTABLE})
  add_executable(mpi_driver ${CMAKE_CURRENT_SOURCE_DIR}/mpi/driver.c)
  target_link_libraries(mpi_driver PRIVATE tl_testlib)
  target_compile_definitions(mpi_driver PRIVATE TL_SOURCE_DIR="${CMAKE_SOURCE_DIR}"
                             TL_BINARY_DIR="${CMAKE_CURRENT_BINARY_DIR}")
  target_include_directories(mpi_driver PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
  add_dependencies(mpi_driver ${TL_PLUGIN_TARGETS} thinklab_cli)

  set(TL_MPI_CASES same_global_batch deterministic kill_rank hang_rank resume_other_world
      lua_ranks lua_error)
  foreach(case ${TL_MPI_CASES})
    set(scratch ${CMAKE_CURRENT_BINARY_DIR}/mpi_scratch/${case})
    file(MAKE_DIRECTORY ${scratch})
    add_test(NAME mpi_${case}
             COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/mpi/run.sh ${case} ${TL_MPIRUN}
                     $<TARGET_FILE:mpi_driver> $<TARGET_FILE:thinklab_cli>
                     ${CMAKE_SOURCE_DIR}/experiments/data/tinyshakespeare.txt ${scratch}
             WORKING_DIRECTORY ${scratch})
    set_tests_properties(mpi_${case} PROPERTIES TIMEOUT 300 RUN_SERIAL TRUE
                         LABELS "mpi;no_sanitize")
  endforeach()
endif()

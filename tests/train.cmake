# The trainer tests read Tiny Shakespeare from the source tree, write scratch
# checkpoints and logs into the tests build folder, load the layer plugins
# from the build tree, and inspect checkpoints through the HDF5 C API.
find_package(HDF5 REQUIRED COMPONENTS C)
file(GLOB TL_TRAIN_TESTS CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/test_train*.c)
foreach(src ${TL_TRAIN_TESTS})
  get_filename_component(name ${src} NAME_WE)
  target_compile_definitions(${name} PRIVATE TL_SOURCE_DIR="${CMAKE_SOURCE_DIR}"
                             TL_BINARY_DIR="${CMAKE_CURRENT_BINARY_DIR}" ${HDF5_C_DEFINITIONS})
  target_include_directories(${name} PRIVATE ${HDF5_C_INCLUDE_DIRS})
  target_link_libraries(${name} PRIVATE ${HDF5_C_LIBRARIES})
  add_dependencies(${name} ${TL_PLUGIN_TARGETS})
  set_tests_properties(${name} PROPERTIES TIMEOUT 120 ENVIRONMENT "OMP_NUM_THREADS=2")
endforeach()

# test_log reads the run log back through the HDF5 C API, runs h5dump on it
# and, when h5py imports, reads it from Python while the writer is alive.
find_package(HDF5 REQUIRED COMPONENTS C)
find_program(TL_H5DUMP h5dump PATHS /usr/bin)
target_include_directories(test_log PRIVATE ${HDF5_C_INCLUDE_DIRS})
target_link_libraries(test_log PRIVATE ${HDF5_C_LIBRARIES})
target_compile_definitions(test_log PRIVATE ${HDF5_C_DEFINITIONS}
                           TL_TEST_PYTHON="${TL_PYTHON}"
                           TL_TEST_H5DUMP="$<$<BOOL:${TL_H5DUMP}>:${TL_H5DUMP}>")
set_tests_properties(test_log PROPERTIES TIMEOUT 120 ENVIRONMENT "OMP_NUM_THREADS=2")

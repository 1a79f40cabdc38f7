# test_data reads the corpora in experiments/data from the source tree.
target_compile_definitions(test_data PRIVATE TL_SOURCE_DIR="${CMAKE_SOURCE_DIR}")

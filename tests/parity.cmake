# PyTorch parity for whole decoder blocks: the C driver writes a block's
# output and gradients as .npy files, test_block_parity.py recomputes them in
# torch. The test reports code 77 (skipped) when torch does not import.
add_executable(block_parity_driver ${CMAKE_CURRENT_SOURCE_DIR}/block_parity_driver.c)
target_link_libraries(block_parity_driver PRIVATE tl_testlib)

add_test(NAME test_block_parity
         COMMAND ${TL_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/test_block_parity.py
                 $<TARGET_FILE:block_parity_driver>)
set_tests_properties(test_block_parity PROPERTIES
                     SKIP_RETURN_CODE 77
                     ENVIRONMENT "OMP_NUM_THREADS=2")

# A bad THINKLAB_GEMM value is read once per process, so its check runs in a
# process of its own.
add_test(NAME test_gemm_bad_env COMMAND test_gemm --bad-env)
set_tests_properties(test_gemm_bad_env PROPERTIES
                     ENVIRONMENT "OMP_NUM_THREADS=2;THINKLAB_GEMM=fast-please")

# OMP_NUM_THREADS=1 and no thread setting: products of 256 rows or more go to
# the in-tree kernel and leave the OpenMP thread count as it is.
add_test(NAME test_gemm_one_thread COMMAND test_gemm --env-one-thread)
set_tests_properties(test_gemm_one_thread PROPERTIES ENVIRONMENT "OMP_NUM_THREADS=1")

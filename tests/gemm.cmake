# A bad THINKLAB_GEMM value is read once per process, so its check runs in a
# process of its own.
add_test(NAME test_gemm_bad_env COMMAND test_gemm --bad-env)
set_tests_properties(test_gemm_bad_env PROPERTIES
                     ENVIRONMENT "OMP_NUM_THREADS=2;THINKLAB_GEMM=fast-please")

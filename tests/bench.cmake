# The step benchmark's programs (framework/bench): the loss in every parallel
# mode and their argument checks, through tests/bench_step_options.sh. Only
# argument checks of run_bench.sh run here; it measures nothing in the suite.
add_test(NAME bench_step_options
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/bench_step_options.sh
                 $<TARGET_FILE:thinklab-bench-step>
                 ${CMAKE_SOURCE_DIR}/framework/bench/run_bench.sh
                 ${CMAKE_BINARY_DIR} ${TL_PYTHON})
set_tests_properties(bench_step_options PROPERTIES TIMEOUT 300 LABELS bench
                     ENVIRONMENT "OMP_NUM_THREADS=2")

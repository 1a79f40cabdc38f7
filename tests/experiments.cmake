# experiments/run_main.sh: that it builds before every run, with cmake and
# thinklab replaced by stubs (tests/run_main_builds.sh).
add_test(NAME run_main_builds
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/run_main_builds.sh
                 ${CMAKE_SOURCE_DIR}/experiments/run_main.sh)
set_tests_properties(run_main_builds PROPERTIES TIMEOUT 60)

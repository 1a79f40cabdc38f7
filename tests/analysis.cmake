# The analysis scripts (analysis/*.py) on real logs: test_analysis.py trains
# two tiny models through the thinklab command (tests/lua/make_logs.lua) and
# runs every script on their logs. The command is an ordinary executable, so
# the test also runs in the sanitizer pass, where the command carries
# AddressSanitizer and Python does not.
execute_process(COMMAND ${TL_PYTHON} -c "import pytest, h5py, numpy, matplotlib"
                RESULT_VARIABLE tl_analysis_imports OUTPUT_QUIET ERROR_QUIET)
if(NOT tl_analysis_imports EQUAL 0)
  message(WARNING "${TL_PYTHON} cannot import pytest, h5py, numpy and matplotlib, so "
                  "test_analysis will fail: apt-get install python3-pytest python3-h5py "
                  "python3-numpy python3-matplotlib")
endif()

set(scratch ${CMAKE_CURRENT_BINARY_DIR}/analysis_scratch)
file(MAKE_DIRECTORY ${scratch})
add_test(NAME test_analysis
         COMMAND ${TL_PYTHON} -m pytest -q -rs -p no:cacheprovider
                 ${CMAKE_CURRENT_SOURCE_DIR}/test_analysis.py
         WORKING_DIRECTORY ${scratch})
set_tests_properties(test_analysis PROPERTIES
  TIMEOUT 600 LABELS "python;analysis"
  ENVIRONMENT "OMP_NUM_THREADS=2;MPLBACKEND=Agg;TL_THINKLAB=$<TARGET_FILE:thinklab_cli>;TL_TEXT=${CMAKE_SOURCE_DIR}/experiments/data/tinyshakespeare.txt;TL_SCRATCH=${scratch}")

# A build folder inside the source tree keeps itself out of git status (the
# top-level CMakeLists.txt writes a .gitignore into it). Outside a git
# checkout, or with the build folder elsewhere, there is nothing to check.
find_program(TL_GIT git)
if(TL_GIT)
  add_test(NAME build_folder_ignored
           COMMAND sh -c "cd \"$1\" && git rev-parse --is-inside-work-tree >/dev/null 2>&1 || { echo 'not a git checkout: nothing to check'; exit 0; }; out=$(git status --porcelain --untracked-files=all -- \"$2\") && test -z \"$out\" || { echo \"git status lists the build folder: $out\"; exit 1; }"
                   sh ${CMAKE_SOURCE_DIR} ${CMAKE_BINARY_DIR})
endif()

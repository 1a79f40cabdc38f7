# Included from framework/CMakeLists.txt: plugin folders for the loader, and
# installation of libthinklab, its headers and a CMake package.
include(CMakePackageConfigHelpers)

set(TL_PLUGIN_INSTALL_DIR ${CMAKE_INSTALL_FULL_LIBDIR}/thinklab/plugins)
# TL_LIBRARY_BUILD_DIR tells the loader whether it runs from the build tree
# or from an installed copy, which searches thinklab/plugins beside itself.
target_compile_definitions(thinklab PRIVATE
  TL_PLUGIN_BUILD_DIR="${CMAKE_BINARY_DIR}/plugins"
  TL_PLUGIN_INSTALL_DIR="${TL_PLUGIN_INSTALL_DIR}"
  TL_LIBRARY_BUILD_DIR="${CMAKE_CURRENT_BINARY_DIR}")

install(TARGETS thinklab EXPORT thinklabTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/include/thinklab
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT thinklabTargets NAMESPACE thinklab::
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/thinklab)

configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/thinklabConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/thinklabConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/thinklab
  PATH_VARS CMAKE_INSTALL_LIBDIR)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/thinklabConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/thinklabConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/thinklabConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/thinklab)

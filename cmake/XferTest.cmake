# xfer_add_test_suite(NAME SOURCES...): one GoogleTest executable linked to xfer (and the CLI library),
# reusing the library's precompiled header; every TEST becomes its own ctest entry.
find_package(GTest REQUIRED)
include(GoogleTest)

function(xfer_add_test_suite name)
  add_executable(${name} ${ARGN})
  target_link_libraries(${name} PRIVATE xfer_cli GTest::gtest)
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/tests)
  target_precompile_headers(${name} REUSE_FROM xfer)
  # Tests that start real `xfer` processes (benchmark suites) run the CLI binary built beside them.
  target_compile_definitions(${name} PRIVATE XFER_SOURCE_DIR="${PROJECT_SOURCE_DIR}"
                             XFER_BINARY="$<TARGET_FILE:xfer_bin>")
  add_dependencies(${name} xfer_bin)
  gtest_discover_tests(${name}
    WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR}
    PROPERTIES TIMEOUT 300
    DISCOVERY_TIMEOUT 60)
endfunction()

# Builds and runs one consumer project against xiio; run by CTest as
#   cmake -DMODE=find-package|add-subdirectory -DXIIO_SOURCE_DIR=... -DXIIO_BINARY_DIR=...
#         -DWORK_DIR=... -DCXX_COMPILER=... -DGENERATOR=... [-DMAKE_PROGRAM=...]
#         [-DEXPECT_TLS=ON] -P packaging.cmake
# EXPECT_TLS (xiio built with OpenSSL 3): the consumer also requires xiio::tls (the "tls"
# component for find_package) and builds and runs a program using it.
#
# find-package:     `cmake --install` the xiio build tree into WORK_DIR/prefix, check the
#                   CMake package and the pkg-config file are there, then configure the
#                   consumer with CMAKE_PREFIX_PATH=<prefix>, build it and run it. If
#                   pkg-config is installed, also compile the consumer with its flags.
# add-subdirectory: configure the consumer with XIIO_SOURCE_DIR, build it and run it; check
#                   that its `cmake --install` installs nothing of xiio unless XIIO_INSTALL=ON.
# Any failing step ends the script with FATAL_ERROR, which fails the test.

cmake_minimum_required(VERSION 3.22)

foreach(var MODE XIIO_SOURCE_DIR XIIO_BINARY_DIR WORK_DIR CXX_COMPILER GENERATOR)
    if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
        message(FATAL_ERROR "packaging.cmake: -D${var}=... is required")
    endif()
endforeach()

function(step what)
    message(STATUS "packaging (${MODE}): ${what}")
    execute_process(COMMAND ${ARGN} RESULT_VARIABLE result)
    if(NOT result EQUAL 0)
        message(FATAL_ERROR "packaging (${MODE}): ${what} failed (${result}):\n  ${ARGN}")
    endif()
endfunction()

set(consumer_dir ${CMAKE_CURRENT_LIST_DIR}/${MODE})
set(build_dir ${WORK_DIR}/${MODE}-build)
set(configure_args -G "${GENERATOR}" -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DCMAKE_BUILD_TYPE=Debug
    -DEXPECT_TLS=${EXPECT_TLS})
if(MAKE_PROGRAM)
    list(APPEND configure_args -DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM})
endif()
# Start clean every time: a stale cache would hide packaging mistakes.
file(REMOVE_RECURSE ${build_dir})

if(MODE STREQUAL "find-package")
    set(prefix ${WORK_DIR}/prefix)
    file(REMOVE_RECURSE ${prefix})
    step("install xiio into ${prefix}"
        ${CMAKE_COMMAND} --install ${XIIO_BINARY_DIR} --prefix ${prefix})

    file(GLOB_RECURSE config_files ${prefix}/*/xiioConfig.cmake)
    file(GLOB_RECURSE pc_files ${prefix}/*/pkgconfig/xiio.pc)
    if(NOT config_files)
        message(FATAL_ERROR "packaging: no xiioConfig.cmake installed under ${prefix}")
    endif()
    if(NOT pc_files)
        message(FATAL_ERROR "packaging: no pkgconfig/xiio.pc installed under ${prefix}")
    endif()
    if(NOT EXISTS ${prefix}/include/xiio.hpp)
        message(FATAL_ERROR "packaging: ${prefix}/include/xiio.hpp was not installed")
    endif()

    step("configure the consumer"
        ${CMAKE_COMMAND} -S ${consumer_dir} -B ${build_dir} ${configure_args}
            -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON)

    # The pkg-config file: its flags alone must build the same program.
    find_program(PKG_CONFIG_EXECUTABLE pkg-config)
    if(PKG_CONFIG_EXECUTABLE)
        list(GET pc_files 0 pc_file)
        get_filename_component(pc_dir ${pc_file} DIRECTORY)
        set(ENV{PKG_CONFIG_PATH} ${pc_dir})
        execute_process(COMMAND ${PKG_CONFIG_EXECUTABLE} --cflags --libs xiio
            OUTPUT_VARIABLE pc_flags OUTPUT_STRIP_TRAILING_WHITESPACE
            RESULT_VARIABLE result)
        if(NOT result EQUAL 0)
            message(FATAL_ERROR "packaging: pkg-config --cflags --libs xiio failed")
        endif()
        message(STATUS "packaging (${MODE}): pkg-config flags: ${pc_flags}")
        separate_arguments(pc_flags UNIX_COMMAND "${pc_flags}")
        file(MAKE_DIRECTORY ${build_dir})
        step("build the consumer with pkg-config flags"
            ${CXX_COMPILER} ${consumer_dir}/app.cpp -o ${build_dir}/app-pkg-config ${pc_flags})
        step("run the pkg-config consumer" ${build_dir}/app-pkg-config)
    else()
        message(STATUS "packaging (${MODE}): pkg-config not found, only checked xiio.pc exists")
    endif()
elseif(MODE STREQUAL "add-subdirectory")
    step("configure the consumer"
        ${CMAKE_COMMAND} -S ${consumer_dir} -B ${build_dir} ${configure_args}
            -DXIIO_SOURCE_DIR=${XIIO_SOURCE_DIR})
else()
    message(FATAL_ERROR "packaging.cmake: unknown MODE '${MODE}'")
endif()

step("build the consumer" ${CMAKE_COMMAND} --build ${build_dir})
step("run the consumer" ${build_dir}/app)
if(EXPECT_TLS)
    step("run the xiio::tls consumer" ${build_dir}/app_tls)
endif()

if(MODE STREQUAL "add-subdirectory")
    # XIIO_INSTALL defaults to off below a parent project: the parent's `cmake --install`
    # must not install xiio's headers and package; with -DXIIO_INSTALL=ON it does.
    set(prefix ${WORK_DIR}/add-subdirectory-prefix)
    file(REMOVE_RECURSE ${prefix})
    step("install the consumer (XIIO_INSTALL off)"
        ${CMAKE_COMMAND} --install ${build_dir} --prefix ${prefix})
    file(GLOB_RECURSE installed ${prefix}/*)
    if(installed)
        message(FATAL_ERROR "packaging: a parent's install installed xiio's files: ${installed}")
    endif()
    step("configure the consumer with XIIO_INSTALL=ON"
        ${CMAKE_COMMAND} -S ${consumer_dir} -B ${build_dir} -DXIIO_INSTALL=ON)
    step("install the consumer (XIIO_INSTALL on)"
        ${CMAKE_COMMAND} --install ${build_dir} --prefix ${prefix})
    if(NOT EXISTS ${prefix}/include/xiio.hpp)
        message(FATAL_ERROR "packaging: XIIO_INSTALL=ON did not install xiio.hpp")
    endif()
endif()

# Cross-compiling for 64-bit ARM Linux with Debian's cross compiler (apt-get install g++-aarch64-linux-gnu),
# tests run under qemu-user (apt-get install qemu-user). Used by .ci/aarch64.sh:
#   cmake -S . -B build/aarch64 --toolchain cmake/aarch64-linux-gnu.cmake -DBITNET_PYTHON=OFF -DBITNET_BUILD_TESTS=ON
# With Clang instead (it uses the GCC cross toolchain's headers, libraries and linker): add
#   -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_CXX_COMPILER_TARGET=aarch64-linux-gnu
# CTest then runs each test binary through CMAKE_CROSSCOMPILING_EMULATOR, with the cross compiler's sysroot.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
if(NOT CMAKE_CXX_COMPILER)
  set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
endif()
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64;-L;/usr/aarch64-linux-gnu)

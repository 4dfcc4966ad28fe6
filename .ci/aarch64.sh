#!/usr/bin/env bash
# CI for the ARM kernels on an x86 machine: cross-builds the C++ tests for 64-bit ARM Linux and runs them
# with CTest under qemu-user. Called by .ci/run; runs alone too: `bash .ci/aarch64.sh`.
#
# 1. installs the GCC cross compiler, clang and qemu-user with apt-get (a package that does not install fails
#    the run);
# 2. builds the CTest binaries for aarch64 with GCC (cmake/aarch64-linux-gnu.cmake, no Python);
# 3. runs CTest twice: under qemu's default CPU ("max", which has the ARMv8.2 dot product, so the tests run
#    the scalar, neon and dotprod backends) and under QEMU_CPU=cortex-a53 (ARMv8.0: scalar and neon, and the
#    run-time check must not pick dotprod). Each run's log must name exactly those backends, so a build that
#    silently dropped a NEON kernel fails here instead of passing on the portable path alone;
# 4. builds them again with clang (the compiler of Apple's toolchain, which generates different loops) and
#    runs CTest once under the default CPU, which runs both NEON kernels.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc 2>/dev/null || echo 2)
build=build/ci-aarch64
packages=(g++-aarch64-linux-gnu clang qemu-user)

step() { printf '\n==== %s ====\n' "$*"; }

step "aarch64: install ${packages[*]}"
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
export DEBIAN_FRONTEND=noninteractive
if ! as_root apt-get install -y -q "${packages[@]}"; then  # a fresh machine may need the package lists first
  as_root apt-get update -q
  as_root apt-get install -y -q "${packages[@]}" ||
    { echo "aarch64 CI: could not install ${packages[*]} with apt-get" >&2; exit 1; }
fi
aarch64-linux-gnu-g++ --version | head -n 1
clang++ --version | head -n 1
qemu-aarch64 --version | head -n 1

# Cross-builds the C++ tests into $1 with the extra CMake arguments $2...
cross_build() {
  local dir=$1
  shift
  step "aarch64: cross-build the C++ tests ($dir)"
  cmake -S . -B "$dir" --toolchain cmake/aarch64-linux-gnu.cmake \
    -DBITNET_PYTHON=OFF -DBITNET_BUILD_TESTS=ON -DCMAKE_BUILD_TYPE=Release "$@"
  cmake --build "$dir" -j"$jobs"
}

# Runs CTest in build $1 under qemu with the CPU model $2 ("" = qemu's default) and checks that every test
# binary reported exactly the backends $3.
run_ctest() {
  local dir=$1 cpu=$2 want=$3 log
  log="$dir/ctest-${cpu:-max}.log"
  step "aarch64: CTest under qemu-aarch64 ($dir), CPU ${cpu:-max (default)}"
  env ${cpu:+QEMU_CPU=$cpu} ctest --test-dir "$dir" --output-on-failure -V > "$log" 2>&1 ||
    { cat "$log"; echo "aarch64 CI: CTest failed in $dir under CPU ${cpu:-max}" >&2; exit 1; }
  grep -E "backends on this CPU|checks, [0-9]+ failures|tests passed" "$log"
  local got
  got=$(grep -cE "backends on this CPU: $want( \(|$)" "$log" || true)
  if [ "$got" -ne 2 ]; then
    echo "aarch64 CI: expected both test binaries in $dir to run exactly the backends '$want' under CPU ${cpu:-max}" >&2
    exit 1
  fi
}

cross_build "$build"
run_ctest "$build" "" "scalar neon dotprod"
run_ctest "$build" cortex-a53 "scalar neon"
cross_build "$build-clang" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_CXX_COMPILER_TARGET=aarch64-linux-gnu
run_ctest "$build-clang" "" "scalar neon dotprod"

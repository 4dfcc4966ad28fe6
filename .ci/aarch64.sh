#!/usr/bin/env bash
# CI for the ARM kernels on an x86 machine: cross-builds the C++ tests for 64-bit ARM Linux and runs them
# with CTest under qemu-user. Called by .ci/run; runs alone too: `bash .ci/aarch64.sh`.
#
# 1. installs the cross compiler and qemu-user with apt-get (a package that does not install fails the run);
# 2. builds the CTest binaries for aarch64 (cmake/aarch64-linux-gnu.cmake, no Python);
# 3. runs CTest twice: under qemu's default CPU ("max", which has the ARMv8.2 dot product, so the tests run
#    the scalar, neon and dotprod backends) and under QEMU_CPU=cortex-a53 (ARMv8.0: scalar and neon, and the
#    run-time check must not pick dotprod). Each run's log must name exactly those backends, so a build that
#    silently dropped a NEON kernel fails here instead of passing on the portable path alone.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc 2>/dev/null || echo 2)
build=build/ci-aarch64
packages=(g++-aarch64-linux-gnu qemu-user)

step() { printf '\n==== %s ====\n' "$*"; }

step "aarch64: install ${packages[*]}"
sudo=()
if [ "$(id -u)" -ne 0 ]; then sudo=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
if ! "${sudo[@]}" apt-get install -y -q "${packages[@]}"; then
  "${sudo[@]}" apt-get update -q
  "${sudo[@]}" apt-get install -y -q "${packages[@]}" ||
    { echo "aarch64 CI: could not install ${packages[*]} with apt-get" >&2; exit 1; }
fi
aarch64-linux-gnu-g++ --version | head -n 1
qemu-aarch64 --version | head -n 1

step "aarch64: cross-build the C++ tests"
cmake -S . -B "$build" --toolchain cmake/aarch64-linux-gnu.cmake \
  -DBITNET_PYTHON=OFF -DBITNET_BUILD_TESTS=ON -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j"$jobs"

# Runs CTest under qemu with the CPU model $1 ("" = qemu's default) and checks that every test binary
# reported exactly the backends $2.
run_ctest() {
  local cpu=$1 want=$2 log
  log="$build/ctest-${cpu:-max}.log"
  step "aarch64: CTest under qemu-aarch64, CPU ${cpu:-max (default)}"
  env ${cpu:+QEMU_CPU=$cpu} ctest --test-dir "$build" --output-on-failure -V > "$log" 2>&1 ||
    { cat "$log"; echo "aarch64 CI: CTest failed under CPU ${cpu:-max}" >&2; exit 1; }
  grep -E "backends on this CPU|checks, [0-9]+ failures|tests passed" "$log"
  local got
  got=$(grep -cE "backends on this CPU: $want( \(|$)" "$log" || true)
  if [ "$got" -ne 2 ]; then
    echo "aarch64 CI: expected both test binaries to run exactly the backends '$want' under CPU ${cpu:-max}" >&2
    exit 1
  fi
}

run_ctest "" "scalar neon dotprod"
run_ctest cortex-a53 "scalar neon"

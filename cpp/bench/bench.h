// bench.h: benchmark-only code for tools/bench/bench_kernels.py, built into bitnet_ref._bench, never into _core.
//
// A streaming read-bandwidth probe (membench.cpp), the multiply ceiling of one core (mac_peak.cpp and
// the mac_loop_*_asm.cpp loops) and a bitnet.cpp-style I2_S GEMV loop to time ours against
// (i2s_avx2.cpp). None of it computes anything bitnet_ref uses; the kernels are in ../ternary.h.
#pragma once

#include <cstdint>

#include "ternary.h"

namespace bitnet {

// ---- memory (membench.cpp) ---------------------------------------------------------------------

// Median streaming read bandwidth in GB/s over `reps` passes of a `bytes` buffer with `threads`, each
// thread's tasks reading `streams` (1-8) sequential streams at once.
double measure_read_bandwidth(int64_t bytes, int threads, int reps, int streams = 4);

// ---- multiply ceiling (mac_peak.cpp) -----------------------------------------------------------

// The multiply ceiling of one core for the instruction a backend is built on, in multiply-adds per
// second of the calling thread's CPU time (wall time where the platform has no per-thread clock): twelve
// independent vpdpbusd zmm (avx512vnni), vpmaddubsw ymm (avx2), sdot (dotprod) or smlal (neon) per iteration, run
// for `iters` iterations. 0 for a backend this build/CPU lacks, and 0 in builds without the inline-assembly
// loops (BITNET_INLINE_ASM=OFF, MSVC).
double mac_peak(Backend b, int64_t iters);
void mac_loop_avx2(int64_t iters);        // the timed loops (mac_loop_avx2_asm.cpp, mac_loop_avx512_asm.cpp,
void mac_loop_avx512vnni(int64_t iters);  // mac_loop_neon_asm.cpp, mac_loop_neon_dotprod_asm.cpp)
void mac_loop_neon(int64_t iters);
void mac_loop_neon_dotprod(int64_t iters);

// ---- bitnet.cpp-style baseline (i2s_avx2.cpp) ----------------------------------------------------
// Our re-implementation of the published I2_S AVX2 1x1 GEMV loop (see that file). NOT exact for
// K > 2048 with adversarial activations (int16 wraps, as in the original). Only on x86 builds with
// the AVX2 kernel (BITNET_HAVE_AVX2_KERNEL), and only to be called when cpu_has_avx2().
// Repacks our format into the I2_S x86 layout: out has n * k / 4 bytes; k % 128 == 0.
void i2s_repack_bench(const uint8_t* ours, int64_t n, int64_t k, uint8_t* out);
// y (n) = x (k) . w^T with int16 accumulation over 32-block groups; k % 128 == 0.
void i2s_gemv_bench(const uint8_t* w_i2s, const int8_t* x, int64_t n, int64_t k, int32_t* y);

}  // namespace bitnet

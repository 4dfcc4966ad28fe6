// int8_matmul.h: the exact int8 x int8 product of the int8 output head (and tied embedding) of bitnet_ref.
//
// The output head of a BitNet model stays in floating point during training; at decode time its rows are
// stored as int8 with one float32 scale per row (bitnet_ref/runtime/int8_head.py quantizes them, absmax per row), and
// the normalised hidden state is quantized to int8 per token exactly as a BitLinear input (act_quant_rows). The product
// of the two is an exact int32; the caller scales it back with gamma * row_scale. This header declares that integer
// product only: no scales, no float math.
//
// Layout: w is (N, K) int8, row-major, row n at byte n * K (no padding, no alignment needed).
// Product, exact in int32:  y[m, n] = sum_k x[m, k] * w[n, k],   x and w int8 in [-128, 127].
// Exactness bound: |x * w| <= 2^14, so K <= kInt8MaxK = 2^16 keeps |y| <= 2^30.
//
// Kernels: int8_rows_ref (portable, the oracle), int8_rows_avx2 (int8_matmul_avx2.cpp: both operands widened to
// int16, vpmaddwd, exact for every int8 value including -128) and, for several activation rows, int8_rows_avx512vnni
// (vpdpbusd on the activations shifted to unsigned). int8_matmul dispatches and splits rows across threads
// (threadpool.h).
#pragma once

#include <cstdint>

#include "ternary.h"  // Backend

namespace bitnet {

constexpr int64_t kInt8MaxK = int64_t{1} << 16;

// y[:, n0:n1] for all m rows of x (m, k); y row stride n.
void int8_rows_ref(const int8_t* x, const int8_t* w, int32_t* y, int64_t m, int64_t n, int64_t k, int64_t n0,
                   int64_t n1);
// The same with AVX2 (only when cpu_has_avx2()). xw is x widened to int16, (m, k) row-major.
void int8_rows_avx2(const int16_t* xw, const int8_t* w, int32_t* y, int64_t m, int64_t n, int64_t k, int64_t n0,
                    int64_t n1);

// The same for m > 1 with AVX-512 VNNI (int8_matmul_avx512.cpp; only when cpu_has_avx512vnni()). xu is x shifted to
// unsigned, x + 128 (x ^ 0x80), rows xstride bytes apart, each readable up to k rounded up to 64.
void int8_rows_avx512vnni(const uint8_t* xu, int64_t xstride, const int8_t* w, int32_t* y, int64_t m, int64_t n,
                          int64_t k, int64_t n0, int64_t n1);

// y (m, n) = x (m, k) . w^T, exact. Arguments must already be validated (k <= kInt8MaxK). Backend kScalar
// runs the reference; kAvx512Vnni the AVX-512 GEMM for m > 1; any other (and a GEMV) AVX2 when the CPU has it. threads
// <= 0 uses default_threads().
void int8_matmul(const int8_t* x, const int8_t* w, int32_t* y, int64_t m, int64_t n, int64_t k, Backend backend,
                 int threads);

}  // namespace bitnet

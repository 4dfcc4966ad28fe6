// ternary5.h: the 1.6-bit packed ternary format (five weights per byte) and its int8 x ternary kernels.
//
// The second packed format of bitnet_ref, beside the 2-bit one of ternary.h (whose conventions it
// follows: codes c = w + 1, no scale in the buffer, exact int32 products, the same kMaxK). It moves 20%
// fewer weight bytes than the 2-bit format, which is what a decode GEMV that streams its weights from
// DRAM pays for; the price is a dearer unpack (below). This header is the one place the format is
// written down. Not a file format (nothing stores it) and not ggml's TQ1_0 (which has a per-block fp16
// scale, a different order and a tail of four weights per byte; the base-3 fraction is the same idea,
// compilade's, from llama.cpp's TQ1_0).
//
// ---------------------------------------------------------------------------------------------
// Packed format (1.6 bits per weight, no scale)
//
//   weight w in {-1, 0, +1}  ->  code c = w + 1 in {0, 1, 2}
//
//   * Row-major: row n of the (N, K) weight matrix starts at byte n * t5_row_stride_bytes(K).
//   * Each row is split into blocks of kT5BlockWeights = 160 weights stored in kT5BlockBytes = 32 bytes.
//     The last block of a row is padded with weight 0 (code 1) up to 160 weights, so
//         t5_row_stride_bytes(K) = ceil(K / 160) * 32   and   t5_packed_nbytes(N, K) = N * t5_row_stride_bytes(K).
//   * Inside a block, byte j (0 <= j < 32) holds the five elements j, j + 32, j + 64, j + 96, j + 128,
//     with codes c0 .. c4 (c_i of element j + 32 i), as
//         v = 81 c0 + 27 c1 + 9 c2 + 3 c3 + c4                       (0 .. 242, c0 most significant)
//         byte = q = ceil(v * 256 / 243)                             (0 .. 255: v / 243 as an 8-bit fraction)
//     Five zero weights (all codes 1, v = 121) are the byte 128 (0x80): padding bytes are 0x80.
//     Bytes that are not ceil(v * 256 / 243) for any v (13 of the 256) are invalid.
//   * Decoding (exact for every valid byte; tested over all 243 values): the codes are the base-3 digits of
//     the fraction q / 256, read by multiplying by 3:
//         r_0 = q,   3 r_i = 256 c_i + r_{i+1}   (c_i = (3 r_i) >> 8, r_{i+1} = 3 r_i mod 256)
//     One vpmaddubsw of the 16-bit word (r_i, anything) with the bytes (3, 0) is 3 r_i, i.e. c_i in the
//     high byte and r_{i+1} in the low one: the AVX2 kernel (ternary5_avx2.cpp) decodes five times in a
//     chain of multiplies, in natural element order, so the activations need no permutation. The portable
//     reference (ternary5_ref.cpp) decodes with integer division and is the oracle.
//   * Bits per weight: exactly 1.6 whenever K is a multiple of 160 (log2(3) = 1.585 is the floor); 1.625 at
//     K = 2048 and 4096, 1.6047 at 11008 (the padded last block).
//
// Product computed by every kernel, exactly, in int32: y[m, n] = sum_k x[m, k] * w[n, k], as ternary.h;
// the SIMD kernel multiplies codes (maddubs) and subtracts sum_k x[m, k] once per row, padding x with
// zeros. Exactness bound: as ternary.h, |sum c*x| <= 256 * K <= 2^30 for K <= kMaxK.
// ---------------------------------------------------------------------------------------------
#pragma once

#include <cstdint>

#include "ternary.h"

namespace bitnet {

constexpr int64_t kT5BlockWeights = 160;  // weights per block
constexpr int64_t kT5BlockBytes = 32;     // bytes per block (five weights each)
constexpr uint8_t kT5PadByte = 0x80;      // five zero weights
static_assert(kT5BlockWeights == 5 * kT5BlockBytes, "byte j of a block holds elements j + 32 i, i < 5");

constexpr int64_t t5_blocks_per_row(int64_t k) { return (k + kT5BlockWeights - 1) / kT5BlockWeights; }
constexpr int64_t t5_row_stride_bytes(int64_t k) { return t5_blocks_per_row(k) * kT5BlockBytes; }
constexpr int64_t t5_packed_nbytes(int64_t n, int64_t k) { return n * t5_row_stride_bytes(k); }
static_assert(t5_row_stride_bytes(1) == 32 && t5_row_stride_bytes(160) == 32 && t5_row_stride_bytes(161) == 64, "");

// The stored byte of five codes (each in {0, 1, 2}), and back (-1 for one of the 13 invalid bytes).
constexpr uint8_t t5_encode(int c0, int c1, int c2, int c3, int c4) {
  const int v = 81 * c0 + 27 * c1 + 9 * c2 + 3 * c3 + c4;
  return static_cast<uint8_t>((v * 256 + 242) / 243);
}
static_assert(t5_encode(1, 1, 1, 1, 1) == kT5PadByte, "padding (weight 0) is 0x80");

// ---- portable reference (ternary5_ref.cpp) ----------------------------------------------------

// Packs codes (N, K) int8 in {-1, 0, 1} into out[t5_packed_nbytes(n, k)]. Returns -1, or the flat index
// of the first value outside {-1, 0, 1} (out is then partially written and must be discarded).
int64_t pack5_ref(const int8_t* codes, int64_t n, int64_t k, uint8_t* out);

// Unpacks into out (N, K) int8. Returns -1, or the flat index (row * K_padded + col) of the first
// weight of an invalid byte, or of the first padding weight that is not 0.
int64_t unpack5_ref(const uint8_t* packed, int64_t n, int64_t k, int8_t* out);

// Row kernels, same contract as ternary.h's RowKernel: a.w holds this format (row stride
// t5_row_stride_bytes(k)); for the AVX2 one a.xp is x zero-padded to a multiple of 160 and a.xsum its row sums.
void rows5_ref(const KernelArgs& a, int64_t n0, int64_t n1);
void rows5_avx2(const KernelArgs& a, int64_t n0, int64_t n1);
// AArch64 NEON, ARMv8.0 and ARMv8.2 dot product (ternary5_neon*.cpp): a.xp and a.xsum as for the AVX2 one.
void rows5_neon(const KernelArgs& a, int64_t n0, int64_t n1);
void rows5_neon_dotprod(const KernelArgs& a, int64_t n0, int64_t n1);

// y (m, n) = x (m, k) . w^T, exact, for w in this format (dispatch.cpp). Arguments must already be
// validated (sizes, k <= kMaxK). Backend kAvx512Vnni runs the AVX2 kernel (there is no AVX-512 one).
void matmul5(const int8_t* x, const uint8_t* w, int32_t* y, int64_t m, int64_t n, int64_t k, Backend backend,
             int threads);

}  // namespace bitnet

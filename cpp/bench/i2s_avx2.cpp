// i2s_avx2.cpp: a bitnet.cpp-style I2_S GEMV baseline, FOR BENCHMARKING ONLY.
//
// This is our own re-implementation of the published algorithm of bitnet.cpp's AVX2 I2_S 1x1
// GEMV inner loop (microsoft/BitNet, src/ggml-bitnet-mad.cpp, ggml_vec_dot_i2_i8_s_1x1), written
// from a description of that loop; no bitnet.cpp code is copied.
// It exists so that tools/bench/bench_kernels.py can time "our kernel vs a bitnet.cpp-style kernel" in one
// run on one machine, compiled with the same AVX2 flags as ../ternary_avx2.cpp. Nothing in bitnet_ref
// uses it for computing; it is reachable only through bitnet_ref._bench (i2s_repack, i2s_gemv,
// gemv_seconds) and test_ternary.cpp.
//
// I2_S x86 layout (what i2s_repack_bench writes): codes c = w + 1 in {0, 1, 2}, row stride K / 4
// bytes (K must be a multiple of 128), blocks of 128 weights in 32 bytes, byte j of a block holds
//   element j at bits 7:6, j + 32 at bits 5:4, j + 64 at bits 3:2, j + 96 at bits 1:0
// (the reverse field order of our format in ternary.h).
//
// The loop, per 128-weight block: one 32-byte weight load, 3 shifts (by 2, 4, 6) and 4 ANDs with 3,
// 4 activation loads, 4 maddubs(codes_u8, x_s8), int16 adds into one accumulator. Every 32 blocks
// (4096 weights) the accumulator is widened with madd(acc, 1) into int32; at the end a horizontal
// sum. The caller subtracts act_sum = sum(x) (the offset trick).
//
// OVERFLOW (by design of the published loop, kept here on purpose): one int16 lane gains
// [-2048, 2032] per block, so a group of B blocks can reach -2048 B. That is outside int16 once
// B > 16, i.e. for K > 2048 with adversarial activations, and a K >= 4096 row of +1 weights against
// x = -128 everywhere sums to -65536 in a lane, which wraps to 0. Random or real activations stay far
// inside the range. Our kernels widen every 8 (AVX2 GEMV) or 16 (GEMM) blocks and are exact for every
// K <= kMaxK; tests/test_kernels.py and test_ternary.cpp show both facts.
#include "bench.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

namespace bitnet {

void i2s_repack_bench(const uint8_t* ours, int64_t n, int64_t k, uint8_t* out) {
  // Our byte: fields (j, j+32, j+64, j+96) at bits (1:0, 3:2, 5:4, 7:6); I2_S: at (7:6, 5:4, 3:2, 1:0).
  const int64_t bytes = n * (k / 4);
  for (int64_t i = 0; i < bytes; ++i) {
    const unsigned b = ours[i];
    out[i] = static_cast<uint8_t>(((b & 3u) << 6) | (((b >> 2) & 3u) << 4) | (((b >> 4) & 3u) << 2) | (b >> 6));
  }
}

namespace {

constexpr int64_t kI2sGroupBlocks = 32;  // blocks summed in int16 before widening (the published value)

inline int32_t hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

// sum_k c[k] * x[k] over nblk blocks of one row, int16 accumulation per group of 32 blocks.
inline int32_t dot_row(const uint8_t* w, const int8_t* x, int64_t nblk) {
  const __m256i mask = _mm256_set1_epi8(0x03);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc32 = _mm256_setzero_si256();
  for (int64_t g0 = 0; g0 < nblk; g0 += kI2sGroupBlocks) {
    const int64_t g1 = g0 + kI2sGroupBlocks < nblk ? g0 + kI2sGroupBlocks : nblk;
    __m256i acc16 = _mm256_setzero_si256();
    for (int64_t blk = g0; blk < g1; ++blk) {
      const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + blk * 32));
      const __m256i c0 = _mm256_and_si256(_mm256_srli_epi16(b, 6), mask);  // elements j
      const __m256i c1 = _mm256_and_si256(_mm256_srli_epi16(b, 4), mask);  // j + 32
      const __m256i c2 = _mm256_and_si256(_mm256_srli_epi16(b, 2), mask);  // j + 64
      const __m256i c3 = _mm256_and_si256(b, mask);                        // j + 96
      const int8_t* xb = x + blk * 128;
      const __m256i p0 = _mm256_maddubs_epi16(c0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb)));
      const __m256i p1 = _mm256_maddubs_epi16(c1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + 32)));
      const __m256i p2 = _mm256_maddubs_epi16(c2, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + 64)));
      const __m256i p3 = _mm256_maddubs_epi16(c3, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + 96)));
      acc16 = _mm256_add_epi16(acc16, _mm256_add_epi16(p0, p1));  // int16, wraps on overflow
      acc16 = _mm256_add_epi16(acc16, _mm256_add_epi16(p2, p3));
    }
    acc32 = _mm256_add_epi32(acc32, _mm256_madd_epi16(acc16, ones));
  }
  return hsum_i32(acc32);
}

}  // namespace

void i2s_gemv_bench(const uint8_t* w, const int8_t* x, int64_t n, int64_t k, int32_t* y) {
  int32_t act_sum = 0;  // bitnet.cpp computes this while quantizing the activations
  for (int64_t j = 0; j < k; ++j) act_sum += x[j];
  const int64_t stride = k / 4, nblk = k / 128;
  for (int64_t r = 0; r < n; ++r) y[r] = dot_row(w + r * stride, x, nblk) - act_sum;
}

}  // namespace bitnet

#endif  // x86-64

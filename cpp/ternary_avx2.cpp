// ternary_avx2.cpp: the AVX2 int8 x ternary row kernel (maddubs + offset trick).
//
// This file alone is compiled with -mavx2 -mfma, and only on x86; the body is also guarded by
// #if so a misdetected architecture compiles an empty file. Nothing here may be called unless the
// dispatcher has checked the CPU. It only computes; argument checks live in bindings.cpp and the
// activation padding in dispatch.cpp. Not the oracle: rows_ref in ternary_ref.cpp is.
//
// Unpacking one 32-byte block (128 weights, layout in ternary.h) with one shift and four masks:
//   b            = 32 bytes           h = b >> 4 (16-bit shift; the mask drops bits from the neighbour byte)
//   b & 0x03     = c(j)               code of element j       (scale 1)
//   b & 0x0C     = 4 c(j+32)          code of element j + 32  (scale 4)
//   h & 0x03     = c(j+64)            (scale 1)
//   h & 0x0C     = 4 c(j+96)          (scale 4)
// maddubs(codes_u8, x_s8) multiplies and adds neighbouring pairs into int16. Scale-1 products go
// to accumulator S, scale-4 products to accumulator T, and T >> 2 (exact: every term is a multiple
// of 4) restores them. This saves two of the three shifts a plain per-field unpack needs.
//
// With GCC/Clang on x86-64 the GEMV runs as inline assembly instead (ternary_avx2_asm.cpp,
// BITNET_INLINE_ASM); the intrinsic tiles here are the fallback for other builds and the remainder
// rows, and are tested in CI's sanitizer build. All forms are checked for exact equality against
// rows_ref.
//
// Overflow, for every K and every x in [-128, 127]:
//   maddubs, scale 1: 2 * (2 * -128) .. 2 * (2 * 127)   = [-512, 508]    (no saturation)
//   maddubs, scale 4: 2 * (8 * -128) .. 2 * (8 * 127)   = [-2048, 2032]  (no saturation)
//   per block each lane of S gets two scale-1 terms ([-1024, 1016]) and of T two scale-4 terms
//   ([-4096, 4064]). After kWiden = 8 blocks: S in [-8192, 8128], T in [-32768, 32512], both inside
//   int16 (T reaches -32768 exactly, which is representable). Then madd(acc, 1) widens to int32;
//   the int32 lanes stay below 2^29 for K <= kMaxK (see ternary.h).
#include "kernel_tile.h"
#include "ternary.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <algorithm>

namespace bitnet {
namespace {

constexpr int kWiden = 8;  // blocks summed in int16 before widening (see the bound above)

// dot[r][m] = sum_k c(w[r], k) * x[m][k] for RT weight rows and MT activation rows over nblk
// blocks; each unpacked weight register is reused for all MT activation rows.
// The RT weight rows of a tile are contiguous in memory, and rows are 1-3 KB long: too short for
// the hardware prefetcher to ramp up on each. So the tile also prefetches the bytes `pf` points
// at (the rows kPrefetchBytes ahead), at the rate it consumes its own.
template <int RT, int MT>
inline void tile(const uint8_t* const* w, const int8_t* const* x, int64_t nblk, int32_t dot[RT][MT],
                 const uint8_t* pf) {
  const __m256i m3 = _mm256_set1_epi8(0x03);
  const __m256i mc = _mm256_set1_epi8(0x0C);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i s32[RT][MT], t32[RT][MT];
  for (int r = 0; r < RT; ++r)
    for (int m = 0; m < MT; ++m) s32[r][m] = t32[r][m] = _mm256_setzero_si256();

  for (int64_t b0 = 0; b0 < nblk; b0 += kWiden) {
    const int64_t b1 = std::min<int64_t>(nblk, b0 + kWiden);
    __m256i s[RT][MT], t[RT][MT];
    for (int r = 0; r < RT; ++r)
      for (int m = 0; m < MT; ++m) s[r][m] = t[r][m] = _mm256_setzero_si256();
    for (int64_t blk = b0; blk < b1; ++blk) {
      for (int i = 0; i < RT * 32; i += 64)
        _mm_prefetch(reinterpret_cast<const char*>(pf + blk * RT * 32 + i), _MM_HINT_T1);
      __m256i c0[RT], c1[RT], c2[RT], c3[RT];
      for (int r = 0; r < RT; ++r) {
        const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[r] + blk * kBlockBytes));
        const __m256i h = _mm256_srli_epi16(b, 4);
        c0[r] = _mm256_and_si256(b, m3);
        c1[r] = _mm256_and_si256(b, mc);
        c2[r] = _mm256_and_si256(h, m3);
        c3[r] = _mm256_and_si256(h, mc);
      }
      for (int m = 0; m < MT; ++m) {
        const int8_t* xb = x[m] + blk * kBlockWeights;
        const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb));
        const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + 32));
        const __m256i x2 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + 64));
        const __m256i x3 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + 96));
        for (int r = 0; r < RT; ++r) {
          s[r][m] = _mm256_add_epi16(s[r][m], _mm256_maddubs_epi16(c0[r], x0));
          t[r][m] = _mm256_add_epi16(t[r][m], _mm256_maddubs_epi16(c1[r], x1));
          s[r][m] = _mm256_add_epi16(s[r][m], _mm256_maddubs_epi16(c2[r], x2));
          t[r][m] = _mm256_add_epi16(t[r][m], _mm256_maddubs_epi16(c3[r], x3));
        }
      }
    }
    for (int r = 0; r < RT; ++r)
      for (int m = 0; m < MT; ++m) {
        s32[r][m] = _mm256_add_epi32(s32[r][m], _mm256_madd_epi16(s[r][m], ones));
        t32[r][m] = _mm256_add_epi32(t32[r][m], _mm256_madd_epi16(t[r][m], ones));
      }
  }
  for (int r = 0; r < RT; ++r)
    for (int m = 0; m < MT; ++m) dot[r][m] = hsum_epi32(_mm256_add_epi32(s32[r][m], _mm256_srai_epi32(t32[r][m], 2)));
}

// GEMM (M > 1): dot[0][m] = sum_k c(w, k) * x[m][k] for one weight row and MT activation rows.
// Here the unpack is paid once per MT rows, so it unpacks all four fields at scale 1 (three
// shifts) and keeps a single int16 accumulator per activation row: per block each lane gains four
// maddubs terms, [-2048, 2032], so kGemmWiden = 16 blocks stay inside int16 ([-32768, 32512]).
constexpr int kGemmWiden = 16;

template <int MT>
inline void gemm_tile(const uint8_t* const* wr, const int8_t* const* x, int64_t nblk, int32_t dot[1][MT],
                      const uint8_t* pf) {
  const uint8_t* w = wr[0];  // one weight row: a tile with RT = 1
  const __m256i m3 = _mm256_set1_epi8(0x03);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc32[MT];
  for (int m = 0; m < MT; ++m) acc32[m] = _mm256_setzero_si256();
  for (int64_t b0 = 0; b0 < nblk; b0 += kGemmWiden) {
    const int64_t b1 = std::min<int64_t>(nblk, b0 + kGemmWiden);
    __m256i acc[MT];
    for (int m = 0; m < MT; ++m) acc[m] = _mm256_setzero_si256();
    for (int64_t blk = b0; blk < b1; ++blk) {
      _mm_prefetch(reinterpret_cast<const char*>(pf + blk * kBlockBytes), _MM_HINT_T1);
      const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + blk * kBlockBytes));
      const __m256i c0 = _mm256_and_si256(b, m3);
      const __m256i c1 = _mm256_and_si256(_mm256_srli_epi16(b, 2), m3);
      const __m256i c2 = _mm256_and_si256(_mm256_srli_epi16(b, 4), m3);
      const __m256i c3 = _mm256_and_si256(_mm256_srli_epi16(b, 6), m3);
      for (int m = 0; m < MT; ++m) {
        const int8_t* xb = x[m] + blk * kBlockWeights;
        const __m256i p01 =
            _mm256_add_epi16(_mm256_maddubs_epi16(c0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb))),
                             _mm256_maddubs_epi16(c1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + 32))));
        const __m256i p23 =
            _mm256_add_epi16(_mm256_maddubs_epi16(c2, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + 64))),
                             _mm256_maddubs_epi16(c3, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + 96))));
        acc[m] = _mm256_add_epi16(acc[m], _mm256_add_epi16(p01, p23));
      }
    }
    for (int m = 0; m < MT; ++m) acc32[m] = _mm256_add_epi32(acc32[m], _mm256_madd_epi16(acc[m], ones));
  }
  for (int m = 0; m < MT; ++m) dot[0][m] = hsum_epi32(acc32[m]);
}

}  // namespace

void rows_avx2(const KernelArgs& a, int64_t n0, int64_t n1) {
  // GEMV: tiles of four rows a quarter of the range apart in assembly, then pairs of adjacent rows (tile).
  // GEMM: each unpacked weight row serves up to 4 activation rows at a time (gemm_tile; 8 would need 8 int16
  // and 8 int32 accumulators, all 16 ymm registers, and GCC spills them: slower, docs/kernels.md, "Why the hot loops
  // are written as they are").
  int64_t r = n0;
#if defined(BITNET_HAVE_AVX2_ASM)
  if (a.m == 1) r = gemv_rows_avx2_asm(a, r, n1);
#endif
  run_row_tiles(a, r, n1, row_stride_bytes(a.k), [&a](int64_t row, int64_t m, auto rt, auto mt) {
    if (a.m == 1)
      store_tile<decltype(rt)::value, 1, tile<decltype(rt)::value, 1>>(a, row, m);
    else
      store_tile<1, decltype(mt)::value, gemm_tile<decltype(mt)::value>>(a, row, m);
  });
}

}  // namespace bitnet

#endif  // x86-64

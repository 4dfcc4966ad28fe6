// ternary_avx512.cpp: the AVX-512 VNNI int8 x ternary row kernel (vpdpbusd + offset trick).
//
// This file alone is compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni, and only on x86;
// the body is guarded by #if as well. The dispatcher calls it only when the CPU reports all four.
// It only computes; checks live in bindings.cpp, activation padding/permutation in dispatch.cpp.
//
// One 64-byte load covers two packed blocks (256 weights). Unpack as in ternary_avx2.cpp, with one
// shift and four masks (fields at scale 1 and 4), then vpdpbusd(acc, codes_u8, x_s8) adds groups of
// four u8 x s8 products straight into int32 lanes, so no int16 stage and no overflow concern:
// scale-1 fields go to accumulator A, scale-4 fields to B, and dot = A + (B >> 2) per lane (exact,
// every term of B is a multiple of 4). Each int32 lane sees at most K/16 products of magnitude
// <= 8 * 128, far inside int32 for K <= kMaxK.
//
// With GCC/Clang on x86-64 the GEMV and the eight-row GEMM tiles run as inline assembly instead
// (ternary_avx512_asm.cpp, BITNET_INLINE_ASM); the intrinsic tiles here are the fallback for other
// builds and the remainder rows, and are tested in CI's sanitizer build. All forms are checked for
// exact equality against rows_ref.
//
// Because byte j of a 64-byte load holds elements j, j+32, j+64, j+96 of block 0 (bytes 0-31) and of
// block 1 (bytes 32-63), the activations are pre-permuted once per call (permute_x_avx512 in
// dispatch.cpp): for each 256-weight chunk q, segment p (64 bytes) = x[256q+32p .. +32] followed by
// x[256q+128+32p .. +32]. An odd final block uses a 32-byte weight load zero-extended to 64 bytes,
// and its segments carry zeros in the upper half.
#include "kernel_tile.h"
#include "ternary.h"

#if defined(__x86_64__) || defined(_M_X64)
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's avx512fintrin.h uses _mm512_undefined_epi32() as a pass-through operand, which trips
// -Wuninitialized at every inlined call site; the value is never read.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>

namespace bitnet {
namespace {

// The RT weight rows of a tile are contiguous in memory, and rows are 1-3 KB long: too short for
// the hardware prefetcher to ramp up on each. So the tile also prefetches the bytes `pf` points
// at (the rows kPrefetchBytes ahead), at the rate it consumes its own.
template <int RT, int MT>
inline void tile(const uint8_t* const* w, const int8_t* const* x, int64_t nblk, int32_t dot[RT][MT],
                 const uint8_t* pf) {
  const __m512i m3 = _mm512_set1_epi8(0x03);
  const __m512i mc = _mm512_set1_epi8(0x0C);
  __m512i acc_a[RT][MT], acc_b[RT][MT];
  for (int r = 0; r < RT; ++r)
    for (int m = 0; m < MT; ++m) acc_a[r][m] = acc_b[r][m] = _mm512_setzero_si512();

  const int64_t npairs = nblk / 2;
  for (int64_t q = 0; q <= npairs; ++q) {
    if (q == npairs && nblk % 2 == 0) break;
    for (int r = 0; r < RT; ++r) _mm_prefetch(reinterpret_cast<const char*>(pf + (q * RT + r) * 64), _MM_HINT_T1);
    __m512i c0[RT], c1[RT], c2[RT], c3[RT];
    for (int r = 0; r < RT; ++r) {
      const uint8_t* p = w[r] + q * 2 * kBlockBytes;
      const __m512i b = q < npairs ? _mm512_loadu_si512(p)
                                   : _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
      const __m512i h = _mm512_srli_epi16(b, 4);
      c0[r] = _mm512_and_si512(b, m3);
      c1[r] = _mm512_and_si512(b, mc);
      c2[r] = _mm512_and_si512(h, m3);
      c3[r] = _mm512_and_si512(h, mc);
    }
    for (int m = 0; m < MT; ++m) {
      const int8_t* xq = x[m] + q * 4 * 64;
      const __m512i x0 = _mm512_loadu_si512(xq);
      const __m512i x1 = _mm512_loadu_si512(xq + 64);
      const __m512i x2 = _mm512_loadu_si512(xq + 128);
      const __m512i x3 = _mm512_loadu_si512(xq + 192);
      for (int r = 0; r < RT; ++r) {
        acc_a[r][m] = _mm512_dpbusd_epi32(acc_a[r][m], c0[r], x0);
        acc_b[r][m] = _mm512_dpbusd_epi32(acc_b[r][m], c1[r], x1);
        acc_a[r][m] = _mm512_dpbusd_epi32(acc_a[r][m], c2[r], x2);
        acc_b[r][m] = _mm512_dpbusd_epi32(acc_b[r][m], c3[r], x3);
      }
    }
  }
  if constexpr (RT == 4 && MT == 1) {
    // Reduce four rows at once (short rows make the per-row horizontal sums a visible cost).
    __m256i h[4];
    for (int r = 0; r < 4; ++r) {
      const __m512i v = _mm512_add_epi32(acc_a[r][0], _mm512_srai_epi32(acc_b[r][0], 2));
      h[r] = _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
    }
    const __m256i s = _mm256_hadd_epi32(_mm256_hadd_epi32(h[0], h[1]), _mm256_hadd_epi32(h[2], h[3]));
    const __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    alignas(16) int32_t out[4];
    _mm_store_si128(reinterpret_cast<__m128i*>(out), t);
    for (int r = 0; r < 4; ++r) dot[r][0] = out[r];
  } else {
    for (int r = 0; r < RT; ++r)
      for (int m = 0; m < MT; ++m)
        dot[r][m] = _mm512_reduce_add_epi32(_mm512_add_epi32(acc_a[r][m], _mm512_srai_epi32(acc_b[r][m], 2)));
  }
}

// GEMM (M > 1): the unpack is paid once per MT activation rows, so all four fields are unpacked
// at scale 1 (three shifts) and each (weight row, activation row) pair keeps one accumulator.
template <int RT, int MT>
inline void gemm_tile(const uint8_t* const* w, const int8_t* const* x, int64_t nblk, int32_t dot[RT][MT],
                      const uint8_t* pf) {
  const __m512i m3 = _mm512_set1_epi8(0x03);
  __m512i acc[RT][MT];
  for (int r = 0; r < RT; ++r)
    for (int m = 0; m < MT; ++m) acc[r][m] = _mm512_setzero_si512();
  const int64_t npairs = nblk / 2;
  for (int64_t q = 0; q <= npairs; ++q) {
    if (q == npairs && nblk % 2 == 0) break;
    for (int r = 0; r < RT; ++r) _mm_prefetch(reinterpret_cast<const char*>(pf + (q * RT + r) * 64), _MM_HINT_T1);
    __m512i c[RT][4];
    for (int r = 0; r < RT; ++r) {
      const uint8_t* p = w[r] + q * 2 * kBlockBytes;
      const __m512i b = q < npairs ? _mm512_loadu_si512(p)
                                   : _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
      c[r][0] = _mm512_and_si512(b, m3);
      c[r][1] = _mm512_and_si512(_mm512_srli_epi16(b, 2), m3);
      c[r][2] = _mm512_and_si512(_mm512_srli_epi16(b, 4), m3);
      c[r][3] = _mm512_and_si512(_mm512_srli_epi16(b, 6), m3);
    }
    for (int m = 0; m < MT; ++m) {
      const int8_t* xq = x[m] + q * 4 * 64;
      for (int f = 0; f < 4; ++f) {
        const __m512i xf = _mm512_loadu_si512(xq + f * 64);
        for (int r = 0; r < RT; ++r) acc[r][m] = _mm512_dpbusd_epi32(acc[r][m], c[r][f], xf);
      }
    }
  }
  for (int r = 0; r < RT; ++r)
    for (int m = 0; m < MT; ++m) dot[r][m] = _mm512_reduce_add_epi32(acc[r][m]);
}

template <int RT>
inline void gemm_rows_tile(const KernelArgs& a, int64_t r, int64_t m, int64_t mt) {
  switch (mt) {
    case 8:
      store_tile<RT, 8, gemm_tile<RT, 8>>(a, r, m);
      break;
    case 7:
      store_tile<RT, 7, gemm_tile<RT, 7>>(a, r, m);
      break;
    case 6:
      store_tile<RT, 6, gemm_tile<RT, 6>>(a, r, m);
      break;
    case 5:
      store_tile<RT, 5, gemm_tile<RT, 5>>(a, r, m);
      break;
    case 4:
      store_tile<RT, 4, gemm_tile<RT, 4>>(a, r, m);
      break;
    case 3:
      store_tile<RT, 3, gemm_tile<RT, 3>>(a, r, m);
      break;
    case 2:
      store_tile<RT, 2, gemm_tile<RT, 2>>(a, r, m);
      break;
    case 1:
      store_tile<RT, 1, gemm_tile<RT, 1>>(a, r, m);
      break;
    default:
      break;
  }
}

}  // namespace

void rows_avx512vnni(const KernelArgs& a, int64_t n0, int64_t n1) {
  int64_t r = n0;
  if (a.m == 1) {  // GEMV: four weight rows share each activation load
#if defined(BITNET_HAVE_AVX512_ASM)
    r = gemv_rows_avx512vnni_asm(a, r, n1);
#else
    for (; r + 4 <= n1; r += 4) store_tile<4, 1, tile<4, 1>>(a, r, 0);
#endif
    for (; r < n1; ++r) store_tile<1, 1, tile<1, 1>>(a, r, 0);
    return;
  }
  // GEMM: each unpacked weight register serves up to 8 activation rows; two weight rows per pass.
  // Rows go in chunks of about kGemmChunkBytes of weights (L2-resident), and every 8-row
  // activation tile (L1-resident for K up to ~4096) sweeps the whole chunk before the next tile,
  // so neither the weights nor the activations are streamed from far away more than once.
  const int64_t stride = row_stride_bytes(a.k);
  const int64_t chunk = std::max<int64_t>(2, kGemmChunkBytes / stride / 2 * 2);
  for (int64_t c0 = n0; c0 < n1; c0 += chunk) {
    const int64_t c1 = std::min(n1, c0 + chunk);
    for (int64_t m = 0; m < a.m; m += 8) {
      const int64_t mt = std::min<int64_t>(8, a.m - m);
      r = c0;
#if defined(BITNET_HAVE_AVX512_ASM)
      if (mt == 8) r = gemm_rows_avx512vnni_asm(a, c0, c1, m);
#endif
      for (; r + 2 <= c1; r += 2) gemm_rows_tile<2>(a, r, m, mt);
      for (; r < c1; ++r) gemm_rows_tile<1>(a, r, m, mt);
    }
  }
}

}  // namespace bitnet

#endif  // x86-64

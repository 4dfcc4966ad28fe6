// kernel_tile.h: what the intrinsic SIMD kernel files share (ternary_avx2.cpp, ternary5_avx2.cpp,
// ternary_avx512.cpp, ternary*_neon*.cpp).
//
// Everything is in an anonymous namespace on purpose: each including file is compiled with its own
// ISA flags, and an inline function with external linkage would let the linker keep one file's copy
// (say the AVX-512 one) for both.
#pragma once

#include <type_traits>

#include "ternary.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace bitnet {
namespace {

constexpr int64_t kPrefetchBytes = 8192;        // software prefetch distance for streaming weights
constexpr int64_t kGemmChunkBytes = 96 * 1024;  // weight rows per GEMM chunk (see the rows_* functions)

#if defined(__AVX2__)
// The sum of a vector's eight int32 lanes (the end of every AVX2 row tile, 2-bit and 1.6-bit alike).
inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}
#endif

// A row tile: dot[r][m] = sum_k c(w[r], k) * x[m][k] for RT weight rows w and MT activation rows x over
// nblk 128-weight blocks, prefetching from pf onward at the rate it reads its own rows.
template <int RT, int MT>
using TileFn = void (*)(const uint8_t* const* w, const int8_t* const* x, int64_t nblk, int32_t (*dot)[MT],
                        const uint8_t* pf);

// Runs Tile on weight rows r0 .. r0+RT-1 and activation rows m0 .. m0+MT-1 and stores y = dot - xsum
// (the code offset correction), prefetching kPrefetchBytes past the tile's first row.
template <int RT, int MT, TileFn<RT, MT> Tile>
inline void store_tile(const KernelArgs& a, int64_t r0, int64_t m0) {
  const int64_t stride = row_stride_bytes(a.k);
  const uint8_t* w[RT];
  const int8_t* x[MT];
  for (int r = 0; r < RT; ++r) w[r] = a.w + (r0 + r) * stride;
  for (int m = 0; m < MT; ++m) x[m] = a.xp + (m0 + m) * a.xp_stride;
  int32_t dot[RT][MT];
  Tile(w, x, blocks_per_row(a.k), dot, w[0] + kPrefetchBytes);
  for (int r = 0; r < RT; ++r)
    for (int m = 0; m < MT; ++m) a.y[(m0 + m) * a.n + r0 + r] = dot[r][m] - a.xsum[m0 + m];
}

// The row loop of every backend's row kernel, over output rows [n0, n1) of a whose packed rows are
// row_bytes long. tile(r, m, RT, MT) runs the backend's tile of RT weight rows from r and MT activation rows
// from m (RT and MT come as std::integral_constant, so the callback can name its template tiles with them).
//   GEMV (M = 1): tiles of two weight rows sharing each activation load, then the row left over.
//   GEMM: each weight row serves up to four activation rows at a time (RT = 1). Rows go in chunks of about
//   kGemmChunkBytes of weights (L2-resident) and every activation tile sweeps the whole chunk before the
//   next, so nothing is streamed from far away more than once.
template <typename Tile>
inline void run_row_tiles(const KernelArgs& a, int64_t n0, int64_t n1, int64_t row_bytes, Tile tile) {
  using One = std::integral_constant<int, 1>;
  if (a.m == 1) {
    int64_t r = n0;
    for (; r + 2 <= n1; r += 2) tile(r, 0, std::integral_constant<int, 2>{}, One{});
    for (; r < n1; ++r) tile(r, 0, One{}, One{});
    return;
  }
  const int64_t chunk = kGemmChunkBytes / row_bytes > 1 ? kGemmChunkBytes / row_bytes : 1;
  for (int64_t c0 = n0; c0 < n1; c0 += chunk) {
    const int64_t c1 = n1 - c0 < chunk ? n1 : c0 + chunk;
    for (int64_t m = 0; m < a.m; m += 4)
      for (int64_t r = c0; r < c1; ++r) switch (a.m - m < 4 ? a.m - m : 4) {
          case 4:
            tile(r, m, One{}, std::integral_constant<int, 4>{});
            break;
          case 3:
            tile(r, m, One{}, std::integral_constant<int, 3>{});
            break;
          case 2:
            tile(r, m, One{}, std::integral_constant<int, 2>{});
            break;
          default:
            tile(r, m, One{}, One{});
            break;
        }
  }
}

}  // namespace
}  // namespace bitnet

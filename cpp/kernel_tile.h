// kernel_tile.h: what the intrinsic SIMD kernel files share (ternary_avx2.cpp, ternary_avx512.cpp).
//
// Everything is in an anonymous namespace on purpose: each including file is compiled with its own
// ISA flags, and an inline function with external linkage would let the linker keep one file's copy
// (say the AVX-512 one) for both.
#pragma once

#include "ternary.h"

namespace bitnet {
namespace {

constexpr int64_t kPrefetchBytes = 8192;        // software prefetch distance for streaming weights
constexpr int64_t kGemmChunkBytes = 96 * 1024;  // weight rows per GEMM chunk (see the rows_* functions)

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

}  // namespace
}  // namespace bitnet

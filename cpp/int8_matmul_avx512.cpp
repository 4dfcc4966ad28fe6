// int8_matmul_avx512.cpp: the AVX-512 VNNI int8 x int8 GEMM of int8_matmul.h (several activation rows: a batch of
// sequences, a prompt's logits). Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni only, and only on
// x86-64; called by int8_matmul.cpp after it has checked the CPU. The GEMV (one row) stays on the AVX2 kernel: it is
// bound by memory, not by multiplies. Not the oracle: int8_rows_ref is.
//
// vpdpbusd multiplies unsigned by signed bytes, so the activations come shifted, u = x + 128 in [0, 255] (x ^ 0x80),
// and sum_k x w = sum_k u w - 128 sum_k w, the row sum of w taken by one more vpdpbusd (of ones) per 64 weights,
// shared by all the tile's activation rows. Exact: |u w| <= 255 * 128, and for K <= kInt8MaxK = 2^16 the largest
// sum, 255 * 128 * 2^16 = 2139095040, is below 2^31 (every int32 lane holds a part of it); 128 sum w <= 2^30.
// Each 64 weights of a row are loaded once for up to eight activation rows, each activation vector once for two
// weight rows half the range apart (two read streams, with a software prefetch a few KB ahead: one adjacent-row
// stream left the loop waiting on memory). Past eight activation rows the rows go in L2-sized chunks, every
// activation tile sweeping the chunk before the next, as in int8_matmul_avx2.cpp.
#include "int8_matmul.h"

#if defined(__x86_64__) || defined(_M_X64)
#if defined(__GNUC__) && !defined(__clang__)
// as in ternary_avx512.cpp: GCC 12's avx512fintrin.h trips -Wuninitialized on its pass-through operands
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>

namespace bitnet {
namespace {

constexpr int64_t kGemmChunkBytes = 128 * 1024;
constexpr int64_t kPrefetchBytes = 4096;

// y[i][r + j] = sum_k x_i[k] w_j[k] for RT weight rows from w (k bytes apart) and MT activation rows given shifted
// (u = x + 128, rows padded with anything to a multiple of 64: the weights past k are masked to zero). Each weight
// vector is loaded once for the MT activation rows, each activation vector once for the RT weight rows; a few KB
// ahead of the weights are prefetched (rows of 2-3 KB: too short for the hardware prefetcher to ramp up on each).
template <int RT, int MT>
inline void gemm_tile(const uint8_t* const* u, const int8_t* w, int64_t k, int32_t* const* y, int64_t r, int64_t step) {
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i acc[RT][MT], wsum[RT];
  for (int j = 0; j < RT; ++j) {
    wsum[j] = _mm512_setzero_si512();
    for (int i = 0; i < MT; ++i) acc[j][i] = _mm512_setzero_si512();
  }
  for (int64_t c = 0; c < k; c += 64) {
    const __mmask64 mask = k - c >= 64 ? ~__mmask64{0} : (__mmask64{1} << (k - c)) - 1;
    __m512i wv[RT];
    for (int j = 0; j < RT; ++j) {
      _mm_prefetch(reinterpret_cast<const char*>(w + j * step * k + c + kPrefetchBytes), _MM_HINT_T0);
      wv[j] = _mm512_maskz_loadu_epi8(mask, w + j * step * k + c);
      wsum[j] = _mm512_dpbusd_epi32(wsum[j], ones, wv[j]);
    }
    for (int i = 0; i < MT; ++i) {
      const __m512i xv = _mm512_loadu_si512(u[i] + c);
      for (int j = 0; j < RT; ++j) acc[j][i] = _mm512_dpbusd_epi32(acc[j][i], xv, wv[j]);
    }
  }
  for (int j = 0; j < RT; ++j) {
    const int32_t offset = 128 * _mm512_reduce_add_epi32(wsum[j]);
    for (int i = 0; i < MT; ++i) y[i][r + j * step] = _mm512_reduce_add_epi32(acc[j][i]) - offset;
  }
}

// Rows [r0, r1) against activation rows m0 .. m0 + MT - 1, in tiles of two rows half the range apart (two read
// streams), then the row left over.
template <int MT>
void tile_rows(const uint8_t* xu, int64_t xstride, const int8_t* w, int32_t* y, int64_t m0, int64_t n, int64_t k,
               int64_t r0, int64_t r1) {
  const uint8_t* u[MT];
  int32_t* yr[MT];
  for (int i = 0; i < MT; ++i) u[i] = xu + (m0 + i) * xstride, yr[i] = y + (m0 + i) * n;
  const int64_t q = (r1 - r0) / 2;
  for (int64_t t = r0; t < r0 + q; ++t) gemm_tile<2, MT>(u, w + t * k, k, yr, t, q);
  if (r0 + 2 * q < r1) gemm_tile<1, MT>(u, w + (r1 - 1) * k, k, yr, r1 - 1, 1);
}

}  // namespace

void int8_rows_avx512vnni(const uint8_t* xu, int64_t xstride, const int8_t* w, int32_t* y, int64_t m, int64_t n,
                          int64_t k, int64_t n0, int64_t n1) {
  // one activation tile (m <= 8): no chunks, the two streams as far apart as the range allows
  const int64_t chunk = m <= 8 ? n1 - n0 : std::max<int64_t>(1, kGemmChunkBytes / std::max<int64_t>(k, 1));
  for (int64_t c0 = n0; c0 < n1; c0 += chunk) {
    const int64_t c1 = std::min(n1, c0 + chunk);
    int64_t i = 0;
    for (; i + 8 <= m; i += 8) tile_rows<8>(xu, xstride, w, y, i, n, k, c0, c1);
    if (m - i >= 4) tile_rows<4>(xu, xstride, w, y, i, n, k, c0, c1), i += 4;
    if (m - i >= 2) tile_rows<2>(xu, xstride, w, y, i, n, k, c0, c1), i += 2;
    if (m - i >= 1) tile_rows<1>(xu, xstride, w, y, i, n, k, c0, c1);
  }
}

}  // namespace bitnet

#endif  // x86-64

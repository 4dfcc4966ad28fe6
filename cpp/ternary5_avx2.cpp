// ternary5_avx2.cpp: the AVX2 int8 x ternary row kernel for the 1.6-bit format (ternary5.h).
//
// Compiled with the AVX2 flags alone and only on x86, like ternary_avx2.cpp; the body is also guarded by
// #if. Nothing here may be called unless the dispatcher has checked the CPU. Only computes; the oracle is
// rows5_ref (ternary5_ref.cpp).
//
// Unpacking one 32-byte block (160 weights) into five registers of 32 codes, element order j + 32 i, with
// the multiplier itself. The stored bytes are q = r_0, and 3 r_i = 256 c_i + r_{i+1} (ternary5.h). For the
// 16-bit word of bytes (lo, hi), vpmaddubsw(word, [3, 0]) = 3 lo: the code c_i in the high byte and the
// next fraction r_{i+1} in the low one; applied to that word again it yields c_{i+1} and r_{i+2} (its high
// byte is multiplied by 0). So the even bytes of a block run through maddubs(., [3, 0]) five times, the odd
// bytes through maddubs(q, [0, 3]) once and maddubs(., [3, 0]) four times, and each step's codes are put
// back in byte order with one shift and one blend:
//   c_i = blendv(even_i >> 8, odd_i, 0xFF00)        (even codes to the low bytes, odd codes stay high)
// 6 vector instructions per 32 weights, 3 of them multiplies, where the 2-bit kernel needs 3.25 with 1
// multiply; a chain of byte adds (x3) and two signed compares per code register measured slower (9
// instructions per 32 weights, one multiply; docs/kernels.md, "What bounds the AVX2 kernels"). Then maddubs(c_i, x_i)
// and an int16 add, as in ternary_avx2.cpp, and the offset trick (subtract sum_k x once per row).
//
// Overflow, for every K and x in [-128, 127]: the decoding maddubs give at most 3 * 255 = 765; maddubs of codes 0..2
// gives [-512, 508] per lane; a block adds five such terms to one int16 lane ([-2560, 2540]); after kT5Widen = 12
// blocks the lane is in
// [-30720, 30480], inside int16, and madd(acc, 1) widens it into int32, whose lanes stay below 2^29 for
// K <= kMaxK (ternary.h).
#include "kernel_tile.h"
#include "ternary5.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <algorithm>

namespace bitnet {
namespace {

constexpr int kT5Widen = 12;  // blocks summed in int16 before widening (see the bound above)

// dot[r][m] = sum_k c(w[r], k) * x[m][k] for RT weight rows and MT activation rows over nblk 160-weight
// blocks (decoding as at the top of the file); each code register serves all MT activation rows. Prefetches
// `pf` onward (the rows kPrefetchBytes ahead) at the rate it reads its own, as the 2-bit tiles do.
template <int RT, int MT>
inline void tile5(const uint8_t* const* w, const int8_t* const* x, int64_t nblk, int32_t dot[RT][MT],
                  const uint8_t* pf) {
  const __m256i k30 = _mm256_set1_epi16(3);
  const __m256i k03 = _mm256_set1_epi16(3 << 8);
  const __m256i hib = _mm256_set1_epi16(static_cast<int16_t>(0xFF00));
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc32[RT][MT];
  for (int r = 0; r < RT; ++r)
    for (int m = 0; m < MT; ++m) acc32[r][m] = _mm256_setzero_si256();
  for (int64_t b0 = 0; b0 < nblk; b0 += kT5Widen) {
    const int64_t b1 = std::min<int64_t>(nblk, b0 + kT5Widen);
    __m256i acc[RT][MT];
    for (int r = 0; r < RT; ++r)
      for (int m = 0; m < MT; ++m) acc[r][m] = _mm256_setzero_si256();
    for (int64_t blk = b0; blk < b1; ++blk) {
      for (int i = 0; i < RT * 32; i += 64)
        _mm_prefetch(reinterpret_cast<const char*>(pf + blk * RT * 32 + i), _MM_HINT_T1);
      __m256i e[RT], o[RT];
      for (int r = 0; r < RT; ++r) {
        const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[r] + blk * kT5BlockBytes));
        e[r] = _mm256_maddubs_epi16(q, k30);
        o[r] = _mm256_maddubs_epi16(q, k03);
      }
      for (int i = 0; i < 5; ++i) {
        __m256i c[RT];
        for (int r = 0; r < RT; ++r) {
          if (i > 0) {
            e[r] = _mm256_maddubs_epi16(e[r], k30);
            o[r] = _mm256_maddubs_epi16(o[r], k30);
          }
          c[r] = _mm256_blendv_epi8(_mm256_srli_epi16(e[r], 8), o[r], hib);
        }
        for (int m = 0; m < MT; ++m) {
          const __m256i xv =
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[m] + blk * kT5BlockWeights + 32 * i));
          for (int r = 0; r < RT; ++r) acc[r][m] = _mm256_add_epi16(acc[r][m], _mm256_maddubs_epi16(c[r], xv));
        }
      }
    }
    for (int r = 0; r < RT; ++r)
      for (int m = 0; m < MT; ++m) acc32[r][m] = _mm256_add_epi32(acc32[r][m], _mm256_madd_epi16(acc[r][m], ones));
  }
  for (int r = 0; r < RT; ++r)
    for (int m = 0; m < MT; ++m) dot[r][m] = hsum_epi32(acc32[r][m]);
}

// store_tile of kernel_tile.h for this format (row stride and block count differ).
template <int RT, int MT>
inline void store_tile5(const KernelArgs& a, int64_t r0, int64_t m0) {
  const int64_t stride = t5_row_stride_bytes(a.k);
  const uint8_t* w[RT];
  const int8_t* x[MT];
  for (int r = 0; r < RT; ++r) w[r] = a.w + (r0 + r) * stride;
  for (int m = 0; m < MT; ++m) x[m] = a.xp + (m0 + m) * a.xp_stride;
  int32_t dot[RT][MT];
  tile5<RT, MT>(w, x, t5_blocks_per_row(a.k), dot, w[0] + kPrefetchBytes);
  for (int r = 0; r < RT; ++r)
    for (int m = 0; m < MT; ++m) a.y[(m0 + m) * a.n + r0 + r] = dot[r][m] - a.xsum[m0 + m];
}

}  // namespace

void rows5_avx2(const KernelArgs& a, int64_t n0, int64_t n1) {
  run_row_tiles(a, n0, n1, t5_row_stride_bytes(a.k), [&a](int64_t r, int64_t m, auto rt, auto mt) {
    store_tile5<decltype(rt)::value, decltype(mt)::value>(a, r, m);
  });
}

}  // namespace bitnet

#endif  // x86-64

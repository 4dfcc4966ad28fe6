// ternary5_avx2.cpp: the AVX2 int8 x ternary row kernel for the 1.6-bit format (ternary5.h).
//
// Compiled with the AVX2 flags alone and only on x86, like ternary_avx2.cpp; the body is also guarded by
// #if. Nothing here may be called unless the dispatcher has checked the CPU. Only computes; the oracle is
// rows5_ref (ternary5_ref.cpp).
//
// Unpacking one 32-byte block (160 weights) into five registers of 32 codes, element order j + 32 i:
//   s_0 = the 32 stored bytes;  s_{i+1} = 3 s_i (two vpaddb: bytes wrap mod 256, which is the point)
//   c_i = |cmpgt(s_i, -43) + cmpgt(s_i, 42)|        (each compare is 0 or -1; their sum is -c_i)
// so a code register costs 4 vector ops (6 with the multiply by 3) where the 2-bit format needs 1.25.
// Then maddubs(c_i, x_i) and an int16 add, as in ternary_avx2.cpp, and the offset trick (subtract
// sum_k x once per row).
//
// Overflow, for every K and x in [-128, 127]: maddubs of codes 0..2 gives [-512, 508] per lane; a block adds
// five such terms to one int16 lane ([-2560, 2540]); after kT5Widen = 12 blocks the lane is in
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

inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

inline __m256i codes_of(__m256i s, __m256i lo, __m256i hi) {
  return _mm256_abs_epi8(_mm256_add_epi8(_mm256_cmpgt_epi8(s, lo), _mm256_cmpgt_epi8(s, hi)));
}

inline __m256i times3(__m256i s) { return _mm256_add_epi8(_mm256_add_epi8(s, s), s); }

// dot[r][m] = sum_k c(w[r], k) * x[m][k] for RT weight rows and MT activation rows over nblk 160-weight
// blocks; each unpacked code register serves all MT activation rows. Prefetches `pf` onward (the rows
// kPrefetchBytes ahead) at the rate it reads its own, as the 2-bit tiles do.
template <int RT, int MT>
inline void tile5(const uint8_t* const* w, const int8_t* const* x, int64_t nblk, int32_t dot[RT][MT],
                  const uint8_t* pf) {
  __m256i lo = _mm256_set1_epi8(-43);
  __m256i hi = _mm256_set1_epi8(42);
#if defined(__GNUC__)
  // Opaque to the optimizer: GCC 12 rewrites s > -43 as min(s, -42) == -42 (two instructions for one).
  __asm__("" : "+x"(lo), "+x"(hi));
#endif
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
      __m256i s[RT];
      for (int r = 0; r < RT; ++r)
        s[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[r] + blk * kT5BlockBytes));
      for (int i = 0; i < 5; ++i) {
        __m256i c[RT];
        for (int r = 0; r < RT; ++r) {
          if (i > 0) s[r] = times3(s[r]);
          c[r] = codes_of(s[r], lo, hi);
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
  if (a.m == 1) {  // GEMV: two weight rows share each activation load
    int64_t r = n0;
    for (; r + 2 <= n1; r += 2) store_tile5<2, 1>(a, r, 0);
    for (; r < n1; ++r) store_tile5<1, 1>(a, r, 0);
    return;
  }
  // GEMM: each decoded weight row serves up to 4 activation rows; rows in L2-sized chunks, as rows_avx2.
  const int64_t chunk = std::max<int64_t>(1, kGemmChunkBytes / t5_row_stride_bytes(a.k));
  for (int64_t c0 = n0; c0 < n1; c0 += chunk) {
    const int64_t c1 = std::min(n1, c0 + chunk);
    for (int64_t m = 0; m < a.m; m += 4) {
      for (int64_t r = c0; r < c1; ++r) {
        switch (std::min<int64_t>(4, a.m - m)) {
          case 4: store_tile5<1, 4>(a, r, m); break;
          case 3: store_tile5<1, 3>(a, r, m); break;
          case 2: store_tile5<1, 2>(a, r, m); break;
          case 1: store_tile5<1, 1>(a, r, m); break;
          default: break;
        }
      }
    }
  }
}

}  // namespace bitnet

#endif  // x86-64

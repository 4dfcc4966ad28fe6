// ternary5_neon_dotprod.cpp: the ARMv8.2 dot-product int8 x ternary row kernel for the 1.6-bit format (ternary5.h).
//
// This file alone is compiled with -march=armv8.2-a+dotprod, and only for 64-bit ARM; the body is also guarded
// by #if. Nothing here may be called unless the dispatcher has seen the CPU's dot-product flag; no std::
// templates, as ternary_neon_dotprod.cpp. Only computes; the oracle is rows5_ref (ternary5_ref.cpp).
//
// Decoding as ternary5_neon.cpp (two compares, one add, one byte multiply per 16 codes, giving -c), then
// sdot: each int32 lane gains four products (-c) x in [-254, 256] per instruction, five instructions per
// 16 bytes, so |lane| <= 2 * 5 * 4 * 256 = 10240 per block and below 2^29 for K <= kMaxK (ternary.h): no
// widening step. The tile negates once at the end, then the offset trick (subtract sum_k x once per row).
#include "kernel_tile.h"
#include "ternary5.h"

#if (defined(__aarch64__) || defined(_M_ARM64)) && defined(__ARM_FEATURE_DOTPROD)
#include <arm_neon.h>

namespace bitnet {
namespace {

// dot[r][m] = sum_k c(w[r], k) * x[m][k] for RT weight rows and MT activation rows over nblk 160-weight
// blocks; each code register serves all MT activation rows. No software prefetch, as ternary_neon.cpp.
template <int RT, int MT>
inline void tile5(const uint8_t* const* w, const int8_t* const* x, int64_t nblk, int32_t dot[RT][MT]) {
  const uint8x16_t k85 = vdupq_n_u8(85), k170 = vdupq_n_u8(170), k3 = vdupq_n_u8(3);
  int32x4_t acc[RT][MT];  // sum of (-c) * x
  for (int r = 0; r < RT; ++r)
    for (int m = 0; m < MT; ++m) acc[r][m] = vdupq_n_s32(0);
  for (int64_t blk = 0; blk < nblk; ++blk) {
    for (int half = 0; half < 2; ++half) {  // bytes 0-15, then 16-31 of the block
      uint8x16_t frac[RT];
      for (int r = 0; r < RT; ++r) frac[r] = vld1q_u8(w[r] + blk * kT5BlockBytes + 16 * half);
      for (int i = 0; i < 5; ++i) {
        int8x16_t neg[RT];  // -c_i
        for (int r = 0; r < RT; ++r) {
          neg[r] = vreinterpretq_s8_u8(vaddq_u8(vcgtq_u8(frac[r], k85), vcgtq_u8(frac[r], k170)));
          if (i < 4) frac[r] = vmulq_u8(frac[r], k3);
        }
        for (int m = 0; m < MT; ++m) {
          const int8x16_t xv = vld1q_s8(x[m] + blk * kT5BlockWeights + 32 * i + 16 * half);
          for (int r = 0; r < RT; ++r) acc[r][m] = vdotq_s32(acc[r][m], neg[r], xv);
        }
      }
    }
  }
  for (int r = 0; r < RT; ++r)
    for (int m = 0; m < MT; ++m) dot[r][m] = -vaddvq_s32(acc[r][m]);
}

// store_tile of kernel_tile.h for this format (row stride and block count differ), as in ternary5_avx2.cpp.
template <int RT, int MT>
inline void store_tile5(const KernelArgs& a, int64_t r0, int64_t m0) {
  const int64_t stride = t5_row_stride_bytes(a.k);
  const uint8_t* w[RT];
  const int8_t* x[MT];
  for (int r = 0; r < RT; ++r) w[r] = a.w + (r0 + r) * stride;
  for (int m = 0; m < MT; ++m) x[m] = a.xp + (m0 + m) * a.xp_stride;
  int32_t dot[RT][MT];
  tile5<RT, MT>(w, x, t5_blocks_per_row(a.k), dot);
  for (int r = 0; r < RT; ++r)
    for (int m = 0; m < MT; ++m) a.y[(m0 + m) * a.n + r0 + r] = dot[r][m] - a.xsum[m0 + m];
}

}  // namespace

void rows5_neon_dotprod(const KernelArgs& a, int64_t n0, int64_t n1) {
  // GEMV tiles of two weight rows (four: no fewer instructions, more spills)
  run_row_tiles(a, n0, n1, t5_row_stride_bytes(a.k), [&a](int64_t r, int64_t m, auto rt, auto mt) {
    store_tile5<decltype(rt)::value, decltype(mt)::value>(a, r, m);
  });
}

}  // namespace bitnet

#endif  // AArch64 with the dot product

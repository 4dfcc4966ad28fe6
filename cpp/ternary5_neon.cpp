// ternary5_neon.cpp: the ARMv8.0 NEON int8 x ternary row kernel for the 1.6-bit format (ternary5.h).
//
// Compiled only for 64-bit ARM, with no flags (NEON is in the AArch64 base ISA), like ternary_neon.cpp; the
// body is also guarded by #if. CPUs with the ARMv8.2 dot product get ternary5_neon_dotprod.cpp instead.
// Only computes; the oracle is rows5_ref (ternary5_ref.cpp).
//
// Decoding 16 bytes of a block (80 of its 160 weights) into five registers of 16 codes, element order
// j + 32 i, with compares instead of a multiply-high (NEON has none for bytes). The stored byte is r_0 and
// 3 r_i = 256 c_i + r_{i+1} (ternary5.h), so
//   c_i = [r_i > 85] + [r_i > 170]       (3 r >= 256 iff r >= 86; 3 r >= 512 iff r >= 171)
//   r_{i+1} = 3 r_i mod 256              (one byte multiply, which wraps)
// A true compare is 0xFF = -1, so the sum of the two compares is -c_i, used as is: the tile accumulates
// sum (-c) x and negates once at the end. Four instructions per 16 codes (three for the last), then
// smlal / smlal2 into int16 as in ternary_neon.cpp, and the offset trick (subtract sum_k x once per row).
//
// Overflow, for every K and x in [-128, 127]: a product (-c) x is in [-254, 256]; per block each lane of
// the low and of the high accumulator gains 5 codes x 2 halves = 10 products, [-2540, 2560]; after
// kT5Widen = 12 blocks a lane is in [-30480, 30720], inside int16. sadalp widens into int32, whose lanes
// stay below 2^29 for K <= kMaxK (ternary.h).
#include "kernel_tile.h"
#include "ternary5.h"

#if defined(__aarch64__) || defined(_M_ARM64)
#include <arm_neon.h>

namespace bitnet {
namespace {

constexpr int kT5Widen = 12;  // blocks summed in int16 before widening (see the bound above)

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// dot[r][m] = sum_k c(w[r], k) * x[m][k] for RT weight rows and MT activation rows over nblk 160-weight
// blocks; each code register serves all MT activation rows. No software prefetch, as ternary_neon.cpp.
template <int RT, int MT>
inline void tile5(const uint8_t* const* w, const int8_t* const* x, int64_t nblk, int32_t dot[RT][MT]) {
  const uint8x16_t k85 = vdupq_n_u8(85), k170 = vdupq_n_u8(170), k3 = vdupq_n_u8(3);
  int32x4_t acc32[RT][MT];  // sum of (-c) * x
  for (int r = 0; r < RT; ++r)
    for (int m = 0; m < MT; ++m) acc32[r][m] = vdupq_n_s32(0);
  for (int64_t b0 = 0; b0 < nblk; b0 += kT5Widen) {
    const int64_t b1 = min64(nblk, b0 + kT5Widen);
    int16x8_t lo[RT][MT], hi[RT][MT];
    for (int r = 0; r < RT; ++r)
      for (int m = 0; m < MT; ++m) lo[r][m] = hi[r][m] = vdupq_n_s16(0);
    for (int64_t blk = b0; blk < b1; ++blk) {
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
            for (int r = 0; r < RT; ++r) {
              lo[r][m] = vmlal_s8(lo[r][m], vget_low_s8(neg[r]), vget_low_s8(xv));
              hi[r][m] = vmlal_high_s8(hi[r][m], neg[r], xv);
            }
          }
        }
      }
    }
    for (int r = 0; r < RT; ++r)
      for (int m = 0; m < MT; ++m) acc32[r][m] = vpadalq_s16(vpadalq_s16(acc32[r][m], lo[r][m]), hi[r][m]);
  }
  for (int r = 0; r < RT; ++r)
    for (int m = 0; m < MT; ++m) dot[r][m] = -vaddvq_s32(acc32[r][m]);
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

void rows5_neon(const KernelArgs& a, int64_t n0, int64_t n1) {
  run_row_tiles(a, n0, n1, t5_row_stride_bytes(a.k), [&a](int64_t r, int64_t m, auto rt, auto mt) {
    store_tile5<decltype(rt)::value, decltype(mt)::value>(a, r, m);
  });
}

}  // namespace bitnet

#endif  // AArch64

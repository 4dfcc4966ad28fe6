// ternary_neon_dotprod.cpp: the ARMv8.2 dot-product int8 x ternary row kernel (sdot + offset trick).
//
// This file alone is compiled with -march=armv8.2-a+dotprod, and only for 64-bit ARM; the body is also
// guarded by #if. Nothing here may be called unless the dispatcher has seen the CPU's dot-product flag
// (HWCAP_ASIMDDP on Linux, hw.optional.arm.FEAT_DotProd on macOS). It uses no std:: templates, so no
// inline function compiled with these flags can be picked by the linker for baseline code. Only computes;
// the oracle is rows_ref (ternary_ref.cpp), the ARMv8.0 fallback ternary_neon.cpp.
//
// Unpacking 16 bytes of a block (64 of its 128 weights, layout in ternary.h) with masks alone where the
// codes stay valid int8 (NEON shifts are per byte):
//   b & 0x03    = c(j)          scale 1
//   b & 0x0C    = 4 c(j+32)     scale 4
//   b & 0x30    = 16 c(j+64)    scale 16    (0, 16, 32)
//   b >> 6      = c(j+96)       scale 1     (b & 0xC0 would be 128 = -128 as int8 for code 2: shifted instead)
// sdot multiplies 16 codes by 16 activations (int8 x int8) and adds each group of four products into one
// int32 lane. Each field has its own accumulator; at the end A1 + B1 + (A4 >> 2) + (A16 >> 4) (exact: every
// term of A4 is a multiple of 4, of A16 of 16). Four instructions per 16 bytes, where the ARMv8.0 kernel needs
// five plus twice the multiplies.
//
// Overflow, for every K and every x in [-128, 127]: an A16 lane gains 4 products of at most 32 * 128 per
// sdot, two sdot per block: |A16| <= 32768 per block, <= 256 K = 2^30 at K = kMaxK (ternary.h); the others
// grow slower (A1 and B1 2048, A4 8192 per block). int32 throughout, no widening step.
#include "kernel_tile.h"
#include "ternary.h"

#if (defined(__aarch64__) || defined(_M_ARM64)) && defined(__ARM_FEATURE_DOTPROD)
#include <arm_neon.h>

namespace bitnet {
namespace {

// dot[r][m] = sum_k c(w[r], k) * x[m][k] for RT weight rows and MT activation rows over nblk blocks; each
// unpacked weight register is reused for all MT activation rows. Same contract as the AVX2 tiles
// (kernel_tile.h); no software prefetch (pf unused): nothing was measured on ARM to justify one.
template <int RT, int MT>
inline void tile(const uint8_t* const* w, const int8_t* const* x, int64_t nblk, int32_t dot[RT][MT],
                 const uint8_t* /*pf*/) {
  const uint8x16_t m03 = vdupq_n_u8(0x03), m0c = vdupq_n_u8(0x0C), m30 = vdupq_n_u8(0x30);
  // One accumulator per field (fields 0 and 3 both at scale 1, apart so no chain of sdot is longer than
  // two per block: sdot has a 3-cycle latency on some cores).
  int32x4_t a1[RT][MT], a4[RT][MT], a16[RT][MT], b1[RT][MT];
  for (int r = 0; r < RT; ++r)
    for (int m = 0; m < MT; ++m) a1[r][m] = a4[r][m] = a16[r][m] = b1[r][m] = vdupq_n_s32(0);
  for (int64_t blk = 0; blk < nblk; ++blk) {
    for (int half = 0; half < 2; ++half) {  // bytes 0-15, then 16-31 of the block
      int8x16_t c0[RT], c1[RT], c2[RT], c3[RT];
      for (int r = 0; r < RT; ++r) {
        const uint8x16_t b = vld1q_u8(w[r] + blk * kBlockBytes + 16 * half);
        c0[r] = vreinterpretq_s8_u8(vandq_u8(b, m03));
        c1[r] = vreinterpretq_s8_u8(vandq_u8(b, m0c));
        c2[r] = vreinterpretq_s8_u8(vandq_u8(b, m30));
        c3[r] = vreinterpretq_s8_u8(vshrq_n_u8(b, 6));
      }
      for (int m = 0; m < MT; ++m) {
        const int8_t* xb = x[m] + blk * kBlockWeights + 16 * half;
        const int8x16_t x0 = vld1q_s8(xb), x1 = vld1q_s8(xb + 32), x2 = vld1q_s8(xb + 64), x3 = vld1q_s8(xb + 96);
        for (int r = 0; r < RT; ++r) {
          a1[r][m] = vdotq_s32(a1[r][m], c0[r], x0);
          a4[r][m] = vdotq_s32(a4[r][m], c1[r], x1);
          a16[r][m] = vdotq_s32(a16[r][m], c2[r], x2);
          b1[r][m] = vdotq_s32(b1[r][m], c3[r], x3);
        }
      }
    }
  }
  for (int r = 0; r < RT; ++r)
    for (int m = 0; m < MT; ++m)
      dot[r][m] = vaddvq_s32(
          vaddq_s32(vaddq_s32(a1[r][m], b1[r][m]), vaddq_s32(vshrq_n_s32(a4[r][m], 2), vshrq_n_s32(a16[r][m], 4))));
}

}  // namespace

void rows_neon_dotprod(const KernelArgs& a, int64_t n0, int64_t n1) {
  // GEMV tiles of two weight rows (four: as many instructions, and spills)
  run_row_tiles(a, n0, n1, row_stride_bytes(a.k), [&a](int64_t r, int64_t m, auto rt, auto mt) {
    store_tile<decltype(rt)::value, decltype(mt)::value, tile<decltype(rt)::value, decltype(mt)::value>>(a, r, m);
  });
}

}  // namespace bitnet

#endif  // AArch64 with the dot product

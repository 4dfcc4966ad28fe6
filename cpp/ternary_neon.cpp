// ternary_neon.cpp: the ARMv8.0 NEON int8 x ternary row kernel (smlal into int16 + offset trick).
//
// Compiled only for 64-bit ARM (AArch64, where NEON is part of the base instruction set, so this file needs
// no flags); the body is also guarded by #if. CPUs with the ARMv8.2 dot product get ternary_neon_dotprod.cpp
// instead (the dispatcher decides). It only computes; argument checks live in bindings.cpp and the activation
// padding in dispatch.cpp. Not the oracle: rows_ref in ternary_ref.cpp is.
//
// Unpacking 16 bytes of a block (64 of its 128 weights, layout in ternary.h; NEON shifts are per byte, so no
// mask is needed after the last shift):
//   b & 0x03          = c(j)          scale 1
//   b & 0x0C          = 4 c(j+32)     scale 4
//   (b >> 4) & 0x03   = c(j+64)       scale 1
//   b >> 6            = c(j+96)       scale 1
// smlal / smlal2 multiply the low / high eight codes by eight activations (int8 x int8 -> int16) and add to
// an int16 accumulator. Scale-1 products go to accumulators S, scale-4 products to T, and T >> 2 (exact:
// every term is a multiple of 4) restores them: five instructions per 16 bytes instead of six.
//
// Overflow, for every K and every x in [-128, 127]:
//   one product, scale 1: 2 * -128 .. 2 * 127 = [-256, 254];   scale 4: 8 * -128 .. 8 * 127 = [-1024, 1016]
//   per block, each lane of an S accumulator (S_lo takes the low eight lanes of a code register, S_hi the
//   high eight) gains 3 fields x 2 halves = 6 scale-1 products, [-1536, 1524]; each lane of T_lo / T_hi 2
//   scale-4 products, [-2048, 2032]. After kWiden = 16 blocks: S in [-24576, 24384], T in [-32768, 32512],
//   both inside int16 (T reaches -32768 exactly, which is representable). Then sadalp widens pairs of lanes
//   into int32, whose lanes stay below 2^29 for K <= kMaxK (ternary.h).
#include "kernel_tile.h"
#include "ternary.h"

#if defined(__aarch64__) || defined(_M_ARM64)
#include <arm_neon.h>

namespace bitnet {
namespace {

constexpr int kWiden = 16;  // blocks summed in int16 before widening (see the bound above)

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// The four code registers of 16 weight bytes: c[0], c[2], c[3] at scale 1, c[1] at scale 4 (see the top).
struct Codes {
  int8x16_t c[4];
};

inline Codes unpack(const uint8_t* p) {
  const uint8x16_t b = vld1q_u8(p);
  const uint8x16_t m3 = vdupq_n_u8(0x03);
  Codes out;
  out.c[0] = vreinterpretq_s8_u8(vandq_u8(b, m3));
  out.c[1] = vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(0x0C)));
  out.c[2] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(b, 4), m3));
  out.c[3] = vreinterpretq_s8_u8(vshrq_n_u8(b, 6));
  return out;
}

// acc += codes * x for 16 lanes: the low eight into lo, the high eight into hi (int16).
inline void mla16(int16x8_t& lo, int16x8_t& hi, int8x16_t codes, int8x16_t x) {
  lo = vmlal_s8(lo, vget_low_s8(codes), vget_low_s8(x));
  hi = vmlal_high_s8(hi, codes, x);
}

// dot[r][m] = sum_k c(w[r], k) * x[m][k] for RT weight rows and MT activation rows over nblk blocks; each
// unpacked weight register is reused for all MT activation rows. Same contract as the AVX2 tiles (kernel_tile.h);
// no software prefetch (pf unused): nothing was measured on ARM to justify one.
template <int RT, int MT>
inline void tile(const uint8_t* const* w, const int8_t* const* x, int64_t nblk, int32_t dot[RT][MT],
                 const uint8_t* /*pf*/) {
  int32x4_t s32[RT][MT], t32[RT][MT];
  for (int r = 0; r < RT; ++r)
    for (int m = 0; m < MT; ++m) s32[r][m] = t32[r][m] = vdupq_n_s32(0);

  for (int64_t b0 = 0; b0 < nblk; b0 += kWiden) {
    const int64_t b1 = min64(nblk, b0 + kWiden);
    int16x8_t slo[RT][MT], shi[RT][MT], tlo[RT][MT], thi[RT][MT];
    for (int r = 0; r < RT; ++r)
      for (int m = 0; m < MT; ++m) slo[r][m] = shi[r][m] = tlo[r][m] = thi[r][m] = vdupq_n_s16(0);
    for (int64_t blk = b0; blk < b1; ++blk) {
      for (int half = 0; half < 2; ++half) {  // bytes 0-15, then 16-31 of the block
        Codes c[RT];
        for (int r = 0; r < RT; ++r) c[r] = unpack(w[r] + blk * kBlockBytes + 16 * half);
        for (int m = 0; m < MT; ++m) {
          const int8_t* xb = x[m] + blk * kBlockWeights + 16 * half;
          const int8x16_t x0 = vld1q_s8(xb), x1 = vld1q_s8(xb + 32), x2 = vld1q_s8(xb + 64), x3 = vld1q_s8(xb + 96);
          for (int r = 0; r < RT; ++r) {
            mla16(slo[r][m], shi[r][m], c[r].c[0], x0);
            mla16(tlo[r][m], thi[r][m], c[r].c[1], x1);
            mla16(slo[r][m], shi[r][m], c[r].c[2], x2);
            mla16(slo[r][m], shi[r][m], c[r].c[3], x3);
          }
        }
      }
    }
    for (int r = 0; r < RT; ++r)
      for (int m = 0; m < MT; ++m) {
        s32[r][m] = vpadalq_s16(vpadalq_s16(s32[r][m], slo[r][m]), shi[r][m]);
        t32[r][m] = vpadalq_s16(vpadalq_s16(t32[r][m], tlo[r][m]), thi[r][m]);
      }
  }
  for (int r = 0; r < RT; ++r)
    for (int m = 0; m < MT; ++m) dot[r][m] = vaddvq_s32(vaddq_s32(s32[r][m], vshrq_n_s32(t32[r][m], 2)));
}

}  // namespace

void rows_neon(const KernelArgs& a, int64_t n0, int64_t n1) {
  run_row_tiles(a, n0, n1, row_stride_bytes(a.k), [&a](int64_t r, int64_t m, auto rt, auto mt) {
    store_tile<decltype(rt)::value, decltype(mt)::value, tile<decltype(rt)::value, decltype(mt)::value>>(a, r, m);
  });
}

}  // namespace bitnet

#endif  // AArch64

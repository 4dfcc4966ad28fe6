// ternary_avx512_asm.cpp: the AVX-512 VNNI GEMV and GEMM loops as GCC/Clang inline assembly.
//
// Compiled, with the same flags as ternary_avx512.cpp, only for x86-64 with GCC or Clang when
// BITNET_INLINE_ASM is on (the default); rows_avx512vnni calls it for whole tiles and falls back to the
// intrinsic tiles in ternary_avx512.cpp for the rest and for other builds. Same packed format,
// activation permutation and offset trick as there; only computes.
//
// Why assembly: GCC 12 compiles the intrinsic tiles with register copies and reloads in the loop,
// folds the GEMM's activation loads into the vpdpbusd operands (loading each vector twice), and the
// intrinsic GEMV pays a call and a horizontal sum per row; the assembly is faster for both (the figures
// are in docs/kernels.md, "Why the hot loops are written as they are").
//
// GEMV (gemv4_tiles): four rows per tile, and no shift: the four 2-bit fields are masked in place
// (0x03, 0x0C, 0x30, 0xC0, i.e. scales 1, 4, 16, 64) into four accumulators per row, so 256 weights
// cost 4 vpandd + 4 vpdpbusd, which on a core with one 512-bit multiply pipe and a free logic pipe is
// the multiply bound itself (from L1 the loop alone runs at the vpdpbusd ceiling). Four row sums are
// finished with three vphaddd.
//
// GEMM (gemm_2x8_asm): two weight rows x eight activation rows, codes at scale 1 (three shifts, four
// masks per row), each activation vector loaded once into a register for both weight rows.
#include "ternary.h"

#if defined(__x86_64__) && defined(__GNUC__)
#if !defined(__clang__)
// as in ternary_avx512.cpp: GCC 12's avx512fintrin.h trips -Wuninitialized on its pass-through operands
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <cstddef>

namespace bitnet {
namespace {

// GEMV over whole tiles of four rows, in assembly (see the top of the file).
//
// Registers: zmm0-15 accumulators, zmm(4r + f) = row r, field f (scale 4^f); zmm16-19 the field
// masks; zmm20-23 the four 64-byte activation segments of this step; zmm24-27 masked codes;
// zmm28 the weight bytes; zmm29 the activation sum (broadcast). Per 256-weight step and row: one
// 64-byte load, four vpandd, four vpdpbusd. A final odd 128-weight block is loaded 32 bytes wide
// (the upper half of zmm28 becomes zero, and zero codes times anything add nothing).
//
// Overflow: a scale-64 lane gains at most 4 * 128 * 128 = 2^16 in magnitude per step, and there are
// K / 256 steps, so |lane| <= 256 * K <= 2^30 for K <= kMaxK; the other scales are smaller.
struct Gemv4Params {
  int64_t nsteps;   // full 64-byte (256-weight) steps per row, offset 0
  int64_t odd;      // 1 if a final 32-byte block follows, offset 8
  int32_t xsum;     // sum of the activations (the code offset correction), offset 16
  int32_t mask;     // 0x03 in every byte, offset 20
  int64_t pf_dist;  // software prefetch distance in bytes, offset 24 (gemv_prefetch_bytes)
};
static_assert(offsetof(Gemv4Params, pf_dist) == 24, "the assembly reads these offsets");

#define BITNET_GEMV_ROW(DST, W, A0, A1, A2, A3) \
  "vmovdqu64 " W ", %%" DST                     \
  "\n\t"                                        \
  "vpandd %%zmm16, %%zmm28, %%zmm24\n\t"        \
  "vpandd %%zmm17, %%zmm28, %%zmm25\n\t"        \
  "vpandd %%zmm18, %%zmm28, %%zmm26\n\t"        \
  "vpandd %%zmm19, %%zmm28, %%zmm27\n\t"        \
  "vpdpbusd %%zmm20, %%zmm24, %%zmm" #A0        \
  "\n\t"                                        \
  "vpdpbusd %%zmm21, %%zmm25, %%zmm" #A1        \
  "\n\t"                                        \
  "vpdpbusd %%zmm22, %%zmm26, %%zmm" #A2        \
  "\n\t"                                        \
  "vpdpbusd %%zmm23, %%zmm27, %%zmm" #A3 "\n\t"
// One 256-weight step of four rows: activations at XO bytes past xc, weights at WO bytes past wc in each
// row (the loop body runs two steps per iteration: offsets 0 and 256 / 64).
#define BITNET_GEMV_STEP(DST, XO, WO)                                                                             \
  "vmovdqu64 " XO                                                                                                 \
  "(%[xc]), %%zmm20\n\t"                                                                                          \
  "vmovdqu64 " XO                                                                                                 \
  "+64(%[xc]), %%zmm21\n\t"                                                                                       \
  "vmovdqu64 " XO                                                                                                 \
  "+128(%[xc]), %%zmm22\n\t"                                                                                      \
  "vmovdqu64 " XO "+192(%[xc]), %%zmm23\n\t" BITNET_GEMV_ROW(DST, WO "(%[wc])", 0, 1, 2, 3)                       \
      BITNET_GEMV_ROW(DST, WO "(%[wc],%[s])", 4, 5, 6, 7) BITNET_GEMV_ROW(DST, WO "(%[wc],%[s],2)", 8, 9, 10, 11) \
          BITNET_GEMV_ROW(DST, WO "(%[wc],%[s3])", 12, 13, 14, 15)
// row sum of fields A..D (scales 1, 4, 16, 64) folded into ymmA
#define BITNET_GEMV_FOLD(A, B, C, D, T)       \
  "vpsrad $2, %%zmm" #B ", %%zmm" #B          \
  "\n\t"                                      \
  "vpsrad $4, %%zmm" #C ", %%zmm" #C          \
  "\n\t"                                      \
  "vpsrad $6, %%zmm" #D ", %%zmm" #D          \
  "\n\t"                                      \
  "vpaddd %%zmm" #B ", %%zmm" #A ", %%zmm" #A \
  "\n\t"                                      \
  "vpaddd %%zmm" #D ", %%zmm" #C ", %%zmm" #C \
  "\n\t"                                      \
  "vpaddd %%zmm" #C ", %%zmm" #A ", %%zmm" #A \
  "\n\t"                                      \
  "vextracti64x4 $1, %%zmm" #A ", %%ymm" #T   \
  "\n\t"                                      \
  "vpaddd %%ymm" #T ", %%ymm" #A ", %%ymm" #A "\n\t"
#define BITNET_ZERO(i) "vpxord %%xmm" #i ", %%xmm" #i ", %%xmm" #i "\n\t"

// y[4t + r] = sum_k c(w[4t + r], k) * x[k] - xsum for t < ntiles; rows `stride` bytes apart from w;
// x is the permuted, zero-padded activation row.
void gemv4_tiles(const uint8_t* w, int64_t stride, const int8_t* x, int64_t ntiles, int32_t* y, const Gemv4Params* p) {
  if (ntiles <= 0) return;
  const int64_t s3 = 3 * stride;
  const uint8_t* wc;
  const int8_t* xc;
  const uint8_t* pfc;
  int64_t cnt;
  __asm__ volatile(
      "vpbroadcastd 20(%[p]), %%zmm16\n\t"
      "vpslld $2, %%zmm16, %%zmm17\n\t"
      "vpslld $4, %%zmm16, %%zmm18\n\t"
      "vpslld $6, %%zmm16, %%zmm19\n\t"
      "vpbroadcastd 16(%[p]), %%xmm29\n"
      "2:\n\t"  // per tile of four rows
      BITNET_ZERO(0) BITNET_ZERO(1) BITNET_ZERO(2) BITNET_ZERO(3) BITNET_ZERO(4) BITNET_ZERO(5)
      BITNET_ZERO(6) BITNET_ZERO(7) BITNET_ZERO(8) BITNET_ZERO(9) BITNET_ZERO(10) BITNET_ZERO(11)
      BITNET_ZERO(12) BITNET_ZERO(13) BITNET_ZERO(14) BITNET_ZERO(15)
      "movq %[w], %[wc]\n\t"
      "movq %[x], %[xc]\n\t"
      "movq 24(%[p]), %[pfc]\n\t"
      "addq %[w], %[pfc]\n\t"
      "movq 0(%[p]), %[cnt]\n\t"
      // an odd step first, then two steps per iteration (measured faster than one: docs/kernels.md)
      "testq $1, %[cnt]\n\t"
      "jz 6f\n\t"
      "prefetcht1 (%[pfc])\n\t"
      "prefetcht1 64(%[pfc])\n\t"
      "prefetcht1 128(%[pfc])\n\t"
      "prefetcht1 192(%[pfc])\n\t"
      BITNET_GEMV_STEP("zmm28", "0", "0")
      "addq $64, %[wc]\n\t"
      "addq $256, %[xc]\n\t"
      "addq $256, %[pfc]\n"
      "6:\n\t"
      "shrq $1, %[cnt]\n\t"
      "jz 4f\n\t"
      ".p2align 5\n"
      "1:\n\t"  // per 512 weights
      "prefetcht1 (%[pfc])\n\t"
      "prefetcht1 64(%[pfc])\n\t"
      "prefetcht1 128(%[pfc])\n\t"
      "prefetcht1 192(%[pfc])\n\t"
      BITNET_GEMV_STEP("zmm28", "0", "0")
      "prefetcht1 256(%[pfc])\n\t"
      "prefetcht1 320(%[pfc])\n\t"
      "prefetcht1 384(%[pfc])\n\t"
      "prefetcht1 448(%[pfc])\n\t"
      BITNET_GEMV_STEP("zmm28", "256", "64")
      "addq $128, %[wc]\n\t"
      "addq $512, %[xc]\n\t"
      "addq $512, %[pfc]\n\t"
      "decq %[cnt]\n\t"
      "jnz 1b\n"
      "4:\n\t"
      "cmpq $0, 8(%[p])\n\t"
      "je 5f\n\t"
      BITNET_GEMV_STEP("ymm28", "0", "0")
      "5:\n\t"
      BITNET_GEMV_FOLD(0, 1, 2, 3, 24)
      BITNET_GEMV_FOLD(4, 5, 6, 7, 25)
      BITNET_GEMV_FOLD(8, 9, 10, 11, 26)
      BITNET_GEMV_FOLD(12, 13, 14, 15, 27)
      "vphaddd %%ymm4, %%ymm0, %%ymm0\n\t"
      "vphaddd %%ymm12, %%ymm8, %%ymm8\n\t"
      "vphaddd %%ymm8, %%ymm0, %%ymm0\n\t"
      "vextracti128 $1, %%ymm0, %%xmm1\n\t"
      "vpaddd %%xmm1, %%xmm0, %%xmm0\n\t"
      "vpsubd %%xmm29, %%xmm0, %%xmm0\n\t"
      "vmovdqu %%xmm0, (%[y])\n\t"
      "addq $16, %[y]\n\t"
      "leaq (%[w],%[s],4), %[w]\n\t"
      "decq %[nt]\n\t"
      "jnz 2b\n\t"
      "vzeroupper\n\t"
      : [w] "+r"(w), [y] "+r"(y), [nt] "+r"(ntiles), [wc] "=&r"(wc), [xc] "=&r"(xc), [pfc] "=&r"(pfc),
        [cnt] "=&r"(cnt)
      : [s] "r"(stride), [s3] "r"(s3), [x] "r"(x), [p] "r"(p)
      : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
        "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22",
        "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29");
}

// GEMM tile of two weight rows x eight activation rows, in assembly: the same arithmetic as
// gemm_tile<2, 8> in ternary_avx512.cpp (a lane gains at most 16 * 2 * 128 per step: no overflow for
// any K <= kMaxK), with each activation vector loaded once into a register and used for both weight
// rows. (GCC folds the loads of the intrinsic version into the vpdpbusd operands, loading every
// activation vector twice: 64 zmm loads per 64 vpdpbusd, which on a core with two 256-bit load ports
// is as many load cycles as multiply cycles.)
//
// Registers: zmm(2m + r) accumulates weight row r against activation row m; zmm16-19 / zmm20-23 the
// codes of row 0 / row 1 at scale 1 (three shifts, four masks each); zmm24 the 0x03 mask; zmm25-26
// the weight bytes; zmm27-30 activation segments.
struct GemmParams {
  int64_t nsteps;  // full 64-byte (256-weight) steps per row
  int64_t odd;     // 1 if a final 32-byte block follows
  int32_t mask;    // 0x03 in every byte
};

#define BITNET_GEMM_CODES(B, C0, C1, C2, C3) \
  "vpandd %%zmm24, %%zmm" #B ", %%zmm" #C0   \
  "\n\t"                                     \
  "vpsrlw $2, %%zmm" #B ", %%zmm" #C1        \
  "\n\t"                                     \
  "vpsrlw $4, %%zmm" #B ", %%zmm" #C2        \
  "\n\t"                                     \
  "vpsrlw $6, %%zmm" #B ", %%zmm" #C3        \
  "\n\t"                                     \
  "vpandd %%zmm24, %%zmm" #C1 ", %%zmm" #C1  \
  "\n\t"                                     \
  "vpandd %%zmm24, %%zmm" #C2 ", %%zmm" #C2  \
  "\n\t"                                     \
  "vpandd %%zmm24, %%zmm" #C3 ", %%zmm" #C3 "\n\t"
// activation row at address X (its four 64-byte segments) against both weight rows
#define BITNET_GEMM_XROW(X, A0, A1)      \
  "vmovdqu64 " X                         \
  ", %%zmm27\n\t"                        \
  "vmovdqu64 64" X                       \
  ", %%zmm28\n\t"                        \
  "vmovdqu64 128" X                      \
  ", %%zmm29\n\t"                        \
  "vmovdqu64 192" X                      \
  ", %%zmm30\n\t"                        \
  "vpdpbusd %%zmm27, %%zmm16, %%zmm" #A0 \
  "\n\t"                                 \
  "vpdpbusd %%zmm27, %%zmm20, %%zmm" #A1 \
  "\n\t"                                 \
  "vpdpbusd %%zmm28, %%zmm17, %%zmm" #A0 \
  "\n\t"                                 \
  "vpdpbusd %%zmm28, %%zmm21, %%zmm" #A1 \
  "\n\t"                                 \
  "vpdpbusd %%zmm29, %%zmm18, %%zmm" #A0 \
  "\n\t"                                 \
  "vpdpbusd %%zmm29, %%zmm22, %%zmm" #A1 \
  "\n\t"                                 \
  "vpdpbusd %%zmm30, %%zmm19, %%zmm" #A0 \
  "\n\t"                                 \
  "vpdpbusd %%zmm30, %%zmm23, %%zmm" #A1 "\n\t"
// xa = activation row 0, xb = row 3; rows m are xstride apart
#define BITNET_GEMM_STEP(DST0, DST1)                                                                                   \
  "vmovdqu64 (%[wc]), %%" DST0                                                                                         \
  "\n\t"                                                                                                               \
  "vmovdqu64 (%[wc],%[s]), %%" DST1 "\n\t" BITNET_GEMM_CODES(25, 16, 17, 18, 19) BITNET_GEMM_CODES(26, 20, 21, 22, 23) \
      BITNET_GEMM_XROW("(%[xa])", 0, 1) BITNET_GEMM_XROW("(%[xa],%[xs])", 2, 3)                                        \
          BITNET_GEMM_XROW("(%[xa],%[xs],2)", 4, 5) BITNET_GEMM_XROW("(%[xb])", 6, 7)                                  \
              BITNET_GEMM_XROW("(%[xa],%[xs],4)", 8, 9) BITNET_GEMM_XROW("(%[xb],%[xs],2)", 10, 11)                    \
                  BITNET_GEMM_XROW("(%[xb],%[xs3])", 12, 13) BITNET_GEMM_XROW("(%[xb],%[xs],4)", 14, 15)

// acc[2m + r] (16 int32 lanes each; their sum is the dot product) for weight rows w, w + stride and
// activation rows x + m * xstride, m < 8.
void gemm_2x8_asm(const uint8_t* w, int64_t stride, const int8_t* x, int64_t xstride, const uint8_t* pf,
                  const GemmParams* p, __m512i* acc) {
  const int8_t* xb = x + 3 * xstride;
  const int64_t xs3 = 3 * xstride;
  int64_t cnt;
  __asm__ volatile(
      "vpbroadcastd 16(%[p]), %%zmm24\n\t"
      BITNET_ZERO(0) BITNET_ZERO(1) BITNET_ZERO(2) BITNET_ZERO(3) BITNET_ZERO(4) BITNET_ZERO(5)
      BITNET_ZERO(6) BITNET_ZERO(7) BITNET_ZERO(8) BITNET_ZERO(9) BITNET_ZERO(10) BITNET_ZERO(11)
      BITNET_ZERO(12) BITNET_ZERO(13) BITNET_ZERO(14) BITNET_ZERO(15)
      "movq 0(%[p]), %[cnt]\n\t"
      "testq %[cnt], %[cnt]\n\t"
      "jz 4f\n\t"
      ".p2align 5\n"
      "1:\n\t"  // per 256 weights
      "prefetcht1 (%[pf])\n\t"
      "prefetcht1 (%[pf],%[s])\n\t"
      BITNET_GEMM_STEP("zmm25", "zmm26")
      "addq $64, %[wc]\n\t"
      "addq $256, %[xa]\n\t"
      "addq $256, %[xb]\n\t"
      "addq $64, %[pf]\n\t"
      "decq %[cnt]\n\t"
      "jnz 1b\n"
      "4:\n\t"
      "cmpq $0, 8(%[p])\n\t"
      "je 5f\n\t"
      BITNET_GEMM_STEP("ymm25", "ymm26")  // final 128-weight block, upper halves zero
      "5:\n\t"
      "vmovdqu64 %%zmm0, 0(%[acc])\n\t"
      "vmovdqu64 %%zmm1, 64(%[acc])\n\t"
      "vmovdqu64 %%zmm2, 128(%[acc])\n\t"
      "vmovdqu64 %%zmm3, 192(%[acc])\n\t"
      "vmovdqu64 %%zmm4, 256(%[acc])\n\t"
      "vmovdqu64 %%zmm5, 320(%[acc])\n\t"
      "vmovdqu64 %%zmm6, 384(%[acc])\n\t"
      "vmovdqu64 %%zmm7, 448(%[acc])\n\t"
      "vmovdqu64 %%zmm8, 512(%[acc])\n\t"
      "vmovdqu64 %%zmm9, 576(%[acc])\n\t"
      "vmovdqu64 %%zmm10, 640(%[acc])\n\t"
      "vmovdqu64 %%zmm11, 704(%[acc])\n\t"
      "vmovdqu64 %%zmm12, 768(%[acc])\n\t"
      "vmovdqu64 %%zmm13, 832(%[acc])\n\t"
      "vmovdqu64 %%zmm14, 896(%[acc])\n\t"
      "vmovdqu64 %%zmm15, 960(%[acc])\n\t"
      "vzeroupper\n\t"
      : [wc] "+r"(w), [xa] "+r"(x), [xb] "+r"(xb), [pf] "+r"(pf), [cnt] "=&r"(cnt)
      : [s] "r"(stride), [xs] "r"(xstride), [xs3] "r"(xs3), [p] "r"(p), [acc] "r"(acc)
      : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
        "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22",
        "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30");
}

// Lane i of the result = the sum of the 16 lanes of v[i] (a transpose-and-add tree, ~45 instructions
// for all sixteen instead of sixteen separate horizontal sums).
__m512i sum16(const __m512i* v) {
  __m512i u[8], t[4];
  // u[i], per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3] for a = v[2i], b = v[2i+1]
  for (int i = 0; i < 8; ++i)
    u[i] =
        _mm512_add_epi32(_mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]));
  // t[i], per 128-bit lane: one partial sum of each of v[4i .. 4i+3]
  for (int i = 0; i < 4; ++i)
    t[i] =
        _mm512_add_epi32(_mm512_unpacklo_epi64(u[2 * i], u[2 * i + 1]), _mm512_unpackhi_epi64(u[2 * i], u[2 * i + 1]));
  // fold the four 128-bit lanes: 128-bit lane j of the result holds the sums of v[4j .. 4j+3]
  const __m512i a = _mm512_add_epi32(_mm512_shuffle_i32x4(t[0], t[1], 0x88), _mm512_shuffle_i32x4(t[0], t[1], 0xDD));
  const __m512i b = _mm512_add_epi32(_mm512_shuffle_i32x4(t[2], t[3], 0x88), _mm512_shuffle_i32x4(t[2], t[3], 0xDD));
  return _mm512_add_epi32(_mm512_shuffle_i32x4(a, b, 0x88), _mm512_shuffle_i32x4(a, b, 0xDD));
}

// y rows m0 .. m0+7, columns r0, r0 + 1, over the 256-weight steps [q0, q0 + nq), plus the odd final
// 128-weight block if `odd`. The first slice of K (add = false) stores dot - xsum, later ones add.
void gemm_2x8(const KernelArgs& a, int64_t r0, int64_t m0, int64_t q0, int64_t nq, bool odd, bool add) {
  const int64_t stride = row_stride_bytes(a.k);
  const GemmParams p{nq, odd ? 1 : 0, 0x03030303};
  alignas(64) __m512i acc[16];
  const uint8_t* w = a.w + r0 * stride + q0 * 64;
  // prefetch the same columns eight rows (four tiles) ahead: with K cut into slices the next bytes in
  // memory are not the next ones used (4096 x 11008, M = 8: 164 -> 174 G MAC/s cold, 181 -> 195 hot)
  gemm_2x8_asm(w, stride, a.xp + m0 * a.xp_stride + q0 * 256, a.xp_stride, w + 8 * stride, &p, acc);
  alignas(64) int32_t dot[16];
  _mm512_store_si512(dot, sum16(acc));
  for (int m = 0; m < 8; ++m) {
    int32_t* y = a.y + (m0 + m) * a.n + r0;
    if (add) {
      y[0] += dot[2 * m];
      y[1] += dot[2 * m + 1];
    } else {
      y[0] = dot[2 * m] - a.xsum[m0 + m];
      y[1] = dot[2 * m + 1] - a.xsum[m0 + m];
    }
  }
}

// Rows [r0, r1) (an even count) against activation rows m0 .. m0+7. Eight activation rows of K bytes
// each are read once per pair of weight rows; beyond 16 steps (K > 4096, 33 KB for eight rows) they
// no longer stay in the 32 KB L1, so K is cut into slices of 12 steps (24 KB) and every slice sweeps
// all the row pairs before the next; at K = 4096 slicing was slower, so shorter rows are done in one pass
// (the slice lengths tried and their figures: docs/kernels.md, "Why the hot loops are written as they are").
void gemm_rows_2x8(const KernelArgs& a, int64_t r0, int64_t r1, int64_t m0) {
  const int64_t nblk = blocks_per_row(a.k);
  const int64_t nsteps = nblk / 2;
  const int64_t slice = nsteps > 16 ? 12 : std::max<int64_t>(nsteps, 1);
  for (int64_t q0 = 0;; q0 += slice) {
    const int64_t nq = std::min(slice, nsteps - q0);
    const bool last = q0 + slice >= nsteps;
    for (int64_t r = r0; r < r1; r += 2) gemm_2x8(a, r, m0, q0, nq, last && nblk % 2 == 1, q0 > 0);
    if (last) break;
  }
}

}  // namespace

int64_t gemv_rows_avx512vnni_asm(const KernelArgs& a, int64_t r0, int64_t r1) {
  const int64_t nblk = blocks_per_row(a.k);
  const Gemv4Params p{nblk / 2, nblk % 2, a.xsum[0], 0x03030303, gemv_prefetch_bytes(a.k)};
  const int64_t ntiles = (r1 - r0) / 4;
  gemv4_tiles(a.w + r0 * row_stride_bytes(a.k), row_stride_bytes(a.k), a.xp, ntiles, a.y + r0, &p);
  return r0 + 4 * ntiles;
}

int64_t gemm_rows_avx512vnni_asm(const KernelArgs& a, int64_t r0, int64_t r1, int64_t m0) {
  const int64_t end = r0 + (r1 - r0) / 2 * 2;
  gemm_rows_2x8(a, r0, end, m0);
  return end;
}

}  // namespace bitnet

#endif  // x86-64 GCC/Clang

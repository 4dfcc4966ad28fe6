// ternary_avx2_asm.cpp: the AVX2 GEMV loop as GCC/Clang inline assembly.
//
// Compiled, with the same flags as ternary_avx2.cpp (-mavx2 -mfma), only for x86-64 with GCC or Clang
// when BITNET_INLINE_ASM is on (the default); rows_avx2 calls it for whole two-row tiles and falls back
// to the intrinsic tiles in ternary_avx2.cpp for the rest and for other builds. Same packed format,
// unpacking (one shift, four masks, fields at scale 1 and 4), maddubs and offset trick as there; only
// computes.
//
// What differs: the two rows' instructions are interleaved, the activations are read straight from
// memory by vpmaddubsw (no register held for them), all sixteen ymm registers are assigned by hand, and
// the int16 -> int32 widening and the row sums are done in the same loop over tiles. GCC 12 compiled the
// intrinsic tile with register copies and a call and horizontal sum per tile; measured here
// (tools/bench_kernels.py, 4096 x 4096, one thread, hot) 119 -> 127 G weights/s. 13 vector instructions
// per 128 weights and row on four vector pipes bound this loop at ~144 G weights/s at 3.7 GHz.
#include "ternary.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#include <algorithm>
#include <cstddef>

namespace bitnet {
namespace {

// blocks summed in int16 before T is folded into S (8, as in ternary_avx2.cpp; the bound is below)
#define BITNET_AVX2_WIDEN 8

// GEMV over whole tiles of two rows, in assembly (see the top of the file).
//
// Registers: ymm0/1 = S/T of row 0, ymm2/3 = S/T of row 1 (int16, scale 1 and 4), ymm4/5 = the
// int32 row accumulators, ymm8-13 temporaries, ymm14/15 the 0x03/0x0C masks. The widening is cheaper
// than the intrinsic tile's. After each W = BITNET_AVX2_WIDEN blocks, T (a sum of multiples of 4, in
// [-32768, 32512]) is divided by 4 exactly and added into S; S then gains at most [-16384, 16256]
// per W blocks and is widened into the int32 accumulator with vpmaddwd(S, 1) every 2W blocks
// ([-32768, 32512], inside int16). Measured +1% over widening both every W blocks.
struct alignas(32) Gemv2Params {
  int16_t ones[16];  // the vpmaddwd widening constant, at offset 0
  int64_t nblk;      // 128-weight blocks per row, offset 32
  int32_t xsum;      // sum of the activations, offset 40
  int32_t mask;      // 0x03 in every byte, offset 44
  int64_t pf_dist;   // software prefetch distance in bytes, offset 48 (gemv_prefetch_bytes)
};
static_assert(offsetof(Gemv2Params, nblk) == 32 && offsetof(Gemv2Params, xsum) == 40 &&
                  offsetof(Gemv2Params, mask) == 44 && offsetof(Gemv2Params, pf_dist) == 48,
              "the assembly reads these offsets");

// One block of two rows: row 0 codes from W0 into S0 = ymm0 / T0 = ymm1, row 1 from W1 into ymm2/ymm3.
#define BITNET_GEMV2_BLOCK(W0, W1)                \
  "vmovdqu " W0 ", %%ymm8\n\t"                    \
  "vmovdqu " W1 ", %%ymm11\n\t"                   \
  "vpsrlw $4, %%ymm8, %%ymm9\n\t"                 \
  "vpsrlw $4, %%ymm11, %%ymm12\n\t"               \
  "vpand %%ymm14, %%ymm8, %%ymm10\n\t"            \
  "vpand %%ymm14, %%ymm11, %%ymm13\n\t"           \
  "vpmaddubsw (%[xc]), %%ymm10, %%ymm10\n\t"      \
  "vpmaddubsw (%[xc]), %%ymm13, %%ymm13\n\t"      \
  "vpaddw %%ymm10, %%ymm0, %%ymm0\n\t"            \
  "vpaddw %%ymm13, %%ymm2, %%ymm2\n\t"            \
  "vpand %%ymm15, %%ymm8, %%ymm8\n\t"             \
  "vpand %%ymm15, %%ymm11, %%ymm11\n\t"           \
  "vpmaddubsw 32(%[xc]), %%ymm8, %%ymm8\n\t"      \
  "vpmaddubsw 32(%[xc]), %%ymm11, %%ymm11\n\t"    \
  "vpaddw %%ymm8, %%ymm1, %%ymm1\n\t"             \
  "vpaddw %%ymm11, %%ymm3, %%ymm3\n\t"            \
  "vpand %%ymm14, %%ymm9, %%ymm10\n\t"            \
  "vpand %%ymm14, %%ymm12, %%ymm13\n\t"           \
  "vpmaddubsw 64(%[xc]), %%ymm10, %%ymm10\n\t"    \
  "vpmaddubsw 64(%[xc]), %%ymm13, %%ymm13\n\t"    \
  "vpaddw %%ymm10, %%ymm0, %%ymm0\n\t"            \
  "vpaddw %%ymm13, %%ymm2, %%ymm2\n\t"            \
  "vpand %%ymm15, %%ymm9, %%ymm9\n\t"             \
  "vpand %%ymm15, %%ymm12, %%ymm12\n\t"           \
  "vpmaddubsw 96(%[xc]), %%ymm9, %%ymm9\n\t"      \
  "vpmaddubsw 96(%[xc]), %%ymm12, %%ymm12\n\t"    \
  "vpaddw %%ymm9, %%ymm1, %%ymm1\n\t"             \
  "vpaddw %%ymm12, %%ymm3, %%ymm3\n\t"
// Up to BITNET_AVX2_WIDEN blocks of two rows into T (ymm1, ymm3), then T / 4 (exact) folded into S.
#define BITNET_GEMV2_CHUNK(L)                                        \
  "vpxor %%xmm1, %%xmm1, %%xmm1\n\t"                                 \
  "vpxor %%xmm3, %%xmm3, %%xmm3\n\t"                                 \
  "movq $" BITNET_STR(BITNET_AVX2_WIDEN) ", %[cnt]\n\t"              \
  "cmpq %[cnt], %[nb]\n\t"                                           \
  "cmovlq %[nb], %[cnt]\n\t"                                         \
  "subq %[cnt], %[nb]\n\t"                                           \
  ".p2align 5\n"                                                     \
  L ":\n\t"                                                          \
  "prefetcht1 (%[pfc])\n\t"                                          \
  BITNET_GEMV2_BLOCK("(%[wc])", "(%[wc],%[s])")                      \
  "addq $32, %[wc]\n\t"                                              \
  "addq $128, %[xc]\n\t"                                             \
  "addq $64, %[pfc]\n\t"                                             \
  "decq %[cnt]\n\t"                                                  \
  "jnz " L "b\n\t"                                                   \
  "vpsraw $2, %%ymm1, %%ymm1\n\t"                                    \
  "vpsraw $2, %%ymm3, %%ymm3\n\t"                                    \
  "vpaddw %%ymm1, %%ymm0, %%ymm0\n\t"                                \
  "vpaddw %%ymm3, %%ymm2, %%ymm2\n\t"
#define BITNET_STR2(v) #v
#define BITNET_STR(v) BITNET_STR2(v)

// y[2t + r] = sum_k c(w[2t + r], k) * x[k] - xsum for t < ntiles; rows `stride` bytes apart from w;
// x is the zero-padded activation row.
void gemv2_tiles(const uint8_t* w, int64_t stride, const int8_t* x, int64_t ntiles, int32_t* y,
                 const Gemv2Params* p) {
  if (ntiles <= 0) return;
  const uint8_t* wc;
  const int8_t* xc;
  const uint8_t* pfc;
  int64_t cnt, nb;
  __asm__ volatile(
      "vpbroadcastd 44(%[p]), %%ymm14\n\t"
      "vpsllw $2, %%ymm14, %%ymm15\n"
      "2:\n\t"  // per tile of two rows
      "vpxor %%xmm4, %%xmm4, %%xmm4\n\t"
      "vpxor %%xmm5, %%xmm5, %%xmm5\n\t"
      "movq %[w], %[wc]\n\t"
      "movq %[x], %[xc]\n\t"
      // Rows are 0.25-3 KB, too short for the hardware prefetcher to ramp up on each; fetch the
      // bytes pf_dist ahead at the rate this tile consumes its own.
      "movq 48(%[p]), %[pfc]\n\t"
      "addq %[w], %[pfc]\n\t"
      "movq 32(%[p]), %[nb]\n"
      "3:\n\t"  // per 2 * BITNET_AVX2_WIDEN blocks; S (ymm0, ymm2) collects both halves
      "vpxor %%xmm0, %%xmm0, %%xmm0\n\t"
      "vpxor %%xmm2, %%xmm2, %%xmm2\n\t"
      BITNET_GEMV2_CHUNK("1")
      "testq %[nb], %[nb]\n\t"
      "jz 7f\n\t"
      BITNET_GEMV2_CHUNK("6")
      "7:\n\t"
      "vpmaddwd (%[p]), %%ymm0, %%ymm0\n\t"
      "vpmaddwd (%[p]), %%ymm2, %%ymm2\n\t"
      "vpaddd %%ymm0, %%ymm4, %%ymm4\n\t"
      "vpaddd %%ymm2, %%ymm5, %%ymm5\n\t"
      "testq %[nb], %[nb]\n\t"
      "jnz 3b\n\t"
      // ymm4 = row 0, ymm5 = row 1: two int32 sums, minus xsum, stored side by side
      "vphaddd %%ymm5, %%ymm4, %%ymm4\n\t"
      "vextracti128 $1, %%ymm4, %%xmm8\n\t"
      "vpaddd %%xmm8, %%xmm4, %%xmm4\n\t"
      "vphaddd %%xmm4, %%xmm4, %%xmm4\n\t"
      "vpbroadcastd 40(%[p]), %%xmm9\n\t"
      "vpsubd %%xmm9, %%xmm4, %%xmm4\n\t"
      "vmovq %%xmm4, (%[y])\n\t"
      "addq $8, %[y]\n\t"
      "leaq (%[w],%[s],2), %[w]\n\t"
      "decq %[nt]\n\t"
      "jnz 2b\n\t"
      "vzeroupper\n\t"
      : [w] "+r"(w), [y] "+r"(y), [nt] "+r"(ntiles), [wc] "=&r"(wc), [xc] "=&r"(xc), [pfc] "=&r"(pfc),
        [cnt] "=&r"(cnt), [nb] "=&r"(nb)
      : [s] "r"(stride), [x] "r"(x), [p] "r"(p)
      : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm8", "xmm9", "xmm10", "xmm11",
        "xmm12", "xmm13", "xmm14", "xmm15");
}
}  // namespace

int64_t gemv_rows_avx2_asm(const KernelArgs& a, int64_t r0, int64_t r1) {
  Gemv2Params p;
  std::fill(p.ones, p.ones + 16, int16_t{1});
  p.nblk = blocks_per_row(a.k);
  p.xsum = a.xsum[0];
  p.mask = 0x03030303;
  p.pf_dist = gemv_prefetch_bytes(a.k);
  const int64_t ntiles = (r1 - r0) / 2;
  gemv2_tiles(a.w + r0 * row_stride_bytes(a.k), row_stride_bytes(a.k), a.xp, ntiles, a.y + r0, &p);
  return r0 + 2 * ntiles;
}

}  // namespace bitnet

#endif  // x86-64 GCC/Clang

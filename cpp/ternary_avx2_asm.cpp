// ternary_avx2_asm.cpp: the AVX2 GEMV loop as GCC/Clang inline assembly.
//
// Compiled, with the same flags as ternary_avx2.cpp (-mavx2 -mfma), only for x86-64 with GCC or Clang
// when BITNET_INLINE_ASM is on (the default); rows_avx2 calls it for whole four-row tiles and falls back
// to the intrinsic tiles in ternary_avx2.cpp for the rest and for other builds. Same packed format,
// unpacking (one shift, four masks, fields at scale 1 and 4), maddubs and offset trick as there; only
// computes.
//
// Row order: a tile's four rows are a quarter of the row range apart (rows t, t + q, t + 2q, t + 3q of
// the range [r0, r0 + 4q)), so the loop reads four sequential streams at once. One core reads several
// interleaved streams from DRAM faster than one, and a GEMV whose tiles are adjacent rows is one stream:
// with cold weights it ran at the one-stream rate, well below what its hot loop could compute. The
// adjacent order is kept as KernelArgs::gemv_adjacent, the benchmark's baseline for this choice.
//
// The loop itself: each row's instructions as in ternary_avx2.cpp, the block's four activation vectors
// loaded once into registers and shared by the four rows (8 loads per 512 weights instead of 20 with
// vpmaddubsw reading them from memory for each row), all sixteen ymm registers assigned by hand, int32 row
// accumulators in memory (touched once per 8 blocks). 13 vector instructions per 128 weights and row, with
// four vector pipes and two multiply pipes, bound the hot GEMV below the multiply ceiling. The measurements
// behind each choice, with their command and CPU, are in docs/kernels.md, "What bounds the AVX2 kernels".
#include "ternary.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#include <algorithm>
#include <cstddef>

namespace bitnet {
namespace {

// Per call: constants the assembly reads at fixed offsets, and the four rows' int32 accumulators.
//
// Overflow: S (scale-1 fields) and T (scale-4 fields) are int16. Per block each lane of S gains two
// maddubs terms ([-1024, 1016]) and of T two scale-4 terms ([-4096, 4064]); after kChunk = 8 blocks
// S is in [-8192, 8128] and T in [-32768, 32512] (inside int16). Then T / 4 (exact: a sum of
// multiples of 4) is added to S ([-16384, 16256]) and S is widened with vpmaddwd(S, 1) into the int32
// accumulator, whose lanes stay below 2^29 for K <= kMaxK (ternary.h).
struct alignas(32) Gemv4Params {
  int16_t ones[16];   // the vpmaddwd widening constant, offset 0
  int64_t nblk;       // 128-weight blocks per row, offset 32
  int32_t xsum;       // sum of the activations, offset 40
  int32_t mask;       // 0x03 in every byte, offset 44
  const int8_t* x;    // the zero-padded activation row, offset 48
  int64_t wstep;      // bytes from one tile's first row to the next tile's, offset 56
  int64_t ystep;      // bytes from one tile's first output to the next tile's, offset 64
  int64_t unused[3];  // offsets 72-95
  int32_t acc[4][8];  // the four rows' int32 accumulators, offset 96 (32 bytes each)
};
static_assert(offsetof(Gemv4Params, nblk) == 32 && offsetof(Gemv4Params, xsum) == 40 &&
                  offsetof(Gemv4Params, mask) == 44 && offsetof(Gemv4Params, x) == 48 &&
                  offsetof(Gemv4Params, wstep) == 56 && offsetof(Gemv4Params, ystep) == 64 &&
                  offsetof(Gemv4Params, acc) == 96,
              "the assembly reads these offsets");

#define BITNET_STR2(v) #v
#define BITNET_STR(v) BITNET_STR2(v)
#define BITNET_GEMV_CHUNK 8  // blocks summed in int16 before T is folded into S (bound above)

// One block of one row: codes from memory W into S = ymmS (scale 1) and T = ymmT (scale 4). The block's four
// activation vectors are in ymm8-11 (loaded once per block for the four rows), ymm12 / ymm13 are the
// temporaries, ymm14 / ymm15 hold the 0x03 / 0x0C masks.
#define BITNET_GEMV4_ROW(W, S, T)            \
  "vmovdqu " W                               \
  ", %%ymm12\n\t"                            \
  "vpand %%ymm14, %%ymm12, %%ymm13\n\t"      \
  "vpmaddubsw %%ymm8, %%ymm13, %%ymm13\n\t"  \
  "vpaddw %%ymm13, %%ymm" S ", %%ymm" S      \
  "\n\t"                                     \
  "vpand %%ymm15, %%ymm12, %%ymm13\n\t"      \
  "vpmaddubsw %%ymm9, %%ymm13, %%ymm13\n\t"  \
  "vpaddw %%ymm13, %%ymm" T ", %%ymm" T      \
  "\n\t"                                     \
  "vpsrlw $4, %%ymm12, %%ymm12\n\t"          \
  "vpand %%ymm14, %%ymm12, %%ymm13\n\t"      \
  "vpmaddubsw %%ymm10, %%ymm13, %%ymm13\n\t" \
  "vpaddw %%ymm13, %%ymm" S ", %%ymm" S      \
  "\n\t"                                     \
  "vpand %%ymm15, %%ymm12, %%ymm12\n\t"      \
  "vpmaddubsw %%ymm11, %%ymm12, %%ymm12\n\t" \
  "vpaddw %%ymm12, %%ymm" T ", %%ymm" T "\n\t"
// After a chunk: S += T / 4, then S widened and added into the row's int32 accumulator at OFF(p).
#define BITNET_GEMV4_WIDEN(S, T, OFF)         \
  "vpsraw $2, %%ymm" T ", %%ymm" T            \
  "\n\t"                                      \
  "vpaddw %%ymm" T ", %%ymm" S ", %%ymm" S    \
  "\n\t"                                      \
  "vpmaddwd (%[p]), %%ymm" S ", %%ymm" S      \
  "\n\t"                                      \
  "vpaddd " OFF "(%[p]), %%ymm" S ", %%ymm" S \
  "\n\t"                                      \
  "vmovdqa %%ymm" S ", " OFF "(%[p])\n\t"

// Tile t < ntiles reads the four rows starting at w + t * p->wstep + i * rs bytes (i < 4) and writes
// their sums minus xsum to the int32 at y + t * p->ystep + i * ys bytes.
void gemv4_tiles(const uint8_t* w, int64_t rs, int64_t ntiles, int32_t* y, int64_t ys, Gemv4Params* p) {
  if (ntiles <= 0 || p->nblk <= 0) return;
  const uint8_t* wc;
  const uint8_t* wc3;
  const int8_t* xc;
  int64_t cnt, nb;
  __asm__ volatile(
      "vpbroadcastd 44(%[p]), %%ymm14\n\t"
      "vpsllw $2, %%ymm14, %%ymm15\n"
      "2:\n\t"  // per tile of four rows
      "vpxor %%xmm0, %%xmm0, %%xmm0\n\t"
      "vmovdqa %%ymm0, 96(%[p])\n\t"
      "vmovdqa %%ymm0, 128(%[p])\n\t"
      "vmovdqa %%ymm0, 160(%[p])\n\t"
      "vmovdqa %%ymm0, 192(%[p])\n\t"
      "movq %[w], %[wc]\n\t"
      "leaq (%[rs],%[rs],2), %[wc3]\n\t"
      "addq %[w], %[wc3]\n\t"
      "movq 48(%[p]), %[xc]\n\t"
      "movq 32(%[p]), %[nb]\n"
      "3:\n\t"  // per chunk of up to BITNET_GEMV_CHUNK blocks
      "vpxor %%xmm0, %%xmm0, %%xmm0\n\t"
      "vpxor %%xmm1, %%xmm1, %%xmm1\n\t"
      "vpxor %%xmm2, %%xmm2, %%xmm2\n\t"
      "vpxor %%xmm3, %%xmm3, %%xmm3\n\t"
      "vpxor %%xmm4, %%xmm4, %%xmm4\n\t"
      "vpxor %%xmm5, %%xmm5, %%xmm5\n\t"
      "vpxor %%xmm6, %%xmm6, %%xmm6\n\t"
      "vpxor %%xmm7, %%xmm7, %%xmm7\n\t"
      "movq $" BITNET_STR(BITNET_GEMV_CHUNK) ", %[cnt]\n\t"
      "cmpq %[cnt], %[nb]\n\t"
      "cmovlq %[nb], %[cnt]\n\t"
      "subq %[cnt], %[nb]\n\t"
      ".p2align 5\n"
      "1:\n\t"  // per block: the four activation vectors, then the four rows
      "vmovdqu (%[xc]), %%ymm8\n\t"
      "vmovdqu 32(%[xc]), %%ymm9\n\t"
      "vmovdqu 64(%[xc]), %%ymm10\n\t"
      "vmovdqu 96(%[xc]), %%ymm11\n\t"
      BITNET_GEMV4_ROW("(%[wc])", "0", "1")
      BITNET_GEMV4_ROW("(%[wc],%[rs])", "2", "3")
      BITNET_GEMV4_ROW("(%[wc],%[rs],2)", "4", "5")
      BITNET_GEMV4_ROW("(%[wc3])", "6", "7")
      "addq $32, %[wc]\n\t"
      "addq $32, %[wc3]\n\t"
      "addq $128, %[xc]\n\t"
      "decq %[cnt]\n\t"
      "jnz 1b\n\t"
      BITNET_GEMV4_WIDEN("0", "1", "96")
      BITNET_GEMV4_WIDEN("2", "3", "128")
      BITNET_GEMV4_WIDEN("4", "5", "160")
      BITNET_GEMV4_WIDEN("6", "7", "192")
      "testq %[nb], %[nb]\n\t"
      "jnz 3b\n\t"
      // the four rows' sums, minus xsum, to y[0], y[ys], y[2 ys], y[3 ys]
      "vphaddd %%ymm2, %%ymm0, %%ymm0\n\t"
      "vphaddd %%ymm6, %%ymm4, %%ymm4\n\t"
      "vphaddd %%ymm4, %%ymm0, %%ymm0\n\t"
      "vextracti128 $1, %%ymm0, %%xmm1\n\t"
      "vpaddd %%xmm1, %%xmm0, %%xmm0\n\t"
      "vpbroadcastd 40(%[p]), %%xmm1\n\t"
      "vpsubd %%xmm1, %%xmm0, %%xmm0\n\t"
      "vmovd %%xmm0, (%[y])\n\t"
      "vpextrd $1, %%xmm0, (%[y],%[ys])\n\t"
      "vpextrd $2, %%xmm0, (%[y],%[ys],2)\n\t"
      "leaq (%[ys],%[ys],2), %[cnt]\n\t"
      "addq %[y], %[cnt]\n\t"
      "vpextrd $3, %%xmm0, (%[cnt])\n\t"
      "addq 64(%[p]), %[y]\n\t"
      "addq 56(%[p]), %[w]\n\t"
      "decq %[nt]\n\t"
      "jnz 2b\n\t"
      "vzeroupper\n\t"
      : [w] "+r"(w), [y] "+r"(y), [nt] "+r"(ntiles), [wc] "=&r"(wc), [wc3] "=&r"(wc3), [xc] "=&r"(xc),
        [cnt] "=&r"(cnt), [nb] "=&r"(nb)
      : [rs] "r"(rs), [ys] "r"(ys), [p] "r"(p)
      : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
        "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
}
}  // namespace

int64_t gemv_rows_avx2_asm(const KernelArgs& a, int64_t r0, int64_t r1) {
  Gemv4Params p;
  std::fill(p.ones, p.ones + 16, int16_t{1});
  p.nblk = blocks_per_row(a.k);
  p.xsum = a.xsum[0];
  p.mask = 0x03030303;
  std::fill(p.unused, p.unused + 3, int64_t{0});
  p.x = a.xp;
  const int64_t stride = row_stride_bytes(a.k);
  const int64_t q = (r1 - r0) / 4;  // tiles
  constexpr int64_t kY = sizeof(int32_t);
  if (a.gemv_adjacent) {  // tile t: rows r0 + 4t .. r0 + 4t + 3 (one read stream; the benchmark's baseline)
    p.wstep = 4 * stride;
    p.ystep = 4 * kY;
    gemv4_tiles(a.w + r0 * stride, stride, q, a.y + r0, kY, &p);
  } else {  // tile t: rows r0 + t + i q (four read streams)
    p.wstep = stride;
    p.ystep = kY;
    gemv4_tiles(a.w + r0 * stride, q * stride, q, a.y + r0, q * kY, &p);
  }
  return r0 + 4 * q;
}

}  // namespace bitnet

#endif  // x86-64 GCC/Clang

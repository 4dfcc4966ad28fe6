// mac_loop_avx2_asm.cpp: the loop mac_peak (mac_peak.cpp) times for the avx2 backend's multiply ceiling.
//
// Twelve independent vpmaddubsw ymm per iteration on register operands: no loads, no dependency between
// them, so the loop runs at the multiply pipes' throughput. Benchmark only. Compiled like
// ../ternary_avx2_asm.cpp (same flags, x86-64 GCC/Clang, BITNET_INLINE_ASM on).
#include "bench.h"

#if defined(__x86_64__) && defined(__GNUC__)

namespace bitnet {

// In assembly so the compiler cannot merge or fold the chains (it merges identical intrinsic ones).
// iters >= 1.
void mac_loop_avx2(int64_t iters) {
  int64_t n = iters;
  __asm__ volatile(
      "vpcmpeqb %%ymm12, %%ymm12, %%ymm12\n\t"
      "vpabsb %%ymm12, %%ymm13\n\t"
      ".p2align 5\n"
      "1:\n\t"
      "vpmaddubsw %%ymm12, %%ymm13, %%ymm0\n\t"
      "vpmaddubsw %%ymm12, %%ymm13, %%ymm1\n\t"
      "vpmaddubsw %%ymm12, %%ymm13, %%ymm2\n\t"
      "vpmaddubsw %%ymm12, %%ymm13, %%ymm3\n\t"
      "vpmaddubsw %%ymm12, %%ymm13, %%ymm4\n\t"
      "vpmaddubsw %%ymm12, %%ymm13, %%ymm5\n\t"
      "vpmaddubsw %%ymm12, %%ymm13, %%ymm6\n\t"
      "vpmaddubsw %%ymm12, %%ymm13, %%ymm7\n\t"
      "vpmaddubsw %%ymm12, %%ymm13, %%ymm8\n\t"
      "vpmaddubsw %%ymm12, %%ymm13, %%ymm9\n\t"
      "vpmaddubsw %%ymm12, %%ymm13, %%ymm10\n\t"
      "vpmaddubsw %%ymm12, %%ymm13, %%ymm11\n\t"
      "decq %[n]\n\t"
      "jnz 1b\n\t"
      "vzeroupper\n\t"
      : [n] "+r"(n)
      :
      : "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12",
        "xmm13");
}

}  // namespace bitnet

#endif  // x86-64 GCC/Clang

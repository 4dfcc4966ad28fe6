// mac_loop_avx512_asm.cpp: the loop mac_peak (mac_peak.cpp) times for the avx512vnni backend's multiply
// ceiling.
//
// Twelve independent vpdpbusd zmm per iteration on register operands: no loads, no dependency between
// them, so the loop runs at the multiply pipes' throughput. Benchmark only. Compiled like
// ../ternary_avx512_asm.cpp (same flags, x86-64 GCC/Clang, BITNET_INLINE_ASM on).
#include "bench.h"

#if defined(__x86_64__) && defined(__GNUC__)

namespace bitnet {

#define BITNET_ZERO(i) "vpxord %%xmm" #i ", %%xmm" #i ", %%xmm" #i "\n\t"

// In assembly so the compiler cannot merge or fold the chains (it merges identical intrinsic ones).
// iters >= 1.
void mac_loop_avx512vnni(int64_t iters) {
  int64_t n = iters;
  __asm__ volatile(
      "vpternlogd $0xff, %%zmm12, %%zmm12, %%zmm12\n\t"
      "vpabsb %%zmm12, %%zmm13\n\t"
      BITNET_ZERO(0) BITNET_ZERO(1) BITNET_ZERO(2) BITNET_ZERO(3) BITNET_ZERO(4) BITNET_ZERO(5)
      BITNET_ZERO(6) BITNET_ZERO(7) BITNET_ZERO(8) BITNET_ZERO(9) BITNET_ZERO(10) BITNET_ZERO(11)
      ".p2align 5\n"
      "1:\n\t"
      "vpdpbusd %%zmm12, %%zmm13, %%zmm0\n\t" "vpdpbusd %%zmm12, %%zmm13, %%zmm1\n\t"
      "vpdpbusd %%zmm12, %%zmm13, %%zmm2\n\t" "vpdpbusd %%zmm12, %%zmm13, %%zmm3\n\t"
      "vpdpbusd %%zmm12, %%zmm13, %%zmm4\n\t" "vpdpbusd %%zmm12, %%zmm13, %%zmm5\n\t"
      "vpdpbusd %%zmm12, %%zmm13, %%zmm6\n\t" "vpdpbusd %%zmm12, %%zmm13, %%zmm7\n\t"
      "vpdpbusd %%zmm12, %%zmm13, %%zmm8\n\t" "vpdpbusd %%zmm12, %%zmm13, %%zmm9\n\t"
      "vpdpbusd %%zmm12, %%zmm13, %%zmm10\n\t" "vpdpbusd %%zmm12, %%zmm13, %%zmm11\n\t"
      "decq %[n]\n\t"
      "jnz 1b\n\t"
      "vzeroupper\n\t"
      : [n] "+r"(n)
      :
      : "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11",
        "xmm12", "xmm13");
}

}  // namespace bitnet

#endif  // x86-64 GCC/Clang

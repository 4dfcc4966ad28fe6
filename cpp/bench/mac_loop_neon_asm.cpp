// mac_loop_neon_asm.cpp: the loop mac_peak (mac_peak.cpp) times for the neon backend's multiply ceiling.
//
// Twelve independent smlal (8 int8 x int8 products each) per iteration on register operands: no loads, no
// dependency between them, so the loop runs at the multiply pipes' throughput. Benchmark only. AArch64
// GCC/Clang with BITNET_INLINE_ASM on, no flags; the dotprod loop is mac_loop_neon_dotprod_asm.cpp.
#include "bench.h"

#if defined(__aarch64__) && defined(__GNUC__)

namespace bitnet {

// In assembly so the compiler cannot merge or fold the chains. iters >= 1.
void mac_loop_neon(int64_t iters) {
  int64_t n = iters;
  __asm__ volatile(
      "movi v12.16b, #3\n\t"
      "movi v13.16b, #5\n\t"
      ".p2align 5\n"
      "1:\n\t"
      "smlal v0.8h, v12.8b, v13.8b\n\t"
      "smlal v1.8h, v12.8b, v13.8b\n\t"
      "smlal v2.8h, v12.8b, v13.8b\n\t"
      "smlal v3.8h, v12.8b, v13.8b\n\t"
      "smlal v4.8h, v12.8b, v13.8b\n\t"
      "smlal v5.8h, v12.8b, v13.8b\n\t"
      "smlal v6.8h, v12.8b, v13.8b\n\t"
      "smlal v7.8h, v12.8b, v13.8b\n\t"
      "smlal v8.8h, v12.8b, v13.8b\n\t"
      "smlal v9.8h, v12.8b, v13.8b\n\t"
      "smlal v10.8h, v12.8b, v13.8b\n\t"
      "smlal v11.8h, v12.8b, v13.8b\n\t"
      "subs %[n], %[n], #1\n\t"
      "b.ne 1b\n\t"
      : [n] "+r"(n)
      :
      : "cc", "v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9", "v10", "v11", "v12", "v13");
}
}  // namespace bitnet

#endif  // AArch64 GCC/Clang

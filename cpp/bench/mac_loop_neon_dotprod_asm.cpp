// mac_loop_neon_dotprod_asm.cpp: the loop mac_peak (mac_peak.cpp) times for the dotprod backend's multiply
// ceiling.
//
// Twelve independent sdot (16 int8 x int8 products each) per iteration on register operands: no loads, no
// dependency between them, so the loop runs at the multiply pipes' throughput. Benchmark only. Compiled with
// -march=armv8.2-a+dotprod alone, like ../ternary_neon_dotprod.cpp; mac_peak calls it only on a CPU that has
// the dot product.
#include "bench.h"

#if defined(__aarch64__) && defined(__GNUC__) && defined(__ARM_FEATURE_DOTPROD)

namespace bitnet {

// In assembly so the compiler cannot merge or fold the chains. iters >= 1.
void mac_loop_neon_dotprod(int64_t iters) {
  int64_t n = iters;
  __asm__ volatile(
      "movi v12.16b, #3\n\t"
      "movi v13.16b, #5\n\t"
      ".p2align 5\n"
      "1:\n\t"
      "sdot v0.4s, v12.16b, v13.16b\n\t"
      "sdot v1.4s, v12.16b, v13.16b\n\t"
      "sdot v2.4s, v12.16b, v13.16b\n\t"
      "sdot v3.4s, v12.16b, v13.16b\n\t"
      "sdot v4.4s, v12.16b, v13.16b\n\t"
      "sdot v5.4s, v12.16b, v13.16b\n\t"
      "sdot v6.4s, v12.16b, v13.16b\n\t"
      "sdot v7.4s, v12.16b, v13.16b\n\t"
      "sdot v8.4s, v12.16b, v13.16b\n\t"
      "sdot v9.4s, v12.16b, v13.16b\n\t"
      "sdot v10.4s, v12.16b, v13.16b\n\t"
      "sdot v11.4s, v12.16b, v13.16b\n\t"
      "subs %[n], %[n], #1\n\t"
      "b.ne 1b\n\t"
      : [n] "+r"(n)
      :
      : "cc", "v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9", "v10", "v11", "v12", "v13");
}

}  // namespace bitnet

#endif  // AArch64 GCC/Clang with the dot product

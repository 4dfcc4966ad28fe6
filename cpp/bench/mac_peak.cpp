// mac_peak.cpp: the multiply ceiling of one core, for tools/bench_kernels.py's "of peak" column.
//
// Times one of the mac_loop_*_asm.cpp loops (twelve independent multiply instructions per iteration,
// no loads) and turns it into multiply-adds per second. Compiled at the baseline instruction set, like
// dispatch.cpp: it calls a loop only for a backend the CPU supports. The loops exist only where the
// kernels' own loops are inline assembly (BITNET_HAVE_AVX2_ASM / BITNET_HAVE_AVX512_ASM); elsewhere 0.
#include <chrono>

#include "bench.h"

namespace bitnet {

double mac_peak(Backend b, int64_t iters) {
  if (!backend_supported(b) || iters <= 0) return 0.0;
  void (*loop)(int64_t) = nullptr;
  double macs_per_iter = 0;  // twelve instructions of 64 (zmm) or 32 (ymm) byte products
#if defined(BITNET_HAVE_AVX512_ASM)
  if (b == Backend::kAvx512Vnni) {
    loop = mac_loop_avx512vnni;
    macs_per_iter = 12 * 64;
  }
#endif
#if defined(BITNET_HAVE_AVX2_ASM)
  if (b == Backend::kAvx2) {
    loop = mac_loop_avx2;
    macs_per_iter = 12 * 32;
  }
#endif
  if (loop == nullptr) return 0.0;
  const auto t0 = std::chrono::steady_clock::now();
  loop(iters);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return s > 0 ? macs_per_iter * static_cast<double>(iters) / s : 0.0;
}

}  // namespace bitnet

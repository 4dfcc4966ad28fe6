// mac_peak.cpp: the multiply ceiling of one core, for tools/bench/bench_kernels.py's "of peak" column.
//
// Times one of the mac_loop_*_asm.cpp loops (twelve independent multiply instructions per iteration,
// no loads) and turns it into multiply-adds per second of the calling thread's CPU time. Compiled at the
// baseline instruction set, like dispatch.cpp: it calls a loop only for a backend the CPU supports. The loops exist
// only where the kernels' own loops are inline assembly (BITNET_HAVE_AVX2_ASM / BITNET_HAVE_AVX512_ASM), and on 64-bit
// ARM with GCC/Clang (BITNET_HAVE_NEON_ASM / BITNET_HAVE_NEON_DOTPROD_ASM; its kernels are intrinsics); elsewhere 0.
#include <chrono>

#include "bench.h"

#if defined(__unix__) || defined(__APPLE__)
#include <time.h>
#endif

namespace bitnet {
namespace {

// Seconds of this thread's CPU time where the platform has it (time slices lost to other processes on a
// shared machine do not count against the ceiling), wall time otherwise.
double thread_seconds() {
#if defined(CLOCK_THREAD_CPUTIME_ID)
  timespec ts;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0) return static_cast<double>(ts.tv_sec) + ts.tv_nsec * 1e-9;
#endif
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

double mac_peak(Backend b, int64_t iters) {
  if (!backend_supported(b) || iters <= 0) return 0.0;
  void (*loop)(int64_t) = nullptr;
  double macs_per_iter = 0;  // twelve instructions of 64 (zmm), 32 (ymm), 16 (sdot) or 8 (smlal) byte products
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
#if defined(BITNET_HAVE_NEON_ASM)
  if (b == Backend::kNeon) {  // twelve smlal of 8 products
    loop = mac_loop_neon;
    macs_per_iter = 12 * 8;
  }
#endif
#if defined(BITNET_HAVE_NEON_DOTPROD_ASM)
  if (b == Backend::kNeonDotprod) {  // twelve sdot of 16 products
    loop = mac_loop_neon_dotprod;
    macs_per_iter = 12 * 16;
  }
#endif
  if (loop == nullptr) return 0.0;
  const double t0 = thread_seconds();
  loop(iters);
  const double s = thread_seconds() - t0;
  return s > 0 ? macs_per_iter * static_cast<double>(iters) / s : 0.0;
}

}  // namespace bitnet

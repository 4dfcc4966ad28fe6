// int8_matmul.cpp: the portable int8 x int8 row kernel (the oracle) and the dispatcher of int8_matmul.h.
//
// Compiled at the baseline instruction set; it calls int8_rows_avx2 / int8_rows_avx512vnni only after checking the
// CPU.
#include "int8_matmul.h"

#include <algorithm>
#include <vector>

#include "threadpool.h"

namespace bitnet {

void int8_rows_ref(const int8_t* x, const int8_t* w, int32_t* y, int64_t m, int64_t n, int64_t k, int64_t n0,
                   int64_t n1) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t r = n0; r < n1; ++r) {
      const int8_t* xr = x + i * k;
      const int8_t* wr = w + r * k;
      int32_t acc = 0;
      for (int64_t c = 0; c < k; ++c) acc += int32_t{xr[c]} * int32_t{wr[c]};
      y[i * n + r] = acc;
    }
}

namespace {

// Below this many multiply-adds a call stays on the calling thread (as dispatch.cpp's kMinParallelWork).
constexpr int64_t kMinParallelWork = int64_t{1} << 21;
constexpr int64_t kRowsPerTask = 256;  // 256 rows of a 2560-wide head: 640 KB, a few hundred microseconds

struct Int8Job {
  const int8_t* x;
  const int16_t* xw;  // x widened to int16 (the AVX2 kernel)
  const uint8_t* xu;  // x + 128, rows xstride apart (the AVX-512 GEMM)
  int64_t xstride;
  const int8_t* w;
  int32_t* y;
  int64_t m, n, k;
  bool avx2, avx512;
};

void run_int8_task(void* ctx, int64_t t) {
  const Int8Job& j = *static_cast<const Int8Job*>(ctx);
  const int64_t n0 = t * kRowsPerTask, n1 = std::min(j.n, n0 + kRowsPerTask);
#if defined(BITNET_HAVE_AVX512_KERNEL)
  if (j.avx512) {
    int8_rows_avx512vnni(j.xu, j.xstride, j.w, j.y, j.m, j.n, j.k, n0, n1);
    return;
  }
#endif
#if defined(BITNET_HAVE_AVX2_KERNEL)
  if (j.avx2) {
    int8_rows_avx2(j.xw, j.w, j.y, j.m, j.n, j.k, n0, n1);
    return;
  }
#endif
  int8_rows_ref(j.x, j.w, j.y, j.m, j.n, j.k, n0, n1);
}

}  // namespace

void int8_matmul(const int8_t* x, const int8_t* w, int32_t* y, int64_t m, int64_t n, int64_t k, Backend backend,
                 int threads) {
  if (m == 0 || n == 0) return;
  thread_local std::vector<int16_t> widened;
  thread_local std::vector<uint8_t> shifted;
  Int8Job job{x, nullptr, nullptr, 0, w, y, m, n, k, false, false};
  job.avx512 = m > 1 && backend == Backend::kAvx512Vnni && cpu_has_avx512vnni();
  job.avx2 = !job.avx512 && backend != Backend::kScalar && cpu_has_avx2();
  if (job.avx512) {  // x + 128 as unsigned bytes, each row padded to a multiple of 64 (the kernel's loads)
    job.xstride = (k + 63) / 64 * 64;
    shifted.assign(static_cast<size_t>(m * job.xstride), 0);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t c = 0; c < k; ++c) shifted[i * job.xstride + c] = static_cast<uint8_t>(x[i * k + c] ^ 0x80);
    job.xu = shifted.data();
  }
  if (job.avx2) {
    widened.assign(x, x + m * k);  // int8 -> int16, once per call
    job.xw = widened.data();
  }
  if (threads <= 0) threads = default_threads();
  const int64_t tasks = (n + kRowsPerTask - 1) / kRowsPerTask;
  if (threads == 1 || tasks == 1 || m * n * std::max<int64_t>(k, 1) < kMinParallelWork) {
    for (int64_t t = 0; t < tasks; ++t) run_int8_task(&job, t);
    return;
  }
  parallel_for(threads, tasks, run_int8_task, &job);
}

}  // namespace bitnet

// dispatch.cpp: picks a kernel at run time, prepares activations, splits rows across threads; and
// quant_matmul, the fused BitLinear core (float activations in, scaled float outputs out).
//
// Compiled at the baseline instruction set (no -mavx2, no -march), so it is safe to run on any CPU; it
// only calls into ternary_avx2.cpp / ternary_avx512.cpp / ternary_neon_dotprod.cpp (and their 1.6-bit
// twins) after checking the CPU once. It does not check user arguments (bindings.cpp does) and does no
// arithmetic beyond the activation row sums.
//
// Threads: the default is 1. Decode (M = 1) at the sizes this project runs is a few to a few hundred
// microseconds per call, the machine is shared with torch's own intra-op threads, and a single
// thread gives stable timings. Callers that want more set it (set_default_threads, or the
// `threads` argument). Even then a call is split only when it has at least kMinParallelWork
// multiply-adds, so small decode shapes never pay a wake-up.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "ternary.h"
#include "ternary5.h"
#include "threadpool.h"

#if defined(BITNET_HAVE_NEON_DOTPROD_KERNEL) && defined(__linux__)
#include <sys/auxv.h>  // getauxval(AT_HWCAP)
#elif defined(BITNET_HAVE_NEON_DOTPROD_KERNEL) && defined(__APPLE__)
#include <sys/sysctl.h>  // sysctlbyname
#endif

namespace bitnet {

namespace {

// Below this many multiply-adds (M*N*K) a call runs on the calling thread: at ~100-200 G MAC/s
// this is ~10-20 us of work, comfortably more than waking a worker costs.
constexpr int64_t kMinParallelWork = int64_t{1} << 21;
constexpr int kMaxThreads = 1024;

std::atomic<int> g_default_threads{1};

bool env_force_scalar() {
  const char* v = std::getenv("BITNET_REF_FORCE_SCALAR");
  return v != nullptr && v[0] != '\0' && std::strcmp(v, "0") != 0;
}

int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

// Per-thread scratch for the padded activations and their row sums, reused across calls so the
// hot path does not allocate. Kept 64-byte aligned.
struct Scratch {
  std::vector<int8_t> bytes;
  int8_t* get(size_t n) {
    if (bytes.size() < n + 64) bytes.resize(n + 64);
    auto p = reinterpret_cast<uintptr_t>(bytes.data());
    return reinterpret_cast<int8_t*>((p + 63) & ~uintptr_t{63});
  }
};

struct Job {
  RowKernel kernel;
  const KernelArgs* args;
  int64_t rows_per_task;
};

void run_task(void* ctx, int64_t t) {
  const Job& j = *static_cast<const Job*>(ctx);
  const int64_t n0 = t * j.rows_per_task;
  const int64_t n1 = std::min(j.args->n, n0 + j.rows_per_task);
  j.kernel(*j.args, n0, n1);
}

}  // namespace

const char* backend_name(Backend b) {
  switch (b) {
    case Backend::kAvx512Vnni:
      return "avx512vnni";
    case Backend::kAvx2:
      return "avx2";
    case Backend::kScalar:
      return "scalar";
    case Backend::kNeon:
      return "neon";
    case Backend::kNeonDotprod:
      return "dotprod";
  }
  return "unknown";
}

bool cpu_has_avx2() {
#if defined(BITNET_HAVE_AVX2_KERNEL) && (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

bool cpu_has_avx512vnni() {
#if defined(BITNET_HAVE_AVX512_KERNEL) && (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  return ok;
#else
  return false;
#endif
}

bool cpu_has_neon() {
#if defined(BITNET_HAVE_NEON_KERNEL) && (defined(__aarch64__) || defined(_M_ARM64))
  return true;  // Advanced SIMD is part of every AArch64 CPU the ABI targets
#else
  return false;
#endif
}

bool cpu_has_neon_dotprod() {
#if defined(BITNET_HAVE_NEON_DOTPROD_KERNEL) && defined(__aarch64__) && defined(__linux__)
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)  // linux/arch/arm64/include/uapi/asm/hwcap.h
#endif
  static const bool ok = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
  return ok;
#elif defined(BITNET_HAVE_NEON_DOTPROD_KERNEL) && defined(__aarch64__) && defined(__APPLE__)
  static const bool ok = [] {
    // FEAT_DotProd from macOS 12; the older name on macOS 11. Every Apple M-series core has it.
    for (const char* name : {"hw.optional.arm.FEAT_DotProd", "hw.optional.armv8_2_dotprod"}) {
      int v = 0;
      size_t len = sizeof v;
      if (sysctlbyname(name, &v, &len, nullptr, 0) == 0) return v != 0;
    }
    return false;
  }();
  return ok;
#else
  return false;  // not built, or an OS whose CPU flags this file does not read (Windows, the BSDs)
#endif
}

bool backend_supported(Backend b) {
  switch (b) {
    case Backend::kScalar:
      return true;
    case Backend::kAvx2:
      return cpu_has_avx2();
    case Backend::kAvx512Vnni:
      return cpu_has_avx512vnni();
    case Backend::kNeon:
      return cpu_has_neon();
    case Backend::kNeonDotprod:
      return cpu_has_neon_dotprod();
  }
  return false;
}

Backend default_backend() {
  static const Backend b = [] {
    if (env_force_scalar()) return Backend::kScalar;
    if (cpu_has_avx512vnni()) return Backend::kAvx512Vnni;
    if (cpu_has_avx2()) return Backend::kAvx2;
    if (cpu_has_neon_dotprod()) return Backend::kNeonDotprod;
    if (cpu_has_neon()) return Backend::kNeon;
    return Backend::kScalar;
  }();
  return b;
}

void set_default_threads(int threads) { g_default_threads.store(std::clamp(threads, 1, kMaxThreads)); }
int default_threads() { return g_default_threads.load(); }
int hardware_threads() { return std::max(1u, std::thread::hardware_concurrency()); }

void permute_x_avx512(const int8_t* x, int64_t k, int8_t* out) {
  const int64_t kp = round_up(k, 256);
  std::memset(out, 0, static_cast<size_t>(kp));
  for (int64_t q = 0; q < kp; q += 256)
    for (int p = 0; p < 4; ++p)
      for (int half = 0; half < 2; ++half) {
        const int64_t src = q + half * 128 + p * 32;  // 32 activations -> one half of segment p
        if (src < k)
          std::memcpy(out + q + p * 64 + half * 32, x + src, static_cast<size_t>(std::min<int64_t>(32, k - src)));
      }
}

namespace {

// Fills a.xp / a.xp_stride / a.xsum from a.x: each activation row zero-padded to `pad` (padding weights
// are zero weights, so padded x must be 0), permuted for the AVX-512 kernel if `avx512`, plus its row
// sum for the offset trick. O(M*K): small next to the O(N*K) weight traffic. Uses this thread's scratch.
void prepare_activations(KernelArgs& a, int64_t pad, bool avx512) {
  thread_local Scratch scratch;
  const int64_t kp = round_up(std::max<int64_t>(a.k, 1), pad);
  // Rows of xp are 128 bytes longer than needed so that the activation rows of a GEMM tile do
  // not all land in the same L1 sets when K is a multiple of 4096 (4K aliasing).
  const int64_t xstride = round_up(kp, 64) + 128;
  const size_t xbytes = static_cast<size_t>(a.m * xstride);
  int8_t* buf = scratch.get(xbytes + static_cast<size_t>(a.m) * sizeof(int32_t));
  int32_t* xsum = reinterpret_cast<int32_t*>(buf + xbytes);  // xbytes is a multiple of 64
  for (int64_t i = 0; i < a.m; ++i) {
    const int8_t* src = a.x + i * a.k;
    int8_t* dst = buf + i * xstride;
    if (avx512) {
      permute_x_avx512(src, a.k, dst);
    } else {
      std::memcpy(dst, src, static_cast<size_t>(a.k));
      std::memset(dst + a.k, 0, static_cast<size_t>(kp - a.k));
    }
    int32_t s = 0;
    for (int64_t j = 0; j < a.k; ++j) s += src[j];
    xsum[i] = s;
  }
  a.xp = buf;
  a.xp_stride = xstride;
  a.xsum = xsum;
}

// Runs kernel over all output rows of a, split across threads when the call is large enough.
void run_rows(RowKernel kernel, const KernelArgs& a, int threads) {
  if (threads <= 0) threads = default_threads();
  threads = std::min(threads, kMaxThreads);
  const int64_t work = a.m * a.n * std::max<int64_t>(a.k, 1);
  if (threads == 1 || work < kMinParallelWork || a.n < 8) {
    kernel(a, 0, a.n);
    return;
  }
  // A few tasks per thread so a thread slowed by a neighbour on a shared machine does not hold
  // up the call; rows per task a multiple of 4 to keep the kernels' row tiles whole.
  int64_t rows = std::max<int64_t>(4, a.n / (int64_t{threads} * 4));
  rows = round_up(rows, 4);
  Job job{kernel, &a, rows};
  parallel_for(threads, (a.n + rows - 1) / rows, run_task, &job);
}

KernelArgs make_args(const int8_t* x, const uint8_t* w, int32_t* y, int64_t m, int64_t n, int64_t k) {
  KernelArgs a;
  a.x = x;
  a.w = w;
  a.y = y;
  a.m = m;
  a.n = n;
  a.k = k;
  return a;
}

}  // namespace

void matmul(const int8_t* x, const uint8_t* w, int32_t* y, int64_t m, int64_t n, int64_t k, Backend backend,
            int threads, bool gemv_adjacent) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // empty sums; the kernels assume at least one block per row
    std::fill(y, y + m * n, 0);
    return;
  }
  if (!backend_supported(backend)) backend = Backend::kScalar;  // callers check; stay safe anyway
  KernelArgs a = make_args(x, w, y, m, n, k);
  a.gemv_adjacent = gemv_adjacent;
  RowKernel kernel = rows_ref;
  if (backend != Backend::kScalar) {
    prepare_activations(a, backend == Backend::kAvx512Vnni ? 256 : 128, backend == Backend::kAvx512Vnni);
#if defined(BITNET_HAVE_AVX512_KERNEL)
    if (backend == Backend::kAvx512Vnni) kernel = rows_avx512vnni;
#endif
#if defined(BITNET_HAVE_AVX2_KERNEL)
    if (backend == Backend::kAvx2) kernel = rows_avx2;
#endif
#if defined(BITNET_HAVE_NEON_KERNEL)
    if (backend == Backend::kNeon) kernel = rows_neon;
#endif
#if defined(BITNET_HAVE_NEON_DOTPROD_KERNEL)
    if (backend == Backend::kNeonDotprod) kernel = rows_neon_dotprod;
#endif
  }
  run_rows(kernel, a, threads);
}

void matmul5(const int8_t* x, const uint8_t* w, int32_t* y, int64_t m, int64_t n, int64_t k, Backend backend,
             int threads) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    std::fill(y, y + m * n, 0);
    return;
  }
  KernelArgs a = make_args(x, w, y, m, n, k);
  RowKernel kernel = rows5_ref;
  (void)backend;  // unused in builds with no SIMD kernel for this format
#if defined(BITNET_HAVE_AVX2_KERNEL)
  // An AVX-512 CPU runs the AVX2 kernel (cpu_has_avx2 is checked either way).
  if (backend != Backend::kScalar && backend_supported(backend) && cpu_has_avx2()) {
    prepare_activations(a, kT5BlockWeights, false);
    kernel = rows5_avx2;
  }
#endif
#if defined(BITNET_HAVE_NEON_KERNEL)
  if (backend == Backend::kNeon && backend_supported(backend)) {
    prepare_activations(a, kT5BlockWeights, false);
    kernel = rows5_neon;
  }
#endif
#if defined(BITNET_HAVE_NEON_DOTPROD_KERNEL)
  if (backend == Backend::kNeonDotprod && backend_supported(backend)) {
    prepare_activations(a, kT5BlockWeights, false);
    kernel = rows5_neon_dotprod;
  }
#endif
  run_rows(kernel, a, threads);
}

int64_t quant_matmul(const float* x, const uint8_t* w, float* y, int64_t m, int64_t n, int64_t k, float beta,
                     Backend backend, int threads, PackedFormat format) {
  // Per-thread scratch, reused across calls: decode calls this once per layer per token.
  thread_local std::vector<int8_t> q;
  thread_local std::vector<float> gamma;
  thread_local std::vector<int32_t> acc;
  q.resize(static_cast<size_t>(m * k));
  gamma.resize(static_cast<size_t>(m));
  acc.resize(static_cast<size_t>(m * n));
  const int64_t bad = act_quant_rows(x, m, k, q.data(), gamma.data());
  if (bad >= 0) return bad;
  if (format == PackedFormat::k1_6Bit)
    matmul5(q.data(), w, acc.data(), m, n, k, backend, threads);
  else
    matmul(q.data(), w, acc.data(), m, n, k, backend, threads);
  for (int64_t i = 0; i < m; ++i) {
    const float scale = gamma[i] * beta;  // float32, as (gamma * beta) in quant.fake_quant_linear
    const int32_t* a = acc.data() + i * n;
    float* out = y + i * n;
    for (int64_t j = 0; j < n; ++j) out[j] = static_cast<float>(a[j]) * scale;  // int -> float rounds to nearest even
  }
  return -1;
}

}  // namespace bitnet

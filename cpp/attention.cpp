// attention.cpp: attention() of attention.h: the portable build of attention_kernel.h (the baseline instruction
// set), the choice between it and the AVX2 build (attention_avx2.cpp; the same numbers, bit for bit), and the split
// of the work into tasks across threads. Compiled with no FMA contraction, as the kernel requires.
#include <algorithm>
#include <vector>

#include "attention_kernel.h"
#include "ternary.h"
#include "threadpool.h"

namespace bitnet {
namespace {

// Below this many multiply-adds a call runs on the calling thread (as dispatch.cpp's kMinParallelWork).
constexpr int64_t kMinParallelWork = int64_t{1} << 21;
// Query rows of one sequence per task: each chunk of keys is read once for this many rows.
constexpr int64_t kBlockRows = 16;

struct Job {
  const AttentionArgs* args;
  std::vector<int64_t> block_start;  // first row of each block, and a.m at the end
  bool avx2;
};

// Task t: head t / blocks of block t % blocks (consecutive tasks share a key/value head).
void run_task(void* ctx, int64_t t) {
  const Job& j = *static_cast<const Job*>(ctx);
  const int64_t blocks = static_cast<int64_t>(j.block_start.size()) - 1;
  const int64_t b = t % blocks, h = t / blocks;
  const int64_t r0 = j.block_start[b], rows = j.block_start[b + 1] - r0;
#if defined(BITNET_HAVE_AVX2_KERNEL)
  if (j.avx2) {
    attention_block_avx2(*j.args, r0, rows, h);
    return;
  }
#endif
  thread_local std::vector<float> scratch;
  attend_block(*j.args, r0, rows, h, scratch);
}

}  // namespace

void attention(const AttentionArgs& a, Backend backend, int threads) {
  if (a.m <= 0) return;
  if (threads <= 0) threads = default_threads();
  Job job{&a, {0}, backend != Backend::kScalar && cpu_has_avx2()};
  int64_t work = 0;
  for (int64_t r = 0; r < a.m; ++r) {
    work += a.len[r];
    if (r > 0 && (a.k[r] != a.k[r - 1] || r - job.block_start.back() == kBlockRows)) job.block_start.push_back(r);
  }
  job.block_start.push_back(a.m);
  work *= 2 * a.n_heads * a.head_dim;
  const int64_t tasks = (static_cast<int64_t>(job.block_start.size()) - 1) * a.n_heads;
  if (threads == 1 || work < kMinParallelWork) {
    for (int64_t t = 0; t < tasks; ++t) run_task(&job, t);
    return;
  }
  parallel_for(threads, tasks, run_task, &job);
}

}  // namespace bitnet
